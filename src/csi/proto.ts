/**
 * The protobuf messages of the Secrets Store CSI driver's provider API (proto3, package
 * `v1alpha1`), encoded and decoded by hand: seven small messages do not justify a code generator.
 * Only the wire types proto3 uses here appear on the way out (varint and length-delimited); the
 * decoder skips unknown fields of every wire type, as protobuf requires, so a newer driver that
 * adds fields still works.
 */

/** `VersionRequest`: field 1 is the API version the driver speaks, `"v1alpha1"`. */
export interface VersionRequest {
  version: string;
}

/** `VersionResponse`. */
export interface VersionResponse {
  version: string;
  runtimeName: string;
  runtimeVersion: string;
}

/** `ObjectVersion`: one object of a mount and the version of its content. */
export interface ObjectVersion {
  id: string;
  version: string;
}

/** `MountRequest`. `attributes` and `secrets` are JSON objects in strings; `permission` is a decimal file mode. */
export interface MountRequest {
  attributes: string;
  secrets: string;
  targetPath: string;
  permission: string;
  currentObjectVersion: ObjectVersion[];
}

/** `File`: a file the driver writes into the volume. */
export interface File {
  path: string;
  mode: number;
  contents: Uint8Array;
}

/** `MountResponse`. `error` is set only when the provider reports a failure by code instead of a gRPC status. */
export interface MountResponse {
  objectVersion: ObjectVersion[];
  error?: { code: string };
  files: File[];
}

/** A message that is not valid protobuf, or not of the expected shape. */
export class ProtoError extends Error {
  override readonly name = "ProtoError";
}

/** Encodes a `VersionRequest`. */
export function encodeVersionRequest(message: VersionRequest): Uint8Array {
  return new Writer().string(1, message.version).finish();
}

/** Decodes a `VersionRequest`. @throws ProtoError */
export function decodeVersionRequest(bytes: Uint8Array): VersionRequest {
  const message: VersionRequest = { version: "" };
  for (const field of new Reader(bytes).fields()) {
    if (field.number === 1) message.version = field.string();
  }
  return message;
}

/** Encodes a `VersionResponse`. */
export function encodeVersionResponse(message: VersionResponse): Uint8Array {
  return new Writer()
    .string(1, message.version)
    .string(2, message.runtimeName)
    .string(3, message.runtimeVersion)
    .finish();
}

/** Decodes a `VersionResponse`. @throws ProtoError */
export function decodeVersionResponse(bytes: Uint8Array): VersionResponse {
  const message: VersionResponse = { version: "", runtimeName: "", runtimeVersion: "" };
  for (const field of new Reader(bytes).fields()) {
    if (field.number === 1) message.version = field.string();
    else if (field.number === 2) message.runtimeName = field.string();
    else if (field.number === 3) message.runtimeVersion = field.string();
  }
  return message;
}

/** Encodes a `MountRequest`. */
export function encodeMountRequest(message: MountRequest): Uint8Array {
  const writer = new Writer()
    .string(1, message.attributes)
    .string(2, message.secrets)
    .string(3, message.targetPath)
    .string(4, message.permission);
  for (const version of message.currentObjectVersion) writer.message(5, encodeObjectVersion(version));
  return writer.finish();
}

/** Decodes a `MountRequest`. @throws ProtoError */
export function decodeMountRequest(bytes: Uint8Array): MountRequest {
  const message: MountRequest = { attributes: "", secrets: "", targetPath: "", permission: "", currentObjectVersion: [] };
  for (const field of new Reader(bytes).fields()) {
    if (field.number === 1) message.attributes = field.string();
    else if (field.number === 2) message.secrets = field.string();
    else if (field.number === 3) message.targetPath = field.string();
    else if (field.number === 4) message.permission = field.string();
    else if (field.number === 5) message.currentObjectVersion.push(decodeObjectVersion(field.bytes()));
  }
  return message;
}

/** Encodes a `MountResponse`. */
export function encodeMountResponse(message: MountResponse): Uint8Array {
  const writer = new Writer();
  for (const version of message.objectVersion) writer.message(1, encodeObjectVersion(version));
  if (message.error) writer.message(2, new Writer().string(1, message.error.code).finish());
  for (const file of message.files) {
    writer.message(3, new Writer().string(1, file.path).int32(2, file.mode).bytes(3, file.contents).finish());
  }
  return writer.finish();
}

/** Decodes a `MountResponse`. @throws ProtoError */
export function decodeMountResponse(bytes: Uint8Array): MountResponse {
  const message: MountResponse = { objectVersion: [], files: [] };
  for (const field of new Reader(bytes).fields()) {
    if (field.number === 1) message.objectVersion.push(decodeObjectVersion(field.bytes()));
    else if (field.number === 2) message.error = decodeError(field.bytes());
    else if (field.number === 3) message.files.push(decodeFile(field.bytes()));
  }
  return message;
}

// ---------------------------------------------------------------------------------------------

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LENGTH_DELIMITED = 2;
const WIRE_FIXED32 = 5;

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

function encodeObjectVersion(message: ObjectVersion): Uint8Array {
  return new Writer().string(1, message.id).string(2, message.version).finish();
}

function decodeObjectVersion(bytes: Uint8Array): ObjectVersion {
  const message: ObjectVersion = { id: "", version: "" };
  for (const field of new Reader(bytes).fields()) {
    if (field.number === 1) message.id = field.string();
    else if (field.number === 2) message.version = field.string();
  }
  return message;
}

function decodeError(bytes: Uint8Array): { code: string } {
  const message = { code: "" };
  for (const field of new Reader(bytes).fields()) {
    if (field.number === 1) message.code = field.string();
  }
  return message;
}

function decodeFile(bytes: Uint8Array): File {
  const message: File = { path: "", mode: 0, contents: new Uint8Array(0) };
  for (const field of new Reader(bytes).fields()) {
    if (field.number === 1) message.path = field.string();
    else if (field.number === 2) message.mode = field.int32();
    else if (field.number === 3) message.contents = field.bytes();
  }
  return message;
}

/** Collects fields into chunks. proto3 leaves fields at their default value (empty, 0) out. */
class Writer {
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
interface Field {
  number: number;
  string(): string;
  bytes(): Uint8Array;
  int32(): number;
}

/** Reads fields in order; every accessor checks the wire type against the schema's type. */
class Reader {
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
