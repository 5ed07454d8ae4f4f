/**
 * Makes the `:authority` of older grpc-go clients acceptable to HTTP/2 servers.
 *
 * The Secrets Store CSI driver dials `grpc.Dial("/path/provider.sock")` with a unix dialer.
 * grpc-go releases before it learnt to percent-encode the authority (current ones send
 * `%2Fpath%2Fprovider.sock`) send the raw path, `/path/provider.sock`. The HTTP/2 servers under
 * @grpc/grpc-js (Node's nghttp2, and Bun's and Deno's node:http2) reset such a stream with
 * PROTOCOL_ERROR, because `/` is not allowed in an authority (RFC 3986, section 3.2).
 *
 * This module sits between the socket and the gRPC server and replaces every character of an
 * `:authority` value that an authority may not contain with one that it may, of the same length
 * both as a byte and as an HPACK Huffman code. Nothing else changes: frame lengths stay, and the
 * HPACK dynamic tables of client and server keep the same entry sizes, so they stay in step
 * without the rewriter tracking them. Only client-to-server HEADERS and CONTINUATION frames are
 * read; every other byte passes through as it came.
 */
import type { Socket } from "node:net";
import { Duplex } from "node:stream";
import { HUFFMAN_CODES, HUFFMAN_LENGTHS } from "./_huffman.ts";

/** Client connection preface of HTTP/2 (RFC 9113, section 3.4). */
const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

const FRAME_HEADER_BYTES = 9;
const TYPE_HEADERS = 0x1;
const TYPE_CONTINUATION = 0x9;
const FLAG_END_HEADERS = 0x4;
const FLAG_PADDED = 0x8;
const FLAG_PRIORITY = 0x20;
/** Index of `:authority` in the HPACK static table. */
const STATIC_AUTHORITY = 1;

/** Characters RFC 3986 allows in an authority: unreserved, sub-delims, `:`, `@`, `[`, `]` and `%`. */
const ALLOWED = new Set(Array.from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@[]%", (char) => char.charCodeAt(0)));
const REPLACEMENT_BYTE = "_".charCodeAt(0);

/** Rewrites the client-to-server byte stream of one HTTP/2 connection. */
export class AuthorityRewriter {
  /** Number of `:authority` values changed so far. */
  rewritten = 0;
  #prefaceSeen = 0;
  #passthrough = false;
  #pending: Buffer = Buffer.alloc(0);
  /** A HEADERS frame and its CONTINUATION frames, held until END_HEADERS. */
  #held: Buffer[] = [];

  /** Takes bytes from the client and returns the bytes to hand to the server. */
  push(chunk: Buffer): Buffer[] {
    if (this.#passthrough) return [chunk];

    const out: Buffer[] = [];
    let data = chunk;

    if (this.#prefaceSeen < PREFACE.length) {
      const take = Math.min(PREFACE.length - this.#prefaceSeen, data.length);
      if (!data.subarray(0, take).equals(PREFACE.subarray(this.#prefaceSeen, this.#prefaceSeen + take))) {
        // Not HTTP/2 with prior knowledge: leave the stream alone, the server answers it.
        this.#passthrough = true;
        return [chunk];
      }
      out.push(data.subarray(0, take));
      this.#prefaceSeen += take;
      data = data.subarray(take);
    }

    this.#pending = this.#pending.length ? Buffer.concat([this.#pending, data]) : data;
    while (this.#pending.length >= FRAME_HEADER_BYTES) {
      const length = this.#pending.readUIntBE(0, 3);
      if (this.#pending.length < FRAME_HEADER_BYTES + length) break;

      const frame = this.#pending.subarray(0, FRAME_HEADER_BYTES + length);
      this.#pending = this.#pending.subarray(FRAME_HEADER_BYTES + length);
      out.push(...this.#frame(frame));
    }
    return out;
  }

  #frame(frame: Buffer): Buffer[] {
    const type = frame[3]!;
    const flags = frame[4]!;

    if (type !== TYPE_HEADERS && type !== TYPE_CONTINUATION) {
      // A frame between HEADERS and its CONTINUATION is a protocol error the server reports;
      // hand over what is held unchanged so that it can.
      return [...this.#release(false), frame];
    }
    if (type === TYPE_CONTINUATION && this.#held.length === 0) return [frame];

    // The block is edited in place, so it gets its own copy of the received bytes.
    const out = type === TYPE_HEADERS ? this.#release(false) : [];
    this.#held.push(Buffer.from(frame));
    if (flags & FLAG_END_HEADERS) out.push(...this.#release(true));
    return out;
  }

  /** Returns the held frames, with their header block rewritten when `rewrite` is set. */
  #release(rewrite: boolean): Buffer[] {
    const frames = this.#held;
    this.#held = [];
    if (!rewrite || frames.length === 0) return frames;

    const ranges = frames.map(fragmentRange);
    if (ranges.some((range) => range === undefined)) return frames;

    const block = Buffer.concat(ranges.map((range, index) => frames[index]!.subarray(range!.start, range!.end)));
    let changed: number;
    try {
      changed = rewriteHeaderBlock(block);
    } catch {
      // A block that does not parse reaches the server unchanged, which rejects it.
      return frames;
    }
    if (changed === 0) return frames;

    this.rewritten += changed;
    let offset = 0;
    frames.forEach((frame, index) => {
      const { start, end } = ranges[index]!;
      block.copy(frame, start, offset, offset + (end - start));
      offset += end - start;
    });
    return frames;
  }
}

/**
 * Wraps an accepted socket in a duplex stream whose readable side is the rewritten client stream
 * and whose writable side goes to the socket unchanged, for `Server.createConnectionInjector`.
 */
export function rewritingConnection(socket: Socket, onRewrite?: (count: number) => void): Duplex {
  const rewriter = new AuthorityRewriter();

  const duplex = new Duplex({
    read() {
      socket.resume();
    },
    write(chunk: Buffer, _encoding, callback) {
      socket.write(chunk, callback);
    },
    final(callback) {
      socket.end(callback);
    },
    destroy(error, callback) {
      socket.destroy();
      callback(error);
    },
  });

  socket.on("data", (chunk: Buffer) => {
    const before = rewriter.rewritten;
    let more = true;
    for (const part of rewriter.push(chunk)) more = duplex.push(part) && more;
    if (rewriter.rewritten > before) onRewrite?.(rewriter.rewritten - before);
    if (!more) socket.pause();
  });
  socket.on("end", () => duplex.push(null));
  socket.on("error", (error) => duplex.destroy(error));
  socket.on("close", () => duplex.destroy());
  return duplex;
}

/**
 * Rewrites the `:authority` values of one HPACK header block in place and returns how many it
 * changed. Fields whose name refers to the dynamic table are not inspected: HPACK encoders name
 * `:authority` by its static index or literally.
 *
 * @throws RangeError when the block does not parse.
 */
export function rewriteHeaderBlock(block: Uint8Array): number {
  let offset = 0;
  let changed = 0;

  while (offset < block.length) {
    const first = block[offset]!;

    if (first & 0x80) {
      offset = readInteger(block, offset, 7).next;
      continue;
    }
    if ((first & 0xe0) === 0x20) {
      offset = readInteger(block, offset, 5).next;
      continue;
    }

    const prefix = (first & 0xc0) === 0x40 ? 6 : 4;
    const name = readInteger(block, offset, prefix);
    offset = name.next;

    let isAuthority = name.value === STATIC_AUTHORITY;
    if (name.value === 0) {
      const literal = readString(block, offset);
      isAuthority = decodeString(block, literal) === ":authority";
      offset = literal.end;
    }

    const value = readString(block, offset);
    if (isAuthority && rewriteValue(block, value)) changed += 1;
    offset = value.end;
  }
  return changed;
}

// ---------------------------------------------------------------------------------------------

interface StringRange {
  huffman: boolean;
  start: number;
  end: number;
}

function fragmentRange(frame: Buffer): { start: number; end: number } | undefined {
  const flags = frame[4]!;
  let start = FRAME_HEADER_BYTES;
  let end = frame.length;

  if (frame[3] === TYPE_HEADERS) {
    if (flags & FLAG_PADDED) {
      const padding = frame[start]!;
      start += 1;
      end -= padding;
    }
    if (flags & FLAG_PRIORITY) start += 5;
  }
  return start <= end ? { start, end } : undefined;
}

/** Reads an HPACK integer with an N-bit prefix (RFC 7541, section 5.1). */
function readInteger(block: Uint8Array, offset: number, prefixBits: number): { value: number; next: number } {
  const mask = (1 << prefixBits) - 1;
  let value = block[offset]! & mask;
  let next = offset + 1;
  if (value < mask) return { value, next };

  for (let shift = 0; ; shift += 7) {
    if (next >= block.length || shift > 28) throw new RangeError("HPACK integer runs past the block");
    const byte = block[next++]!;
    value += (byte & 0x7f) * 2 ** shift;
    if ((byte & 0x80) === 0) return { value, next };
  }
}

/** Reads an HPACK string literal's position (RFC 7541, section 5.2). */
function readString(block: Uint8Array, offset: number): StringRange {
  if (offset >= block.length) throw new RangeError("HPACK string runs past the block");
  const huffman = (block[offset]! & 0x80) !== 0;
  const length = readInteger(block, offset, 7);
  const end = length.next + length.value;
  if (end > block.length) throw new RangeError("HPACK string runs past the block");
  return { huffman, start: length.next, end };
}

function decodeString(block: Uint8Array, range: StringRange): string {
  if (!range.huffman) return Buffer.from(block.subarray(range.start, range.end)).toString("latin1");
  return String.fromCharCode(...huffmanSymbols(block, range).map((symbol) => symbol.byte));
}

/** Replaces each byte an authority may not contain; returns whether any changed. */
function rewriteValue(block: Uint8Array, range: StringRange): boolean {
  let changed = false;

  if (!range.huffman) {
    for (let index = range.start; index < range.end; index++) {
      if (ALLOWED.has(block[index]!)) continue;
      block[index] = REPLACEMENT_BYTE;
      changed = true;
    }
    return changed;
  }

  for (const symbol of huffmanSymbols(block, range)) {
    if (ALLOWED.has(symbol.byte)) continue;
    const replacement = REPLACEMENT_BY_LENGTH.get(HUFFMAN_LENGTHS[symbol.byte]!);
    if (replacement === undefined) continue;
    writeBits(block, symbol.bit, HUFFMAN_CODES[replacement]!, HUFFMAN_LENGTHS[replacement]!);
    changed = true;
  }
  return changed;
}

/** Decodes a Huffman string into its symbols and the bit where each starts. */
function huffmanSymbols(block: Uint8Array, range: StringRange): Array<{ byte: number; bit: number }> {
  const symbols: Array<{ byte: number; bit: number }> = [];
  const endBit = range.end * 8;
  let bit = range.start * 8;

  while (bit < endBit) {
    let code = 0;
    let length = 0;
    let byte: number | undefined;

    while (byte === undefined && bit + length < endBit && length < 30) {
      code = code * 2 + ((block[(bit + length) >> 3]! >> (7 - ((bit + length) & 7))) & 1);
      length += 1;
      byte = DECODE.get(length * 2 ** 30 + code);
    }
    // What is left is the padding of up to seven 1 bits (the start of EOS).
    if (byte === undefined) break;

    symbols.push({ byte, bit });
    bit += length;
  }
  return symbols;
}

function writeBits(block: Uint8Array, startBit: number, code: number, length: number): void {
  for (let index = 0; index < length; index++) {
    const bit = Math.floor(code / 2 ** (length - 1 - index)) & 1;
    const position = startBit + index;
    const mask = 1 << (7 - (position & 7));
    block[position >> 3] = bit ? block[position >> 3]! | mask : block[position >> 3]! & ~mask;
  }
}

/** Symbol by (code length, code), keyed as `length * 2^30 + code`. */
const DECODE = new Map(HUFFMAN_CODES.map((code, byte) => [HUFFMAN_LENGTHS[byte]! * 2 ** 30 + code, byte]));

/** For each code length, an allowed character with a code that long; `_` where it fits. */
const REPLACEMENT_BY_LENGTH = (() => {
  const map = new Map<number, number>([[HUFFMAN_LENGTHS[REPLACEMENT_BYTE]!, REPLACEMENT_BYTE]]);
  for (const byte of ALLOWED) {
    const length = HUFFMAN_LENGTHS[byte]!;
    if (!map.has(length)) map.set(length, byte);
  }
  return map;
})();
