/**
 * Makes the `:authority` of older grpc-go clients acceptable to HTTP/2 servers.
 *
 * The Secrets Store CSI driver dials `grpc.Dial("/path/provider.sock")` with a unix dialer.
 * grpc-go releases before it learnt to percent-encode the authority (current ones send
 * `%2Fpath%2Fprovider.sock`) send the raw path, `/path/provider.sock`. The HTTP/2 servers under
 * @grpc/grpc-js (Node's nghttp2, and Bun's and Deno's node:http2) reset such a stream with
 * PROTOCOL_ERROR, because `/` is not allowed in an authority (RFC 3986, section 3.2).
 *
 * This module sits between the socket and the gRPC server. In every `:authority` value, it
 * replaces each character that an authority may not contain with one that it may. The
 * replacement has the same length, both as a byte and as an HPACK Huffman code. So frame lengths
 * stay, and the HPACK dynamic tables of client and server keep the same entry sizes and stay in
 * step without the rewriter tracking them. Only client-to-server HEADERS and CONTINUATION frames
 * are read, and every other byte passes through as it came. `hpack.ts` edits the header blocks.
 */
import type { Socket } from "node:net";
import { Duplex } from "node:stream";
import { rewriteHeaderBlock } from "./hpack.ts";

/** Client connection preface of HTTP/2 (RFC 9113, section 3.4). */
const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

const FRAME_HEADER_BYTES = 9;
const TYPE_HEADERS = 0x1;
const TYPE_CONTINUATION = 0x9;
const FLAG_END_HEADERS = 0x4;
const FLAG_PADDED = 0x8;
const FLAG_PRIORITY = 0x20;

/**
 * Largest frame payload accepted: the HTTP/2 default SETTINGS_MAX_FRAME_SIZE (RFC 9113, section
 * 6.5.2), which the gRPC server keeps because it sends no larger value.
 */
export const MAX_FRAME_PAYLOAD_BYTES = 16_384;
/** Largest header block (HEADERS plus CONTINUATION frames) held for rewriting. */
export const MAX_HEADER_BLOCK_BYTES = 64 * 1024;

/** Error of a client that breaks a limit above; the connection is closed. */
export class FrameLimitError extends Error {}

/** Rewrites the client-to-server byte stream of one HTTP/2 connection. */
export class AuthorityRewriter {
  /** Number of `:authority` values changed so far. */
  rewritten = 0;
  #prefaceSeen = 0;
  #passthrough = false;
  #pending: Buffer = Buffer.alloc(0);
  /** A HEADERS frame and its CONTINUATION frames, held until END_HEADERS. */
  #held: Buffer[] = [];

  #heldBytes = 0;

  /**
   * Takes bytes from the client and returns the bytes to hand to the server.
   *
   * @throws FrameLimitError when a frame or a header block exceeds the limits above.
   */
  push(chunk: Buffer): Buffer[] {
    if (this.#passthrough) return [chunk];

    const out: Buffer[] = [];
    let data = chunk;

    if (this.#prefaceSeen < PREFACE.length) {
      const take = Math.min(PREFACE.length - this.#prefaceSeen, data.length);
      if (!data.subarray(0, take).equals(PREFACE.subarray(this.#prefaceSeen, this.#prefaceSeen + take))) {
        // Not HTTP/2 with prior knowledge: pass the stream through and let the server reject it.
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
      if (length > MAX_FRAME_PAYLOAD_BYTES) throw new FrameLimitError(`frame of ${length} bytes exceeds the maximum frame size of ${MAX_FRAME_PAYLOAD_BYTES}`);
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
    this.#heldBytes += frame.length;
    if (this.#heldBytes > MAX_HEADER_BLOCK_BYTES) throw new FrameLimitError(`header block exceeds ${MAX_HEADER_BLOCK_BYTES} bytes`);
    this.#held.push(Buffer.from(frame));
    if (flags & FLAG_END_HEADERS) out.push(...this.#release(true));
    return out;
  }

  /** Returns the held frames, with their header block rewritten when `rewrite` is set. */
  #release(rewrite: boolean): Buffer[] {
    const frames = this.#held;
    this.#held = [];
    this.#heldBytes = 0;
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
 * A client over the frame limits loses its connection, and `onLimit` gets the reason.
 */
export function rewritingConnection(socket: Socket, onRewrite?: (count: number) => void, onLimit?: (reason: string) => void): Duplex {
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
    let parts: Buffer[];
    try {
      parts = rewriter.push(chunk);
    } catch (error) {
      if (!(error instanceof FrameLimitError)) throw error;
      onLimit?.(error.message);
      socket.destroy();
      return;
    }

    let more = true;
    for (const part of parts) more = duplex.push(part) && more;
    if (rewriter.rewritten > before) onRewrite?.(rewriter.rewritten - before);
    if (!more) socket.pause();
  });
  socket.on("end", () => duplex.push(null));
  socket.on("error", (error) => duplex.destroy(error));
  socket.on("close", () => duplex.destroy());
  return duplex;
}

// ---------------------------------------------------------------------------------------------

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
