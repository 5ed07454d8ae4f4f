/** ScaiVaultClient limits the CSI provider relies on: the response body size and the server's error codes. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createServer, type Server } from "node:http";
import { ScaiVaultClient, safeServerCode } from "../src/client.ts";
import { staticTokenSource } from "../src/auth.ts";
import { configureLogging } from "../src/log.ts";

let server: Server;
let baseUrl: string;
const SECRET_TOKEN = "eyJleGFtcGxlIjoidG9rZW4ifQ.echoed-token-value";

beforeAll(async () => {
  configureLogging({ level: "silent" });
  server = createServer((request, response) => {
    if (request.url?.startsWith("/v1/secrets/chunked")) {
      // No content-length: the body streams in 64 KiB chunks, 1 MiB in all.
      response.writeHead(200, { "content-type": "application/json" });
      const chunk = "x".repeat(64 * 1024);
      for (let index = 0; index < 16; index++) response.write(chunk);
      response.end();
      return;
    }
    if (request.url?.startsWith("/v1/secrets/declared")) {
      response.writeHead(200, { "content-type": "application/json", "content-length": String(2 * 1024 * 1024) });
      response.write("{");
      return;
    }
    if (request.url?.startsWith("/v1/secrets/echo")) {
      response.writeHead(403, { "content-type": "application/json" });
      response.end(JSON.stringify({ error: { code: `denied ${SECRET_TOKEN}`, message: "no" } }));
      return;
    }
    response.writeHead(404);
    response.end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});

afterAll(() => {
  server.closeAllConnections();
  server.close();
});

function client(maxResponseBytes?: number): ScaiVaultClient {
  return new ScaiVaultClient({ baseUrl, tokens: staticTokenSource("t"), maxAttempts: 1, requestTimeoutMs: 5_000, maxResponseBytes });
}

describe("ScaiVaultClient limits", () => {
  test("client fails a streamed body over maxResponseBytes", async () => {
    const error = await client(256 * 1024).getSecret("chunked").catch((caught) => caught);
    expect(error).toMatchObject({ code: "server" });
    expect(error.message).toContain("exceeds 262144 bytes");
  });

  test("client fails a declared content-length over maxResponseBytes before reading", async () => {
    const error = await client(1024 * 1024).getSecret("declared").catch((caught) => caught);
    expect(error).toMatchObject({ code: "server" });
    expect(error.message).toContain("exceeds 1048576 bytes");
  });

  test("client reads a body under maxResponseBytes", async () => {
    // The body is not a secret, so parsing fails, but only after the whole body was read.
    const error = await client(2 * 1024 * 1024).getSecret("chunked").catch((caught) => caught);
    expect(error.message).not.toContain("exceeds");
  });

  test("client replaces a server error code of the wrong shape with unknown", async () => {
    const error = await client().getSecret("echo").catch((caught) => caught);
    expect(error.serverCode).toBe("unknown");
    expect(error.message).not.toContain(SECRET_TOKEN);
  });

  test("safeServerCode accepts only short snake-case codes", () => {
    expect(safeServerCode("access_denied")).toBe("access_denied");
    expect(safeServerCode("a".repeat(64))).toBe("a".repeat(64));
    expect(safeServerCode("a".repeat(65))).toBe("unknown");
    expect(safeServerCode("Access")).toBe("unknown");
    expect(safeServerCode(42)).toBe("unknown");
  });
});
