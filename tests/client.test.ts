/** ScaiVaultClient and token sources against the real dev server on 127.0.0.1. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDevServer, type DevServer } from "../src/dev/server.ts";
import { ScaiVaultClient, type RequestRecord } from "../src/client.ts";
import { exchangeToken, exchangeTokenSource, reuseDeadline, staticTokenSource } from "../src/auth.ts";
import { AgentError } from "../src/errors.ts";
import { configureLogging } from "../src/log.ts";
import { projectedToken } from "../src/dev/guide.ts";

let server: DevServer;
let scratch: string;

beforeAll(async () => {
  configureLogging({ level: "silent" });
  server = await startDevServer({ port: 0, seed: { "a/one": { v: "1" }, "a/two": { v: "2" } } });
  scratch = mkdtempSync(join(tmpdir(), "client-"));
});

afterAll(async () => {
  await server?.stop();
  rmSync(scratch, { recursive: true, force: true });
});

function rootClient(records?: RequestRecord[], maxAttempts = 4): ScaiVaultClient {
  return new ScaiVaultClient({
    baseUrl: server.url,
    tokens: staticTokenSource(server.rootToken),
    maxAttempts,
    backoff: { baseMs: 5, maxMs: 20 },
    onRequest: (record) => records?.push(record),
  });
}

async function withFault(fault: Record<string, unknown>, run: () => Promise<void>): Promise<void> {
  await fetch(`${server.url}/v1/dev/faults`, {
    method: "POST",
    headers: { authorization: `Bearer ${server.rootToken}`, "content-type": "application/json" },
    body: JSON.stringify(fault),
  });
  try {
    await run();
  } finally {
    await fetch(`${server.url}/v1/dev/faults`, { method: "DELETE", headers: { authorization: `Bearer ${server.rootToken}` } });
  }
}

describe("ScaiVaultClient", () => {
  test("client rejects a base URL that is not http or https", () => {
    expect(() => new ScaiVaultClient({ baseUrl: "ftp://vault" })).toThrow('Invalid SCAIVAULT_URL "ftp://vault": use http:// or https://');
  });

  test("client reads many secrets in batches of at most 100", async () => {
    const records: RequestRecord[] = [];
    const paths = Array.from({ length: 250 }, (_, index) => `bulk/s${index}`);
    for (const path of paths.slice(0, 3)) await rootClient().putSecret(path, { v: path });

    const result = await rootClient(records).readSecrets(paths);

    expect(records.filter((record) => record.route === "secrets.batch")).toHaveLength(3);
    expect(result.secrets.size).toBe(3);
    expect(result.errors.size).toBe(247);
    expect(result.errors.get("bulk/s10")?.code).toBe("not_found");
  });

  test("client retries internal_error once, then fails", async () => {
    const records: RequestRecord[] = [];

    await withFault({ path_prefix: "/v1/secrets/a/one", status: 500, code: "internal_error", count: 5 }, async () => {
      const read = rootClient(records).getSecret("a/one");
      await expect(read).rejects.toMatchObject({ code: "server", serverCode: "internal_error" });
    });

    expect(records).toHaveLength(2);
  });

  test("client does not repeat a non-idempotent call after 502", async () => {
    const records: RequestRecord[] = [];

    await withFault({ path_prefix: "/v1/secrets/a/one", status: 502, code: "bad_gateway", count: 5 }, async () => {
      const call = rootClient(records).request("POST", "/v1/secrets/a/one/rotate", { route: "secrets.rotate", idempotent: false, body: {} });
      await expect(call).rejects.toBeInstanceOf(AgentError);
    });

    expect(records).toHaveLength(1);
  });

  test("client gives up after maxAttempts and says how many", async () => {
    await withFault({ path_prefix: "/v1/secrets/a/one", status: 503, code: "service_unavailable", count: 10 }, async () => {
      await expect(rootClient(undefined, 3).getSecret("a/one")).rejects.toThrow("(gave up after 3 attempts)");
    });
  });

  test("client fetches a fresh token once after token_expired", async () => {
    const tokenFile = join(scratch, "projected");
    writeFileSync(tokenFile, projectedToken());
    const base = new ScaiVaultClient({ baseUrl: server.url, backoff: { baseMs: 5, maxMs: 20 } });
    const records: RequestRecord[] = [];
    const client = new ScaiVaultClient({
      baseUrl: server.url,
      tokens: exchangeTokenSource(base, { tokenFile }),
      onRequest: (record) => records.push(record),
    });
    await client.getSecret("a/one");

    await withFault({ path_prefix: "/v1/secrets/a/one", status: 401, code: "token_expired", count: 1 }, async () => {
      expect((await client.getSecret("a/one")).data).toEqual({ v: "1" });
    });

    expect(records.map((record) => `${record.route} ${record.status}`)).toEqual(["secrets.get 200", "secrets.get 401", "secrets.get 200"]);
  });

  test("client stops retrying when its signal aborts", async () => {
    const controller = new AbortController();
    const client = new ScaiVaultClient({
      baseUrl: server.url,
      tokens: staticTokenSource(server.rootToken),
      signal: controller.signal,
      maxAttempts: 100,
      backoff: { baseMs: 200, maxMs: 200 },
    });

    await withFault({ path_prefix: "/v1/secrets/a/one", status: 503, code: "service_unavailable", count: 100 }, async () => {
      setTimeout(() => controller.abort(), 300);
      await expect(client.getSecret("a/one")).rejects.toMatchObject({ code: "unreachable" });
    });
  });

  test("client error messages carry no server message text", async () => {
    await withFault({ path_prefix: "/v1/secrets/a/one", status: 403, code: "access_denied", count: 1 }, async () => {
      const error = (await rootClient().getSecret("a/one").catch((caught) => caught)) as AgentError;
      expect(error.message).toBe("ScaiVault rejected secrets.get: 403 access_denied");
      expect(error.requestId).toMatch(/^agent-/);
    });
  });
});

describe("ScaiVaultClient inputs and partial failures", () => {
  test("client rejects credentials in the base URL without echoing them", () => {
    const call = () => new ScaiVaultClient({ baseUrl: "http://admin:Sup3rS3cret@127.0.0.1:1" });
    expect(call).toThrow("it contains a user name or password");
    expect(call).not.toThrow("Sup3rS3cret");
  });

  test("client rejects a query in the base URL", () => {
    expect(() => new ScaiVaultClient({ baseUrl: "http://127.0.0.1:1/?x=1" })).toThrow("remove the query and fragment");
  });

  test("client fails at once when Retry-After is beyond its limit", async () => {
    const records: RequestRecord[] = [];
    await withFault({ path_prefix: "/v1/secrets/a/one", status: 429, code: "rate_limited", count: 5, retry_after: 3_000_000 }, async () => {
      await expect(rootClient(records).getSecret("a/one")).rejects.toThrow("ScaiVault asked to wait 3000000 s");
    });
    expect(records).toHaveLength(1);
  });

  test("client keeps other batches when one batch fails", async () => {
    const paths = Array.from({ length: 150 }, (_, index) => `part/s${index}`);
    for (const path of paths) server.state.secrets.write(path, { data: { v: path } });

    let result!: Awaited<ReturnType<ScaiVaultClient["readSecrets"]>>;
    await withFault({ method: "POST", path_prefix: "/v1/secrets/batch", status: 403, code: "access_denied", count: 1 }, async () => {
      result = await rootClient().readSecrets(paths);
    });

    expect(result.secrets.size + result.errors.size).toBe(150);
    expect(result.secrets.size).toBeGreaterThanOrEqual(50);
    expect([...result.errors.values()].every((error) => error.serverCode === "access_denied")).toBe(true);
  });

  test("client reports a base URL without the API as configuration", async () => {
    const client = new ScaiVaultClient({ baseUrl: `${server.url}/wrong/prefix`, tokens: staticTokenSource(server.rootToken) });
    await expect(client.readSecrets(["a/one"])).rejects.toMatchObject({ code: "config" });
  });

  test("client re-reads secrets a batch answered with rate_limited", async () => {
    const limited = await startDevServer({ port: 0, rateLimits: { read: 60 } });
    try {
      const paths = Array.from({ length: 61 }, (_, index) => `throttle/s${index}`);
      for (const path of paths) limited.state.secrets.write(path, { data: { v: path } });
      const client = new ScaiVaultClient({ baseUrl: limited.url, tokens: staticTokenSource(limited.rootToken), backoff: { baseMs: 5, maxMs: 20 } });

      const result = await client.readSecrets(paths);

      expect(result.errors.size).toBe(0);
      expect(result.secrets.size).toBe(61);
      expect(limited.state.stats.count("POST /v1/secrets/batch")).toBe(2);
    } finally {
      await limited.stop();
    }
  });

  test("client treats a body that stalls as a network failure", async () => {
    const stalling = createServer((_request, response) => {
      response.writeHead(200, { "content-type": "application/json" });
      response.write('{"secrets":');
    });
    await new Promise<void>((resolve) => stalling.listen(0, "127.0.0.1", resolve));
    const port = (stalling.address() as { port: number }).port;

    try {
      const client = new ScaiVaultClient({ baseUrl: `http://127.0.0.1:${port}`, tokens: staticTokenSource("t"), maxAttempts: 1, requestTimeoutMs: 300 });
      await expect(client.readSecrets(["a/b"])).rejects.toMatchObject({ code: "unreachable" });
    } finally {
      stalling.closeAllConnections();
      stalling.close();
    }
  });
});

describe("exchangeTokenSource", () => {
  test("token source reuses a token and re-reads the file for a new exchange", async () => {
    const tokenFile = join(scratch, "reread");
    writeFileSync(tokenFile, projectedToken({ name: "first" }));
    const base = new ScaiVaultClient({ baseUrl: server.url });
    const source = exchangeTokenSource(base, { tokenFile });

    const first = await source.getToken();
    expect(await source.getToken()).toBe(first);

    writeFileSync(tokenFile, projectedToken({ name: "second" }));
    source.invalidate();
    const second = await source.getToken();
    const whoami = await base.withTokens(staticTokenSource(second)).whoami();

    expect(second).not.toBe(first);
    expect(whoami.identity_id).toBe("sa:second");
  });

  test("token source shares one exchange among concurrent callers", async () => {
    const tokenFile = join(scratch, "concurrent");
    writeFileSync(tokenFile, projectedToken());
    const records: RequestRecord[] = [];
    const base = new ScaiVaultClient({ baseUrl: server.url, onRequest: (record) => records.push(record) });
    const source = exchangeTokenSource(base, { tokenFile });

    const tokens = await Promise.all(Array.from({ length: 20 }, () => source.getToken()));

    expect(new Set(tokens).size).toBe(1);
    expect(records.filter((record) => record.route === "auth.exchange")).toHaveLength(1);
  });
});

describe("exchangeToken", () => {
  test("exchange reports an unreadable whoami expiry as a server error", async () => {
    const server = createServer((request, response) => {
      response.writeHead(200, { "content-type": "application/json" });
      if (request.url === "/v1/auth/exchange") response.end(JSON.stringify({ access_token: "svt_no_expiry" }));
      else response.end(JSON.stringify({ identity_id: "sa:x", token_expires_at: "soon-ish" }));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as { port: number }).port;

    try {
      const client = new ScaiVaultClient({ baseUrl: `http://127.0.0.1:${port}`, maxAttempts: 1 });
      const call = exchangeToken(client, projectedToken(), {});
      await expect(call).rejects.toMatchObject({ code: "server" });
      await expect(exchangeToken(client, projectedToken(), {})).rejects.toThrow("Unexpected whoami response: token_expires_at is not an ISO-8601 time");
    } finally {
      server.close();
    }
  });
});

describe("reuseDeadline", () => {
  const issuedAt = 1_000_000;

  test("reuse ends 50 minutes after issue for a one-hour token", () => {
    expect(reuseDeadline({ token: "t", expiresAt: issuedAt + 3_600_000 }, issuedAt)).toBe(issuedAt + 50 * 60_000);
  });

  test("reuse ends 5 minutes before expiry for a 30-minute token", () => {
    expect(reuseDeadline({ token: "t", expiresAt: issuedAt + 1_800_000 }, issuedAt)).toBe(issuedAt + 25 * 60_000);
  });

  test("reuse keeps a fifth of the life of a short token as margin", () => {
    expect(reuseDeadline({ token: "t", expiresAt: issuedAt + 10_000 }, issuedAt)).toBe(issuedAt + 8_000);
  });

  test("reuse without a stated expiry lasts 50 minutes", () => {
    expect(reuseDeadline({ token: "t" }, issuedAt)).toBe(issuedAt + 50 * 60_000);
  });
});
