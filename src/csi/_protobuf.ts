/**
 * The protobuf wire format (varints, tags, length-delimited fields) for the hand-written
 * messages of `proto.ts`: a writer of fields in order and a reader that yields them.
 */

/** A message that is not valid protobuf, or not of the expected shape. */
export class ProtoError extends Error {
  override readonly name = "ProtoError";
}

// ---------------------------------------------------------------------------------------------

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LENGTH_DELIMITED = 2;
const WIRE_FIXED32 = 5;

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

/** Collects fields into chunks. proto3 leaves fields at their default value (empty, 0) out. */
export class Writer {
  readonly #chunks: Uint8Array[] = [];
  #length = 0;

  string(number: number, value: string): this {
    if (value === "") return this;
    return this.bytes(number, textEncoder.encode(value));
  }

  bytes(number: number, value: Uint8Array): this {
    if (value.length === 0) return this;
    this.#tag(number, WIRE_LENGTH_DELIMITED);
    this.#varint(value.length);
    this.#push(value);
    return this;
  }

  /** Writes an embedded message, even an empty one: its presence carries meaning. */
  message(number: number, value: Uint8Array): this {
    this.#tag(number, WIRE_LENGTH_DELIMITED);
    this.#varint(value.length);
    this.#push(value);
    return this;
  }

  int32(number: number, value: number): this {
    if (value === 0) return this;
    if (!Number.isInteger(value) || value < -0x80000000 || value > 0x7fffffff) {
      throw new ProtoError(`field ${number}: ${value} is not an int32`);
    }
    this.#tag(number, WIRE_VARINT);
    // A negative int32 is sign-extended to 64 bits: ten bytes on the wire.
    if (value < 0) this.#varint64Negative(value);
    else this.#varint(value);
    return this;
  }

  finish(): Uint8Array {
    const out = new Uint8Array(this.#length);
    let offset = 0;
    for (const chunk of this.#chunks) {
      out.set(chunk, offset);
      offset += chunk.length;
    }
    return out;
  }

  #tag(number: number, wireType: number): void {
    this.#varint(number * 8 + wireType);
  }

  #varint(value: number): void {
    const bytes: number[] = [];
    let rest = value;
    while (rest >= 0x80) {
      bytes.push((rest % 0x80) | 0x80);
      rest = Math.floor(rest / 0x80);
    }
    bytes.push(rest);
    this.#push(Uint8Array.from(bytes));
  }

  #varint64Negative(value: number): void {
    let rest = BigInt.asUintN(64, BigInt(value));
    const bytes: number[] = [];
    while (rest >= 0x80n) {
      bytes.push(Number(rest & 0x7fn) | 0x80);
      rest >>= 7n;
    }
    bytes.push(Number(rest));
    this.#push(Uint8Array.from(bytes));
  }

  #push(chunk: Uint8Array): void {
    this.#chunks.push(chunk);
    this.#length += chunk.length;
  }
}

/** One field read from the wire, with accessors for the type the schema gives it. */
export interface Field {
  number: number;
  string(): string;
  bytes(): Uint8Array;
  int32(): number;
}

/** Reads fields in order; every accessor checks the wire type against the schema's type. */
export class Reader {
  readonly #bytes: Uint8Array;
  #offset = 0;

  constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
  }

  *fields(): Generator<Field> {
    while (this.#offset < this.#bytes.length) {
      const tag = this.#varint();
      const number = Math.floor(tag / 8);
      const wireType = tag % 8;
      if (number === 0) throw new ProtoError("field number 0 is not allowed");

      const value = this.#skip(wireType, number);
      const end = this.#offset;
      const bytes = this.#bytes;

      yield {
        number,
        string: () => {
          expectWireType(number, wireType, WIRE_LENGTH_DELIMITED);
          try {
            return textDecoder.decode(bytes.subarray(value.start, end));
          } catch {
            throw new ProtoError(`field ${number} is not valid UTF-8`);
          }
        },
        bytes: () => {
          expectWireType(number, wireType, WIRE_LENGTH_DELIMITED);
          return bytes.slice(value.start, end);
        },
        int32: () => {
          expectWireType(number, wireType, WIRE_VARINT);
          return Number(BigInt.asIntN(32, value.varint ?? 0n));
        },
      };
    }
  }

  /** Moves past one field's value and returns where its payload starts, or its varint. */
  #skip(wireType: number, number: number): { start: number; varint?: bigint } {
    switch (wireType) {
      case WIRE_VARINT:
        return { start: this.#offset, varint: this.#varintBig() };
      case WIRE_FIXED64:
        return { start: this.#advance(8, number) };
      case WIRE_FIXED32:
        return { start: this.#advance(4, number) };
      case WIRE_LENGTH_DELIMITED: {
        const length = this.#varint();
        return { start: this.#advance(length, number) };
      }
      default:
        throw new ProtoError(`field ${number} has wire type ${wireType}, which proto3 does not use`);
    }
  }

  #advance(length: number, number: number): number {
    const start = this.#offset;
    if (start + length > this.#bytes.length) throw new ProtoError(`field ${number} runs past the end of the message`);
    this.#offset += length;
    return start;
  }

  /** Reads a varint that must fit a JavaScript number exactly: tags and lengths. */
  #varint(): number {
    const value = this.#varintBig();
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new ProtoError("a tag or length is too large");
    return Number(value);
  }

  #varintBig(): bigint {
    let result = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (this.#offset >= this.#bytes.length) throw new ProtoError("a varint runs past the end of the message");
      const byte = this.#bytes[this.#offset++]!;
      result |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return BigInt.asUintN(64, result);
    }
    throw new ProtoError("a varint is longer than 10 bytes");
  }
}

function expectWireType(number: number, actual: number, expected: number): void {
  if (actual !== expected) throw new ProtoError(`field ${number} has wire type ${actual}, expected ${expected}`);
}
