/**
 * The `:authority` rewriter for older grpc-go clients: HPACK blocks and HTTP/2 frames built here
 * byte by byte, fed through `AuthorityRewriter`, compared with the block the client would have sent
 * with a valid authority.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import http2 from "node:http2";
import { connect, type Socket } from "node:net";
import { HUFFMAN_CODES, HUFFMAN_LENGTHS } from "../src/csi/_huffman.ts";
import { AuthorityRewriter } from "../src/csi/authority.ts";
import { rewriteHeaderBlock } from "../src/csi/hpack.ts";
import { decodeVersionResponse, encodeVersionRequest } from "../src/csi/proto.ts";
import { startProviderFixture, type ProviderFixture } from "./helpers/csi.ts";

const RAW_PATH = "/tmp/csi-test/secrets-store-csi-providers/scaivault.sock";
const REWRITTEN = "_tmp_csi-test_secrets-store-csi-providers_scaivault.sock";
const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

describe("csi authority rewriter", () => {
  test("rewriter replaces slashes of a Huffman-coded authority", () => {
    const block = requestBlock(RAW_PATH, { huffman: true });

    expect(rewriteHeaderBlock(block)).toBe(1);
    expect(Buffer.from(block).toString("hex")).toBe(Buffer.from(requestBlock(REWRITTEN, { huffman: true })).toString("hex"));
  });

  test("rewriter replaces slashes of a plain authority", () => {
    const block = requestBlock(RAW_PATH, { huffman: false });

    expect(rewriteHeaderBlock(block)).toBe(1);
    expect(Buffer.from(block)).toEqual(Buffer.from(requestBlock(REWRITTEN, { huffman: false })));
  });

  test("rewriter handles an authority with a literal name", () => {
    const block = Uint8Array.from([...literal(":authority", RAW_PATH, { huffman: true }), ...literal(":path", "/v1alpha1.CSIDriverProvider/Mount", { huffman: true })]);
    const expected = Uint8Array.from([...literal(":authority", REWRITTEN, { huffman: true }), ...literal(":path", "/v1alpha1.CSIDriverProvider/Mount", { huffman: true })]);

    expect(rewriteHeaderBlock(block)).toBe(1);
    expect(Buffer.from(block)).toEqual(Buffer.from(expected));
  });

  test("rewriter leaves a percent-encoded authority alone", () => {
    const block = requestBlock(encodeURIComponent(RAW_PATH), { huffman: true });
    const before = Buffer.from(block);

    expect(rewriteHeaderBlock(block)).toBe(0);
    expect(Buffer.from(block)).toEqual(before);
  });

  test("rewriter never changes :path", () => {
    const block = requestBlock("localhost", { huffman: true });
    const before = Buffer.from(block);

    expect(rewriteHeaderBlock(block)).toBe(0);
    expect(Buffer.from(block)).toEqual(before);
  });

  test("rewriter rejects a truncated block", () => {
    const block = requestBlock(RAW_PATH, { huffman: true }).subarray(0, 10);
    expect(() => rewriteHeaderBlock(block)).toThrow(RangeError);
  });

  test("stream rewrites HEADERS and CONTINUATION fed byte by byte", () => {
    const block = requestBlock(RAW_PATH, { huffman: false });
    const split = 12;
    const settings = frame(0x4, 0, 0, new Uint8Array(0));
    const headers = frame(0x1, 0x8 | 0x20, 1, Uint8Array.from([3, 0, 0, 0, 0, 16, ...block.subarray(0, split), 0, 0, 0]));
    const continuation = frame(0x9, 0x4, 1, block.subarray(split));
    const data = frame(0x0, 0x1, 1, Buffer.from("/not/an/authority"));
    const input = Buffer.concat([PREFACE, settings, headers, continuation, data]);

    const expectedBlock = requestBlock(REWRITTEN, { huffman: false });
    const expected = Buffer.concat([
      PREFACE,
      settings,
      frame(0x1, 0x8 | 0x20, 1, Uint8Array.from([3, 0, 0, 0, 0, 16, ...expectedBlock.subarray(0, split), 0, 0, 0])),
      frame(0x9, 0x4, 1, expectedBlock.subarray(split)),
      data,
    ]);

    const rewriter = new AuthorityRewriter();
    const output: Buffer[] = [];
    for (const byte of input) output.push(...rewriter.push(Buffer.from([byte])));

    expect(Buffer.concat(output)).toEqual(expected);
    expect(rewriter.rewritten).toBe(1);
  });

  test("stream passes a non-HTTP/2 connection through", () => {
    const rewriter = new AuthorityRewriter();
    const input = Buffer.from("GET / HTTP/1.1\r\nHost: /tmp/x.sock\r\n\r\n");

    expect(Buffer.concat(rewriter.push(input))).toEqual(input);
    expect(rewriter.rewritten).toBe(0);
  });
});

describe("csi server authority", () => {
  let fixture: ProviderFixture;

  beforeAll(async () => {
    fixture = await startProviderFixture({ seed: {} });
  });

  afterAll(async () => {
    await fixture.stop();
  });

  test("server accepts a percent-encoded socket path", async () => {
    const result = await callVersion(fixture.socketPath, encodeURIComponent(fixture.socketPath));

    expect(result).toEqual({ status: 200, grpcStatus: "0", version: "v1alpha1" });
  });

  test("server accepts a raw socket path", async () => {
    const result = await callVersion(fixture.socketPath, fixture.socketPath);

    expect(result).toEqual({ status: 200, grpcStatus: "0", version: "v1alpha1" });
  });
});

// ---------------------------------------------------------------------------------------------

/** Calls Version over a plain HTTP/2 session with `authority` as `:authority`. */
async function callVersion(socketPath: string, authority: string): Promise<{ status: unknown; grpcStatus: unknown; version?: string }> {
  const session = http2.connect("http://localhost", { createConnection: () => connect(socketPath) as Socket });
  const message = encodeVersionRequest({ version: "v1alpha1" });
  const body = Buffer.alloc(5 + message.length);
  body.writeUInt32BE(message.length, 1);
  Buffer.from(message).copy(body, 5);

  const request = session.request({
    ":method": "POST",
    ":path": "/v1alpha1.CSIDriverProvider/Version",
    ":authority": authority,
    "content-type": "application/grpc",
    te: "trailers",
  });

  const chunks: Buffer[] = [];
  const result = new Promise<{ status: unknown; grpcStatus: unknown; version?: string }>((resolve, reject) => {
    let headers: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    request.on("response", (received) => (headers = received));
    request.on("trailers", (received) => (trailers = received));
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("error", reject);
    request.on("end", () => {
      const payload = Buffer.concat(chunks);
      resolve({
        status: headers[":status"],
        grpcStatus: trailers["grpc-status"] ?? headers["grpc-status"],
        ...(payload.length > 5 ? { version: decodeVersionResponse(payload.subarray(5)).version } : {}),
      });
    });
  });
  request.end(body);

  try {
    return await result;
  } finally {
    session.close();
  }
}

/** Returns a request header block as grpc-go 1.33 writes it: `:authority` with the static name index. */
function requestBlock(authority: string, options: { huffman: boolean }): Uint8Array {
  return Uint8Array.from([
    0x83, // :method POST
    0x86, // :scheme http
    ...indexedName(4, "/v1alpha1.CSIDriverProvider/Mount", 0x40, 6, options), // :path
    ...indexedName(1, authority, 0x40, 6, options), // :authority, incremental indexing
    ...indexedName(31, "application/grpc", 0x40, 6, options), // content-type
    ...literal("te", "trailers", options),
  ]);
}

function indexedName(index: number, value: string, pattern: number, prefix: number, options: { huffman: boolean }): number[] {
  return [...integer(index, prefix, pattern), ...string(value, options.huffman)];
}

/** Literal field without indexing and with a literal name. */
function literal(name: string, value: string, options: { huffman: boolean }): number[] {
  return [0x00, ...string(name, options.huffman), ...string(value, options.huffman)];
}

function string(value: string, huffman: boolean): number[] {
  const bytes = huffman ? huffmanEncode(value) : [...Buffer.from(value, "latin1")];
  return [...integer(bytes.length, 7, huffman ? 0x80 : 0), ...bytes];
}

function integer(value: number, prefix: number, pattern: number): number[] {
  const max = (1 << prefix) - 1;
  if (value < max) return [pattern | value];

  const out = [pattern | max];
  let rest = value - max;
  while (rest >= 128) {
    out.push((rest % 128) | 0x80);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
  return out;
}

function huffmanEncode(value: string): number[] {
  let bits = "";
  for (const byte of Buffer.from(value, "latin1")) bits += HUFFMAN_CODES[byte]!.toString(2).padStart(HUFFMAN_LENGTHS[byte]!, "0");
  bits = bits.padEnd(Math.ceil(bits.length / 8) * 8, "1");
  return Array.from({ length: bits.length / 8 }, (_, index) => Number.parseInt(bits.slice(index * 8, index * 8 + 8), 2));
}

function frame(type: number, flags: number, stream: number, payload: Uint8Array): Buffer {
  const header = Buffer.alloc(9);
  header.writeUIntBE(payload.length, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(stream, 5);
  return Buffer.concat([header, payload]);
}
