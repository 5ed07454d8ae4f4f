/**
 * The dev server over real HTTP on 127.0.0.1: authentication, secrets, access control, rate
 * limits, subscriptions, faults and the `dev` command as a child process.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { connect } from "node:net";
import { join } from "node:path";
import { configureLogging } from "../src/log.ts";
import { createDevApp, startDevServer, type DevServer, type DevServerOptions } from "../src/dev/server.ts";
import { matchGlob } from "../src/dev/glob.ts";
import { TokenStore } from "../src/dev/tokens.ts";
import { makeJwt, makeKeyPair, serviceAccountClaims } from "./helpers/jwt.ts";
import { spawnCli } from "./helpers/cli.ts";

const logLines: string[] = [];
const sensitive: string[] = [];
const servers: DevServer[] = [];
let scratch: string;
let main: DevServer;

beforeAll(async () => {
  configureLogging({ level: "debug", format: "json", write: (line) => logLines.push(line) });
  scratch = mkdtempSync(join(tmpdir(), "dev-server-test-"));
  main = await start({ seed: { "apps/billing/db": { username: "billing", password: "seed-password-123" } } });
});

afterAll(async () => {
  await Promise.all(servers.map((server) => server.stop()));
  configureLogging({});
  rmSync(scratch, { recursive: true, force: true });
});

interface Reply {
  status: number;
  headers: Headers;
  body: any;
}

async function start(options: DevServerOptions = {}): Promise<DevServer> {
  const server = await startDevServer({ port: 0, ...options });
  servers.push(server);
  sensitive.push(server.rootToken);
  return server;
}

async function call(
  server: DevServer,
  method: string,
  path: string,
  options: { token?: string | null; body?: unknown; headers?: Record<string, string>; timeoutMs?: number } = {},
): Promise<Reply> {
  const token = options.token === undefined ? server.rootToken : options.token;
  const headers: Record<string, string> = { ...options.headers };
  if (token !== null) headers.authorization = `Bearer ${token}`;
  if (options.body !== undefined) headers["content-type"] = "application/json";

  const response = await fetch(`${server.url}${path}`, {
    method,
    headers,
    body: encodeBody(options.body),
    signal: AbortSignal.timeout(options.timeoutMs ?? 10_000),
  });
  const text = await response.text();
  return { status: response.status, headers: response.headers, body: text ? JSON.parse(text) : null };
}

async function exchange(server: DevServer, subjectToken: string, extra: Record<string, unknown> = {}): Promise<Reply> {
  sensitive.push(subjectToken);
  return call(server, "POST", "/v1/auth/exchange", { token: null, body: { subject_token: subjectToken, ...extra } });
}

async function tokenFor(server: DevServer, name: string, extra: Record<string, unknown> = {}): Promise<string> {
  const reply = await exchange(server, makeJwt(serviceAccountClaims("apps", name)), extra);
  expect(reply.status).toBe(200);
  sensitive.push(reply.body.access_token);
  return reply.body.access_token;
}

function put(server: DevServer, path: string, data: Record<string, unknown>, token?: string): Promise<Reply> {
  return call(server, "PUT", `/v1/secrets/${path}`, { token, body: { data } });
}

function expectError(reply: Reply, status: number, code: string): void {
  expect(reply.status).toBe(status);
  expect(reply.body.error.code).toBe(code);
  expect(typeof reply.body.error.message).toBe("string");
  expect(reply.body.error.request_id).toBe(reply.headers.get("x-request-id")!);
}

/**
 * Sends one HTTP/1.1 request over a raw socket, so that a test controls the framing: a
 * `Content-Length` larger than the bytes sent, or a chunked body. It writes up to `bytes` body
 * bytes, stops writing as soon as the response arrives, and waits at most 15 s for it.
 */
async function rawRequest(
  server: DevServer,
  method: string,
  path: string,
  options: { contentLength?: number; chunked?: boolean; bytes: number; token?: string },
): Promise<Reply & { sentBytes: number }> {
  const socket = connect(server.port, "127.0.0.1");
  // The server may reset the connection after it responded, which is not a failure here.
  socket.on("error", () => {});
  let received = Buffer.alloc(0);
  let sentBytes = 0;
  let settled = false;

  const answered = new Promise<Reply>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`No response within 15 s after ${sentBytes} body bytes`)), 15_000);
    socket.on("data", (data: Buffer) => {
      received = Buffer.concat([received, data]);
      const reply = parseRawResponse(received);
      if (reply) {
        clearTimeout(timer);
        resolve(reply);
      }
    });
    socket.on("close", () => {
      clearTimeout(timer);
      reject(new Error(`Connection closed without a full response after ${sentBytes} body bytes`));
    });
  });
  answered.then(
    () => (settled = true),
    () => (settled = true),
  );

  try {
    await new Promise((resolve) => socket.once("connect", resolve));
    const framing = options.chunked ? "Transfer-Encoding: chunked" : `Content-Length: ${options.contentLength}`;
    const auth = options.token ? `Authorization: Bearer ${options.token}\r\n` : "";
    socket.write(`${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n${auth}${framing}\r\n\r\n`);

    const chunk = Buffer.alloc(Math.min(64 * 1024, options.bytes), "a");
    while (!settled && sentBytes < options.bytes) {
      const framed = options.chunked ? Buffer.concat([Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from("\r\n")]) : chunk;
      sentBytes += chunk.length;
      if (!socket.write(framed)) {
        await Promise.race([new Promise((resolve) => socket.once("drain", resolve)), answered.catch(() => {}), sleep(5000)]);
      }
    }
    return { ...(await answered), sentBytes };
  } finally {
    socket.destroy();
  }
}

/** Parses a complete response with a `Content-Length` body, or returns undefined while it is incomplete. */
function parseRawResponse(buffer: Buffer): Reply | undefined {
  const end = buffer.indexOf("\r\n\r\n");
  if (end === -1) return undefined;

  const [statusLine, ...lines] = buffer.subarray(0, end).toString("latin1").split("\r\n");
  const headers = new Headers(lines.map((line) => [line.slice(0, line.indexOf(":")), line.slice(line.indexOf(":") + 1).trim()] as [string, string]));
  const length = Number(headers.get("content-length") ?? 0);
  if (buffer.length < end + 4 + length) return undefined;

  const text = buffer.subarray(end + 4, end + 4 + length).toString("utf8");
  return { status: Number(statusLine!.split(" ")[1]), headers, body: text ? JSON.parse(text) : null };
}

const nowSeconds = (): number => Math.floor(Date.now() / 1000);
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe("health and request ids", () => {
  test("health answers without a token", async () => {
    const health = await call(main, "GET", "/v1/health", { token: null });
    const ready = await call(main, "GET", "/v1/health/ready", { token: null });
    const version = await call(main, "GET", "/v1/version", { token: null });

    expect(health.status).toBe(200);
    expect(health.body.status).toBe("healthy");
    expect(ready.body.status).toBe("ready");
    expect(typeof version.body.version).toBe("string");
  });

  test("request id echoes the client's", async () => {
    const reply = await call(main, "GET", "/v1/health", { headers: { "X-Request-ID": "client-req-42" } });
    expect(reply.headers.get("x-request-id")).toBe("client-req-42");
  });

  test("request id is generated when absent", async () => {
    const reply = await call(main, "GET", "/v1/secrets/missing/secret");

    expect(reply.headers.get("x-request-id")).toMatch(/^req_/);
    expect(reply.body.error.request_id).toBe(reply.headers.get("x-request-id")!);
  });

  test("unknown route returns the error envelope", async () => {
    const reply = await call(main, "GET", "/v1/nothing-here");
    expectError(reply, 404, "not_found");
  });

  test("createDevApp serves app.request without a network", async () => {
    const { app, state } = createDevApp({ rootToken: "root-token-for-app-request", seed: { "a/b": { key: "value" } } });
    const response = await app.request("/v1/secrets/a/b", { headers: { authorization: "Bearer root-token-for-app-request" } });

    expect(response.status).toBe(200);
    expect(((await response.json()) as { version: number }).version).toBe(1);
    expect(state.stats.count("GET /v1/secrets/{path}")).toBe(1);
  });
});

describe("exchange", () => {
  test("exchange maps a service account to sa:NAME", async () => {
    const reply = await exchange(main, makeJwt(serviceAccountClaims("billing", "billing")), {
      subject_token_type: "urn:ietf:params:oauth:token-type:jwt",
      audience: "scaivault",
    });

    expect(reply.status).toBe(200);
    expect(reply.body.access_token).toMatch(/^svt_[A-Za-z0-9_-]{32}$/);
    expect(reply.body.token_type).toBe("Bearer");
    expect(reply.body.expires_in).toBe(3600);
    expect(reply.body.identity_id).toBe("sa:billing");
    sensitive.push(reply.body.access_token);
  });

  test("exchange accepts aud as a string", async () => {
    const reply = await exchange(main, makeJwt(serviceAccountClaims("billing", "billing", { aud: "scaivault" })));
    expect(reply.status).toBe(200);
  });

  test("exchange uses the requested role as identity", async () => {
    const reply = await exchange(main, makeJwt(serviceAccountClaims("billing", "billing")), { role: "sa:billing-prod" });
    expect(reply.body.identity_id).toBe("sa:billing-prod");
  });

  test("exchange rejects an expired JWT", async () => {
    const reply = await exchange(main, makeJwt(serviceAccountClaims("billing", "billing", { exp: nowSeconds() - 60 })));
    expectError(reply, 401, "token_invalid");
    expect(reply.body.error.message).toContain("expired");
  });

  test("exchange rejects a JWT without exp", async () => {
    const reply = await exchange(main, makeJwt(serviceAccountClaims("billing", "billing", { exp: undefined })));
    expectError(reply, 401, "token_invalid");
  });

  test("exchange rejects a wrong audience", async () => {
    const reply = await exchange(main, makeJwt(serviceAccountClaims("billing", "billing", { aud: ["kubernetes", "vault"] })));
    expectError(reply, 401, "token_invalid");
    expect(reply.body.error.message).toContain("audience");
  });

  test("exchange rejects a foreign request audience", async () => {
    const reply = await exchange(main, makeJwt(serviceAccountClaims("billing", "billing")), { audience: "other" });
    expectError(reply, 401, "token_invalid");
  });

  test("exchange rejects a non-service-account subject", async () => {
    const reply = await exchange(main, makeJwt(serviceAccountClaims("billing", "billing", { sub: "user:alice" })));
    expectError(reply, 403, "access_denied");
  });

  test.each([
    ["not a JWT", "plainly-not-a-jwt"],
    ["two parts", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0"],
    ["payload not JSON", "eyJhbGciOiJub25lIn0.bm90LWpzb24."],
    ["payload not base64url", "eyJhbGciOiJub25lIn0.!!!."],
    ["payload an array", `eyJhbGciOiJub25lIn0.${Buffer.from("[1]").toString("base64url")}.`],
  ])("exchange rejects a malformed JWT: %s", async (_name, token) => {
    const reply = await exchange(main, token);
    expectError(reply, 401, "token_invalid");
    expect(reply.body.error.message).not.toContain(token);
  });

  test("exchange rejects a missing subject_token", async () => {
    const reply = await call(main, "POST", "/v1/auth/exchange", { token: null, body: {} });
    expectError(reply, 400, "invalid_request");
  });

  test("exchange rejects a non-JSON body", async () => {
    const reply = await call(main, "POST", "/v1/auth/exchange", { token: null, body: "{not json" });
    expectError(reply, 400, "invalid_request");
  });

  test("exchange rejects an invalid role", async () => {
    const reply = await exchange(main, makeJwt(serviceAccountClaims("billing", "billing")), { role: "not a role" });
    expectError(reply, 400, "invalid_role");
  });
});

describe("exchange with signature checks", () => {
  test("exchange rejects a bad signature", async () => {
    const keys = await crypto.subtle.generateKey(
      { name: "RSASSA-PKCS1-v1_5", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" },
      true,
      ["sign", "verify"],
    );
    const spki = Buffer.from(await crypto.subtle.exportKey("spki", keys.publicKey)).toString("base64");
    const pemFile = join(scratch, "jwt-public.pem");
    writeFileSync(pemFile, `-----BEGIN PUBLIC KEY-----\n${spki.replace(/.{64}/g, "$&\n")}\n-----END PUBLIC KEY-----\n`);
    const server = await start({ jwtPublicKeyFile: pemFile });
    const claims = serviceAccountClaims("billing", "billing");

    const good = await exchange(server, makeJwt(claims, { key: keys.privateKey }));
    const otherKey = await exchange(server, makeJwt(claims, { key: makeKeyPair("RS256").privateKey }));
    const unsigned = await exchange(server, makeJwt(claims));
    const tampered = makeJwt(claims, { key: keys.privateKey }).split(".");
    tampered[1] = Buffer.from(JSON.stringify({ ...claims, sub: "system:serviceaccount:apps:admin" })).toString("base64url");
    const modified = await exchange(server, tampered.join("."));

    expect(good.status).toBe(200);
    expectError(otherKey, 401, "token_invalid");
    expect(otherKey.body.error.message).toContain("signature");
    expectError(unsigned, 401, "token_invalid");
    expectError(modified, 401, "token_invalid");
  });

  test("exchange verifies ES256 against a JWKS file", async () => {
    const pair = makeKeyPair("ES256");
    const jwksFile = join(scratch, "jwks.json");
    writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...pair.publicJwk, kid: "key-1", use: "sig", alg: "ES256" }] }));
    const server = await start({ jwksFile });
    const claims = serviceAccountClaims("billing", "billing");

    const good = await exchange(server, makeJwt(claims, { key: pair.privateKey, kid: "key-1" }));
    const wrongKid = await exchange(server, makeJwt(claims, { key: pair.privateKey, kid: "key-2" }));
    const otherKey = await exchange(server, makeJwt(claims, { key: makeKeyPair("ES256").privateKey, kid: "key-1" }));

    expect(good.status).toBe(200);
    expectError(wrongKid, 401, "token_invalid");
    expectError(otherKey, 401, "token_invalid");
  });

  test("startDevServer rejects an unusable key file", async () => {
    const file = join(scratch, "not-a-key.pem");
    writeFileSync(file, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");

    await expect(startDevServer({ port: 0, jwtPublicKeyFile: file })).rejects.toThrow('expected "PUBLIC KEY"');
  });
});

describe("tokens", () => {
  test("whoami describes an exchanged token", async () => {
    const token = await tokenFor(main, "whoami");
    const reply = await call(main, "GET", "/v1/auth/whoami", { token });
    const expiresAt = Date.parse(reply.body.token_expires_at);

    expect(reply.status).toBe(200);
    expect(reply.body.identity_id).toBe("sa:whoami");
    expect(reply.body.identity_type).toBe("service_account");
    expect(reply.body.tenant_id).toBe("tnt_dev");
    expect(Math.abs(expiresAt - (Date.now() + 3_600_000))).toBeLessThan(10_000);
  });

  test("whoami of the root token never expires", async () => {
    const reply = await call(main, "GET", "/v1/auth/whoami");
    expect(reply.body.identity_id).toBe("root");
    expect(reply.body.token_expires_at).toBeNull();
  });

  test("authentication requires a bearer token", async () => {
    expectError(await call(main, "GET", "/v1/auth/whoami", { token: null }), 401, "authentication_required");
    expectError(await call(main, "GET", "/v1/auth/whoami", { token: "svt_unknown" }), 401, "token_invalid");
    expectError(await call(main, "GET", "/v1/auth/whoami", { token: null, headers: { authorization: "Basic abc" } }), 401, "token_invalid");
  });

  test("token expires after a 1 s lifetime", async () => {
    const server = await start({ tokenTtlSeconds: 1 });
    const reply = await exchange(server, makeJwt(serviceAccountClaims("apps", "short")));
    sensitive.push(reply.body.access_token);

    expect(reply.body.expires_in).toBe(1);
    expect((await call(server, "GET", "/v1/auth/whoami", { token: reply.body.access_token })).status).toBe(200);

    await sleep(1200);
    expectError(await call(server, "GET", "/v1/auth/whoami", { token: reply.body.access_token }), 401, "token_expired");
  });

  test("revoke-all spares the root token", async () => {
    const server = await start();
    const token = await tokenFor(server, "revoked");

    const revoked = await call(server, "POST", "/v1/dev/tokens/revoke-all");
    expect(revoked.body.revoked).toBe(1);

    expectError(await call(server, "GET", "/v1/auth/whoami", { token }), 401, "token_revoked");
    expect((await call(server, "GET", "/v1/auth/whoami")).status).toBe(200);
    expect((await call(server, "GET", "/v1/auth/whoami", { token: await tokenFor(server, "fresh") })).status).toBe(200);
  });
});

describe("secrets", () => {
  test("secret put creates versions that get returns", async () => {
    const first = await put(main, "apps/web/config", { api_key: "v1-key" });
    const second = await call(main, "PUT", "/v1/secrets/apps/web/config", {
      body: { data: { api_key: "v2-key" }, secret_type: "api_key", metadata: { owner: "team:web" } },
    });
    const current = await call(main, "GET", "/v1/secrets/apps/web/config");
    const old = await call(main, "GET", "/v1/secrets/apps/web/config?version=1");

    expect(first.body.version).toBe(1);
    expect(first.body.secret_type).toBe("json");
    expect(second.body.version).toBe(2);
    expect(current.body).toMatchObject({
      path: "apps/web/config",
      version: 2,
      secret_type: "api_key",
      data: { api_key: "v2-key" },
      metadata: { owner: "team:web" },
      expires_at: null,
      rotation_policy_id: null,
    });
    expect(typeof current.body.created_at).toBe("string");
    expect(old.body.version).toBe(1);
    expect(old.body.data).toEqual({ api_key: "v1-key" });
  });

  test("secret get rejects a missing version", async () => {
    expectError(await call(main, "GET", "/v1/secrets/apps/billing/db?version=9"), 404, "version_not_found");
    expectError(await call(main, "GET", "/v1/secrets/apps/billing/db?version=abc"), 400, "invalid_request");
  });

  test("secret get rejects a missing path", async () => {
    expectError(await call(main, "GET", "/v1/secrets/apps/none/here"), 404, "secret_not_found");
  });

  test("secret put rejects a body without data", async () => {
    const reply = await call(main, "PUT", "/v1/secrets/apps/bad/body", { body: { data: [1, 2], secret_type: "blob" } });

    expectError(reply, 422, "validation_error");
    expect(Object.keys(reply.body.error.details.fields).sort()).toEqual(["data", "secret_type"]);
  });

  test.each([
    ["upper case", "Apps/billing"],
    ["empty segment", "apps//billing"],
    ["trailing slash", "apps/billing/"],
    ["space", "apps/bil%20ling"],
    ["dot", "apps/billing.db"],
    ["eleven segments", "a/b/c/d/e/f/g/h/i/j/k"],
    ["513 characters", "a".repeat(513)],
  ])("secret path is rejected: %s", async (_name, path) => {
    expectError(await call(main, "GET", `/v1/secrets/${path}`), 400, "invalid_path");
  });

  test("secret path accepts the maximum size", async () => {
    const longPath = `${"a".repeat(494)}/b/c/d/e/f/g/h/i/j`;
    expect(longPath).toHaveLength(512);
    expect((await put(main, "a/b/c/d/e/f/g/h/i/j", { k: "v" })).status).toBe(200);
    expectError(await call(main, "GET", `/v1/secrets/${longPath}`), 404, "secret_not_found");
  });

  test("secret delete removes the secret", async () => {
    await put(main, "apps/temp/one", { value: "x" });

    expect((await call(main, "DELETE", "/v1/secrets/apps/temp/one")).status).toBe(204);
    expectError(await call(main, "GET", "/v1/secrets/apps/temp/one"), 404, "secret_not_found");
    expectError(await call(main, "DELETE", "/v1/secrets/apps/temp/one"), 404, "secret_not_found");
  });

  test("rotate replaces password-like values", async () => {
    await put(main, "apps/rotate/db", { username: "app", password: "old-password-1", port: "5432" });

    const rotated = await call(main, "POST", "/v1/secrets/apps/rotate/db/rotate");
    const old = await call(main, "GET", "/v1/secrets/apps/rotate/db?version=1");

    expect(rotated.status).toBe(200);
    expect(rotated.body.version).toBe(2);
    expect(rotated.body.data.username).toBe("app");
    expect(rotated.body.data.port).toBe("5432");
    expect(rotated.body.data.password).not.toBe("old-password-1");
    expect(rotated.body.data.password).toMatch(/^[A-Za-z0-9_-]{32}$/);
    expect(old.body.data.password).toBe("old-password-1");
  });

  test("rotate uses the request data", async () => {
    await put(main, "apps/rotate/given", { token: "t1" });
    const rotated = await call(main, "POST", "/v1/secrets/apps/rotate/given/rotate", { body: { data: { token: "t2" } } });

    expect(rotated.body.data).toEqual({ token: "t2" });
    expectError(await call(main, "POST", "/v1/secrets/apps/rotate/missing/rotate"), 404, "secret_not_found");
  });

  test("rotate handles a secret named rotate", async () => {
    await put(main, "apps/rotate", { secret: "s1" });

    const read = await call(main, "GET", "/v1/secrets/apps/rotate");
    const rotated = await call(main, "POST", "/v1/secrets/apps/rotate/rotate");

    expect(read.body.path).toBe("apps/rotate");
    expect(rotated.body.path).toBe("apps/rotate");
    expect(rotated.body.version).toBe(2);
  });

  test("batch returns secrets and per-path errors", async () => {
    const before = (await call(main, "GET", "/v1/dev/stats")).body.requests["POST /v1/secrets/batch"] ?? 0;
    const reply = await call(main, "POST", "/v1/secrets/batch", {
      body: { paths: ["apps/billing/db", "apps/none/here", "Bad/Path"], options: { include_metadata: false } },
    });
    const stats = await call(main, "GET", "/v1/dev/stats");

    expect(reply.status).toBe(200);
    expect(reply.body.secrets["apps/billing/db"]).toEqual({
      data: { username: "billing", password: "seed-password-123" },
      version: 1,
      secret_type: "json",
    });
    expect(reply.body.errors["apps/none/here"].code).toBe("secret_not_found");
    expect(reply.body.errors["Bad/Path"].code).toBe("invalid_path");
    expect(stats.body.requests["POST /v1/secrets/batch"]).toBe(before + 1);
  });

  test("batch includes metadata when asked", async () => {
    const reply = await call(main, "POST", "/v1/secrets/batch", { body: { paths: ["apps/billing/db"], options: { include_metadata: true } } });
    expect(reply.body.secrets["apps/billing/db"]).toMatchObject({ path: "apps/billing/db", metadata: {}, expires_at: null });
  });

  test("batch fail_fast stops at an error", async () => {
    const reply = await call(main, "POST", "/v1/secrets/batch", {
      body: { paths: ["apps/billing/db", "apps/none/here"], options: { fail_fast: true } },
    });

    expectError(reply, 404, "secret_not_found");
    expect(reply.body.error.details.path).toBe("apps/none/here");
  });

  test("batch rejects more than 100 paths", async () => {
    const paths = Array.from({ length: 101 }, (_, index) => `apps/many/s${index}`);

    expectError(await call(main, "POST", "/v1/secrets/batch", { body: { paths } }), 400, "invalid_request");
    expect((await call(main, "POST", "/v1/secrets/batch", { body: { paths: paths.slice(0, 100) } })).status).toBe(200);
  });
});

describe("access control", () => {
  let server: DevServer;
  let billing: string;

  beforeAll(async () => {
    server = await start({
      seed: { "environments/production/billing/database": { password: "p1" }, "environments/production/hr/database": { password: "p2" } },
      config: {
        identities: {
          "sa:billing": { read: ["environments/production/billing/**"], write: [] },
          "sa:writer": { read: [], write: ["environments/*/billing/*"] },
        },
      },
    });
    billing = await tokenFor(server, "billing");
  });

  test("policy allows reading a matching path", async () => {
    expect((await call(server, "GET", "/v1/secrets/environments/production/billing/database", { token: billing })).status).toBe(200);
  });

  test("policy denies reading another path", async () => {
    const reply = await call(server, "GET", "/v1/secrets/environments/production/hr/database", { token: billing });
    expectError(reply, 403, "access_denied");
    expect(reply.headers.get("x-ratelimit-limit")).toBe("1000");
  });

  test("policy denies writing without a write rule", async () => {
    expectError(await put(server, "environments/production/billing/database", { password: "x" }, billing), 403, "access_denied");
  });

  test("policy separates write from read", async () => {
    const writer = await tokenFor(server, "writer");

    expect((await put(server, "environments/staging/billing/api", { key: "k" }, writer)).status).toBe(200);
    expectError(await call(server, "GET", "/v1/secrets/environments/staging/billing/api", { token: writer }), 403, "access_denied");
  });

  test("policy denies batch paths one by one", async () => {
    const reply = await call(server, "POST", "/v1/secrets/batch", {
      token: billing,
      body: { paths: ["environments/production/billing/database", "environments/production/hr/database"] },
    });

    expect(Object.keys(reply.body.secrets)).toEqual(["environments/production/billing/database"]);
    expect(reply.body.errors["environments/production/hr/database"].code).toBe("access_denied");
  });

  test("exchange denies unlisted identities", async () => {
    expectError(await exchange(server, makeJwt(serviceAccountClaims("apps", "stranger"))), 403, "access_denied");
    expectError(await exchange(server, makeJwt(serviceAccountClaims("apps", "billing")), { role: "sa:unknown" }), 403, "access_denied");
    expectError(await exchange(server, makeJwt(serviceAccountClaims("apps", "other")), { role: "sa:billing" }), 403, "access_denied");
    expect((await exchange(server, makeJwt(serviceAccountClaims("apps", "billing")), { role: "sa:billing" })).status).toBe(200);
  });

  test("root token may read every path", async () => {
    expect((await call(server, "GET", "/v1/secrets/environments/production/hr/database")).status).toBe(200);
  });
});

describe("rate limits", () => {
  test("rate limit returns 429 with Retry-After", async () => {
    const server = await start({ rateLimits: { read: 2 }, seed: { "a/b": { k: "v" } } });

    const first = await call(server, "GET", "/v1/secrets/a/b");
    const second = await call(server, "GET", "/v1/secrets/a/b");
    const third = await call(server, "GET", "/v1/secrets/a/b");

    expect(first.headers.get("x-ratelimit-limit")).toBe("2");
    expect(first.headers.get("x-ratelimit-remaining")).toBe("1");
    expect(Number(first.headers.get("x-ratelimit-reset"))).toBeGreaterThan(nowSeconds() - 1);
    expect(second.headers.get("x-ratelimit-remaining")).toBe("0");
    expectError(third, 429, "rate_limited");
    expect(Number(third.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect(Number(third.headers.get("retry-after"))).toBeLessThanOrEqual(30);
  });

  test("rate limit buckets are per identity", async () => {
    const server = await start({ rateLimits: { whoami: 1 } });
    const firstToken = await tokenFor(server, "first");
    const secondToken = await tokenFor(server, "second");

    expect((await call(server, "GET", "/v1/auth/whoami", { token: firstToken })).status).toBe(200);
    expect((await call(server, "GET", "/v1/auth/whoami", { token: secondToken })).status).toBe(200);
    expectError(await call(server, "GET", "/v1/auth/whoami", { token: firstToken }), 429, "rate_limited");
  });

  test("batch draws one read per secret", async () => {
    const server = await start({ rateLimits: { read: 1 }, seed: { "a/one": { k: "1" }, "a/two": { k: "2" } } });
    const reply = await call(server, "POST", "/v1/secrets/batch", { body: { paths: ["a/one", "a/two"] } });

    expect(Object.keys(reply.body.secrets)).toEqual(["a/one"]);
    expect(reply.body.errors["a/two"].code).toBe("rate_limited");
    expect(reply.headers.get("x-ratelimit-limit")).toBe("100");
  });

  test("rate limits off lets every request through", async () => {
    const server = await start({ rateLimits: false, seed: { "a/b": { k: "v" } } });

    for (let attempt = 0; attempt < 5; attempt += 1) {
      expect((await call(server, "POST", "/v1/subscriptions", { body: { paths: ["a/**"] } })).status).toBe(201);
    }
  });
});

describe("subscriptions", () => {
  let server: DevServer;
  let token: string;

  beforeAll(async () => {
    server = await start({ seed: { "apps/events/db": { password: "p0" } } });
    token = await tokenFor(server, "events");
  });

  async function subscribe(paths: string[], events?: string[]): Promise<string> {
    const reply = await call(server, "POST", "/v1/subscriptions", {
      token,
      body: { name: "test", paths, ...(events ? { events } : {}), delivery: { type: "polling", buffer_size: 100 } },
    });
    expect(reply.status).toBe(201);
    return reply.body.id;
  }

  function poll(id: string, query = "timeout=0"): Promise<Reply> {
    return call(server, "GET", `/v1/subscriptions/${id}/poll?${query}`, { token, timeoutMs: 15_000 });
  }

  test("subscription create returns an active subscription", async () => {
    const reply = await call(server, "POST", "/v1/subscriptions", {
      token,
      body: { name: "sidecar", paths: ["apps/**"], events: ["secret.rotated", "secret.updated", "secret.deleted"] },
    });

    expect(reply.status).toBe(201);
    expect(reply.body).toMatchObject({ name: "sidecar", status: "active", identity_id: "sa:events" });
    expect(reply.body.id).toMatch(/^sub_/);
  });

  test("subscription create validates paths and events", async () => {
    expectError(await call(server, "POST", "/v1/subscriptions", { token, body: { paths: ["Apps/**"] } }), 400, "invalid_path");
    expectError(await call(server, "POST", "/v1/subscriptions", { token, body: { paths: ["a/b**"] } }), 400, "invalid_path");
    expectError(await call(server, "POST", "/v1/subscriptions", { token, body: { paths: ["a"], events: ["secret.nope"] } }), 422, "validation_error");
    expectError(await call(server, "POST", "/v1/subscriptions", { token, body: { paths: [] } }), 422, "validation_error");
  });

  test("poll wakes at once on a write", async () => {
    const id = await subscribe(["apps/events/**"], ["secret.updated"]);
    const started = performance.now();
    const pending = poll(id, "timeout=20");

    await sleep(200);
    await put(server, "apps/events/db", { password: "p1" });
    const reply = await pending;
    const elapsed = performance.now() - started;

    expect(elapsed).toBeLessThan(2000);
    expect(reply.body.has_more).toBe(false);
    expect(reply.body.events).toHaveLength(1);
    expect(reply.body.events[0]).toMatchObject({
      event_type: "secret.updated",
      path: "apps/events/db",
      identity_id: "root",
      tenant_id: "tnt_dev",
      data: { old_version: 1, new_version: 2, is_rotation: false },
    });
    expect(reply.body.events[0].event_id).toMatch(/^evt_/);
    expect(reply.body.events[0].request_id).toMatch(/^req_/);
  });

  test("poll returns empty after its timeout", async () => {
    const id = await subscribe(["quiet/**"]);
    const started = performance.now();
    const reply = await poll(id, "timeout=1");

    expect(reply.body).toEqual({ events: [], has_more: false });
    expect(performance.now() - started).toBeGreaterThanOrEqual(900);
  });

  test("poll redelivers events until they are acknowledged", async () => {
    const id = await subscribe(["apps/ack/*"]);
    await put(server, "apps/ack/one", { value: "1" });

    const first = await poll(id);
    const second = await poll(id);
    const ack = await call(server, "POST", `/v1/subscriptions/${id}/ack`, { token, body: { event_ids: [first.body.events[0].event_id] } });
    const third = await poll(id);

    expect(first.body.events[0].event_type).toBe("secret.created");
    expect(second.body.events.map((event: any) => event.event_id)).toEqual([first.body.events[0].event_id]);
    expect(ack.body.acknowledged).toBe(1);
    expect(third.body.events).toEqual([]);
  });

  test("poll honours since_event_id and max_events", async () => {
    const id = await subscribe(["apps/since/*"]);
    await put(server, "apps/since/a", { v: "1" });
    await put(server, "apps/since/b", { v: "1" });
    await put(server, "apps/since/c", { v: "1" });

    const page = await poll(id, "timeout=0&max_events=2");
    const rest = await poll(id, `timeout=0&since_event_id=${page.body.events[1].event_id}`);

    expect(page.body.events.map((event: any) => event.path)).toEqual(["apps/since/a", "apps/since/b"]);
    expect(page.body.has_more).toBe(true);
    expect(rest.body.events.map((event: any) => event.path)).toEqual(["apps/since/c"]);
  });

  test("subscription globs select the paths", async () => {
    const id = await subscribe(["apps/glob/*/db", "apps/deep/**", "apps/q?"]);
    for (const path of ["apps/glob/x/db", "apps/glob/x/y/db", "apps/deep/a/b/c", "apps/q1", "apps/q12", "apps/other"]) {
      await put(server, path, { v: "1" });
    }

    const reply = await poll(id);
    expect(reply.body.events.map((event: any) => event.path)).toEqual(["apps/glob/x/db", "apps/deep/a/b/c", "apps/q1"]);
  });

  test("matchGlob follows segment rules", () => {
    expect(matchGlob("a/*", "a/b")).toBe(true);
    expect(matchGlob("a/*", "a/b/c")).toBe(false);
    expect(matchGlob("a/**", "a/b/c")).toBe(true);
    expect(matchGlob("a/**", "a")).toBe(true);
    expect(matchGlob("a/**/z", "a/z")).toBe(true);
    expect(matchGlob("a/**/z", "a/b/c/z")).toBe(true);
    expect(matchGlob("a/db-*", "a/db-main")).toBe(true);
    expect(matchGlob("a/?", "a/bc")).toBe(false);
  });

  test("rotate and delete publish their events", async () => {
    const id = await subscribe(["apps/lifecycle/db"], ["secret.rotated", "secret.deleted"]);
    await put(server, "apps/lifecycle/db", { password: "p" });
    await call(server, "POST", "/v1/secrets/apps/lifecycle/db/rotate");
    await call(server, "DELETE", "/v1/secrets/apps/lifecycle/db");

    const events = (await poll(id)).body.events;

    expect(events.map((event: any) => event.event_type)).toEqual(["secret.rotated", "secret.deleted"]);
    expect(events[0].data).toMatchObject({ old_version: 1, new_version: 2, rotation_policy_id: null });
    expect(Date.parse(events[0].data.grace_period_ends) - Date.now()).toBeGreaterThan(47 * 3_600_000);
    expect(events[1].data.permanent).toBe(true);
  });

  test("subscription delete ends it", async () => {
    const id = await subscribe(["apps/gone/**"]);

    expect((await call(server, "DELETE", `/v1/subscriptions/${id}`, { token })).status).toBe(204);
    expectError(await poll(id), 404, "subscription_not_found");
    expectError(await call(server, "DELETE", `/v1/subscriptions/${id}`, { token }), 404, "subscription_not_found");
  });

  test("subscription delete wakes a pending poll", async () => {
    const id = await subscribe(["apps/wake/**"]);
    const pending = poll(id, "timeout=20");

    await sleep(200);
    await call(server, "DELETE", `/v1/subscriptions/${id}`, { token });

    expectError(await pending, 404, "subscription_not_found");
  });

  test("subscription belongs to its creator", async () => {
    const id = await subscribe(["apps/private/**"]);
    const other = await tokenFor(server, "intruder");

    expectError(await call(server, "GET", `/v1/subscriptions/${id}/poll?timeout=0`, { token: other }), 403, "access_denied");
    expect((await call(server, "GET", `/v1/subscriptions/${id}/poll?timeout=0`)).status).toBe(200);
  });

  test("subscription create limit returns 429", async () => {
    const limited = await start({ rateLimits: { subscription: 0 } });
    const reply = await call(limited, "POST", "/v1/subscriptions", { body: { paths: ["a/**"] } });

    expectError(reply, 429, "rate_limited");
    expect(reply.headers.get("retry-after")).toBe("60");
  });

  test("server stop ends a pending poll", async () => {
    const short = await start();
    const created = await call(short, "POST", "/v1/subscriptions", { body: { paths: ["a/**"] } });
    const started = performance.now();
    const pending = call(short, "GET", `/v1/subscriptions/${created.body.id}/poll?timeout=30`).catch((error: Error) => error);

    await sleep(200);
    await short.stop();
    await pending;

    expect(performance.now() - started).toBeLessThan(5000);
  });

  test("stats list the subscriptions", async () => {
    const stats = await call(server, "GET", "/v1/dev/stats");

    expect(stats.body.subscriptions.length).toBeGreaterThan(0);
    expect(stats.body.subscriptions[0]).toMatchObject({ identity_id: "sa:events", status: "active" });
    expect(stats.body.requests["GET /v1/subscriptions/{id}/poll"]).toBeGreaterThan(0);
  });
});

describe("faults", () => {
  test("fault answers the next matching requests", async () => {
    const server = await start({ seed: { "a/b": { k: "v" } } });
    const added = await call(server, "POST", "/v1/dev/faults", {
      body: { method: "GET", path_prefix: "/v1/secrets", status: 503, code: "service_unavailable", count: 2, retry_after: 1 },
    });

    const first = await call(server, "GET", "/v1/secrets/a/b");
    const other = await call(server, "GET", "/v1/auth/whoami");
    const second = await call(server, "GET", "/v1/secrets/a/b");
    const third = await call(server, "GET", "/v1/secrets/a/b");
    const stats = await call(server, "GET", "/v1/dev/stats");

    expect(added.status).toBe(201);
    expectError(first, 503, "service_unavailable");
    expect(first.headers.get("retry-after")).toBe("1");
    expect(other.status).toBe(200);
    expectError(second, 503, "service_unavailable");
    expect(third.status).toBe(200);
    expect(stats.body.requests["GET /v1/secrets/{path}"]).toBe(3);
  });

  test("fault delay holds the response", async () => {
    const server = await start();
    await call(server, "POST", "/v1/dev/faults", { body: { path_prefix: "/v1/health", delay_ms: 300 } });

    const started = performance.now();
    const reply = await call(server, "GET", "/v1/health", { token: null });

    expect(reply.status).toBe(200);
    expect(performance.now() - started).toBeGreaterThanOrEqual(280);
  });

  test("fault clear removes every fault", async () => {
    const server = await start();
    await call(server, "POST", "/v1/dev/faults", { body: { status: 500, count: 5 } });

    const cleared = await call(server, "DELETE", "/v1/dev/faults");

    expect(cleared.body.cleared).toBe(1);
    expect((await call(server, "GET", "/v1/health", { token: null })).status).toBe(200);
  });

  test("fault routes require the root token", async () => {
    const token = await tokenFor(main, "not-root");

    expectError(await call(main, "POST", "/v1/dev/faults", { token, body: { status: 500 } }), 403, "access_denied");
    expectError(await call(main, "GET", "/v1/dev/stats", { token }), 403, "access_denied");
    expectError(await call(main, "POST", "/v1/dev/faults", { body: { status: 200 } }), 422, "validation_error");
  });
});

describe("exchange roles", () => {
  let server: DevServer;
  let keys: ReturnType<typeof makeKeyPair>;

  beforeAll(async () => {
    keys = makeKeyPair("RS256");
    const pemFile = join(scratch, "roles-public.pem");
    writeFileSync(pemFile, keys.publicKeyPem);
    server = await start({
      jwtPublicKeyFile: pemFile,
      seed: { "environments/production/billing/database": { password: "billing-role-password" } },
      config: {
        identities: {
          "sa:billing": { read: ["environments/production/billing/**"], write: [] },
          "sa:frontend": { read: ["environments/production/web/**"], write: [] },
          "sa:reports": { read: ["environments/production/billing/**"], write: [], subjects: ["system:serviceaccount:web:frontend", "batch:nightly"] },
        },
      },
    });
  });

  function signed(namespace: string, name: string): string {
    return makeJwt(serviceAccountClaims(namespace, name), { key: keys.privateKey });
  }

  test("exchange rejects a role of another account", async () => {
    const reply = await exchange(server, signed("web", "frontend"), { role: "sa:billing" });

    expectError(reply, 403, "access_denied");
    expect(reply.body.error.message).toContain('"sa:billing"');
    expect(reply.body.error.message).toContain("system:serviceaccount:web:frontend");
    expect(reply.body.error.details).toEqual({ role: "sa:billing", subject: "system:serviceaccount:web:frontend" });
  });

  test("exchange rejects a user role", async () => {
    expectError(await exchange(server, signed("web", "frontend"), { role: "user:admin@corp" }), 403, "access_denied");
  });

  test("exchange accepts the account's own role", async () => {
    const reply = await exchange(server, signed("web", "frontend"), { role: "sa:frontend" });

    expect(reply.status).toBe(200);
    expect(reply.body.identity_id).toBe("sa:frontend");
    sensitive.push(reply.body.access_token);
  });

  test("exchange accepts a role listing the subject", async () => {
    const full = await exchange(server, signed("web", "frontend"), { role: "sa:reports" });
    const short = await exchange(server, signed("batch", "nightly"), { role: "sa:reports" });
    const otherNamespace = await exchange(server, signed("batch", "frontend"), { role: "sa:reports" });
    sensitive.push(full.body.access_token, short.body.access_token);

    expect(full.status).toBe(200);
    expect(full.body.identity_id).toBe("sa:reports");
    expect(short.status).toBe(200);
    expectError(otherNamespace, 403, "access_denied");
    const secret = await call(server, "GET", "/v1/secrets/environments/production/billing/database", { token: full.body.access_token });
    expect(secret.status).toBe(200);
  });

  test("denied role reads no secret", async () => {
    const frontend = await exchange(server, signed("web", "frontend"));
    sensitive.push(frontend.body.access_token);

    expect(frontend.body.identity_id).toBe("sa:frontend");
    const reply = await call(server, "GET", "/v1/secrets/environments/production/billing/database", { token: frontend.body.access_token });
    expectError(reply, 403, "access_denied");
  });

  test("permissive exchange warns once per role", async () => {
    const before = logLines.length;
    const first = await exchange(main, makeJwt(serviceAccountClaims("web", "frontend")), { role: "user:admin@corp" });
    const second = await exchange(main, makeJwt(serviceAccountClaims("web", "other")), { role: "user:admin@corp" });
    sensitive.push(first.body.access_token, second.body.access_token);

    expect(first.status).toBe(200);
    expect(first.body.identity_id).toBe("user:admin@corp");
    expect(second.status).toBe(200);
    const warnings = logLines
      .slice(before)
      .map((line) => JSON.parse(line))
      .filter((line) => line.level === "warn" && line.role === "user:admin@corp");
    expect(warnings).toHaveLength(1);
    expect(warnings[0].msg).toContain("lists no identities");
  });

});

describe("dev config", () => {
  test.each([
    ["a subject without namespace", { identities: { "sa:x": { subjects: ["frontend"] } } }, "invalid subject"],
    ["a subject with spaces", { identities: { "sa:x": { subjects: ["web: frontend"] } } }, "invalid subject"],
    ["subjects not an array", { identities: { "sa:x": { subjects: "web:frontend" } } }, "subjects"],
    ["a client named constructor", { clients: { constructor: { secret: "s", identity: "sa:x" } } }, 'clients.constructor: the name "constructor" is reserved'],
    ["an identity named __proto__", JSON.parse('{"identities": {"__proto__": {"read": []}}}'), "identities.__proto__"],
    ["an engine named prototype", { engines: { prototype: { plugin: "static", roles: {} } } }, "engines.prototype"],
    ["a role named constructor", { engines: { pg: { plugin: "static", roles: { constructor: {} } } } }, "engines.pg.roles.constructor"],
  ])("dev config rejects %s", (_name, config, message) => {
    expect(() => createDevApp({ config: config as DevServerOptions["config"] })).toThrow(message);
  });
});

describe("oauth token endpoint", () => {
  let server: DevServer;
  const form = (fields: Record<string, string>) => ({
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ grant_type: "client_credentials", ...fields }),
  });

  beforeAll(async () => {
    sensitive.push("ci-client-secret-1", "wrong-client-secret-2");
    server = await start({ config: { clients: { "ci-client": { secret: "ci-client-secret-1", identity: "sa:ci" } } } });
  });

  async function token(init: RequestInit & { headers?: Record<string, string> }, target: DevServer = server): Promise<Reply> {
    const response = await fetch(`${target.url}/oauth/token`, { ...init, signal: AbortSignal.timeout(10_000) });
    const reply = { status: response.status, headers: response.headers, body: await response.json() };
    if (reply.body.access_token) sensitive.push(reply.body.access_token);
    return reply;
  }

  test("token endpoint issues for a configured client", async () => {
    const byForm = await token(form({ client_id: "ci-client", client_secret: "ci-client-secret-1" }));
    const byBasic = await token({ ...form({}), headers: { authorization: `Basic ${btoa("ci-client:ci-client-secret-1")}` } });

    expect(byForm.status).toBe(200);
    expect(byBasic.status).toBe(200);
    expect((await call(server, "GET", "/v1/auth/whoami", { token: byForm.body.access_token })).body.identity_id).toBe("sa:ci");
  });

  test.each(["constructor", "__proto__", "toString", "hasOwnProperty", "valueOf"])("token endpoint rejects client id %s", async (clientId) => {
    const bare = await start();

    for (const target of [server, bare]) {
      const reply = await token(form({ client_id: clientId }), target);
      expect(reply.status).toBe(401);
      expect(reply.body.error).toBe("invalid_client");
      expect(reply.body.access_token).toBeUndefined();
    }
  });

  test.each([
    ["bad percent-encoding", btoa("%zz:x")],
    ["bad percent-encoding in the secret", btoa("ci-client:%E0%A4%A")],
    ["no colon", btoa("ci-client")],
    ["not base64", "!!!not-base64!!!"],
    ["invalid UTF-8", Buffer.from([0xff, 0xfe, 0x3a, 0x41]).toString("base64")],
    ["empty", ""],
  ])("token endpoint rejects a malformed Basic header: %s", async (_name, encoded) => {
    const reply = await token({ ...form({}), headers: { authorization: `Basic ${encoded}` } });

    expect(reply.status).toBe(401);
    expect(reply.body.error).toBe("invalid_client");
    expect(reply.headers.get("www-authenticate")).toStartWith("Basic");
    expect(reply.headers.get("x-request-id")).toMatch(/^req_/);
  });

  test("token endpoint logs the id of a rejected client", async () => {
    const before = logLines.length;
    const reply = await token(form({ client_id: "ci-client", client_secret: "wrong-client-secret-2" }));
    const lines = logLines.slice(before);
    const rejected = lines.map((line) => JSON.parse(line)).find((line) => line.msg === "client credentials rejected");

    expect(reply.status).toBe(401);
    expect(rejected).toMatchObject({ level: "warn", clientId: "ci-client", reason: "wrong secret" });
    expect(lines.join("\n")).not.toContain("wrong-client-secret-2");
    expect(lines.join("\n")).not.toContain("ci-client-secret-1");
  });
});

describe("prototype keys", () => {
  test("batch returns secrets at prototype paths", async () => {
    const server = await start({ seed: JSON.parse('{"__proto__": {"k": "proto-value"}, "constructor": {"k": "ctor-value"}}') });
    const reply = await call(server, "POST", "/v1/secrets/batch", { body: { paths: ["__proto__", "constructor", "tostring", "hasownproperty"] } });

    expect(reply.status).toBe(200);
    expect(Object.hasOwn(reply.body.secrets, "__proto__")).toBe(true);
    expect(reply.body.secrets["__proto__"].data).toEqual({ k: "proto-value" });
    expect(Object.hasOwn(reply.body.secrets, "constructor")).toBe(true);
    expect(reply.body.errors.tostring.code).toBe("secret_not_found");
    expect(reply.body.errors.hasownproperty.code).toBe("secret_not_found");
  });

  test("batch reports a missing __proto__ path", async () => {
    const reply = await call(main, "POST", "/v1/secrets/batch", { body: { paths: ["__proto__"] } });

    expect(Object.keys(reply.body.secrets)).toEqual([]);
    expect(Object.hasOwn(reply.body.errors, "__proto__")).toBe(true);
    expect(reply.body.errors["__proto__"].code).toBe("secret_not_found");
  });

  test("secret at __proto__ reads and writes", async () => {
    const server = await start();
    const written = await call(server, "PUT", "/v1/secrets/__proto__", { body: '{"data": {"__proto__": "field-value", "constructor": "c"}}' });
    const read = await call(server, "GET", "/v1/secrets/__proto__");

    expect(written.status).toBe(200);
    expect(read.body.path).toBe("__proto__");
    expect(Object.hasOwn(read.body.data, "__proto__")).toBe(true);
    expect(read.body.data["__proto__"]).toBe("field-value");
    expect(read.body.data.constructor).toBe("c");
  });
});

describe("request guards", () => {
  test("secret get accepts any safe version", async () => {
    for (const version of ["1000000000", "9007199254740991"]) {
      const reply = await call(main, "GET", `/v1/secrets/apps/billing/db?version=${version}`);
      expectError(reply, 404, "version_not_found");
      expect(reply.body.error.details.version).toBe(Number(version));
    }
    for (const version of ["9007199254740992", "0", "01", "-1", "1.5", "1e3", ""]) {
      expectError(await call(main, "GET", `/v1/secrets/apps/billing/db?version=${version}`), 400, "invalid_request");
    }
  });

  test("secret path rejects percent-encoding", async () => {
    const server = await start({ seed: { "nasty/env": { k: "v" }, "apps/billing/db": { k: "v" } } });

    for (const path of ["nasty%2Fenv", "nasty%2fenv", "apps%2Fbilling%2Fdb", "%61pps/billing/db", "apps/billing/d%62", "nasty%252Fenv"]) {
      const reply = await call(server, "GET", `/v1/secrets/${path}`);
      expectError(reply, 400, "invalid_path");
    }
    expectError(await put(server, "other%2Fpath", { k: "v" }), 400, "invalid_path");
    expectError(await call(server, "DELETE", "/v1/secrets/nasty%2Fenv"), 400, "invalid_path");
    expectError(await call(server, "POST", "/v1/secrets/nasty%2Fenv/rotate"), 400, "invalid_path");
    expect(server.state.secrets.paths()).toEqual(["apps/billing/db", "nasty/env"]);
    expect((await call(server, "GET", "/v1/secrets/nasty/env")).body.version).toBe(1);
  });

  test("other routes reject percent-encoding", async () => {
    const server = await start();

    for (const path of ["/v1/dev%2Fstats", "/v1/%64ev/stats", "/v1/auth/who%61mi", "/v1/subscriptions/sub%5Fx/poll", "/v1/dynamic/engines/a%2Fb/creds/r"]) {
      expectError(await call(server, "GET", path), 400, "invalid_path");
    }
    expectError(await call(server, "POST", "/v1/dynamic/engines/a%2Fb/creds/r"), 400, "invalid_path");

    await call(server, "POST", "/v1/dev/faults", { body: { path_prefix: "/v1/nowhere", status: 503 } });
    expectError(await call(server, "DELETE", "/v1/%64ev/faults"), 400, "invalid_path");
    expect((await call(server, "GET", "/v1/dev/faults")).body.faults).toHaveLength(1);
  });

  test("exchange answers a 120 MB Content-Length at once", async () => {
    const reply = await rawRequest(main, "POST", "/v1/auth/exchange", { contentLength: 120_000_000, bytes: 1024 });

    expectError(reply, 413, "invalid_request");
    expect(reply.body.error.details.max_bytes).toBe(4 * 1024 * 1024);
    expect(reply.sentBytes).toBe(1024);
  }, 30_000);

  test("secret put answers a 200 MB Content-Length", async () => {
    const reply = await rawRequest(main, "PUT", "/v1/secrets/apps/huge/body", { contentLength: 200_000_000, bytes: 1024, token: main.rootToken });

    expectError(reply, 413, "invalid_request");
    expect(reply.body.error.details.max_bytes).toBe(16 * 1024 * 1024);
  }, 30_000);

  test("exchange stops reading a chunked body", async () => {
    const reply = await rawRequest(main, "POST", "/v1/auth/exchange", { chunked: true, bytes: 48 * 1024 * 1024 });

    expectError(reply, 413, "invalid_request");
    expect(reply.sentBytes).toBeLessThan(48 * 1024 * 1024);
  }, 30_000);

  test("body limits differ per route", async () => {
    const server = await start();
    const fiveMiB = JSON.stringify({ data: { blob: "x".repeat(5 * 1024 * 1024) } });
    const seventeenMiB = JSON.stringify({ data: { blob: "x".repeat(17 * 1024 * 1024) } });

    expect((await call(server, "PUT", "/v1/secrets/apps/five", { body: fiveMiB })).status).toBe(200);
    expectError(await call(server, "PUT", "/v1/secrets/apps/seventeen", { body: seventeenMiB }), 413, "invalid_request");
    expectError(await call(server, "POST", "/v1/auth/exchange", { token: null, body: fiveMiB }), 413, "invalid_request");
    expectError(await call(server, "POST", "/v1/secrets/batch", { body: seventeenMiB }), 413, "invalid_request");
    const oauth = await fetch(`${server.url}/oauth/token`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: `grant_type=client_credentials&client_id=${"x".repeat(5 * 1024 * 1024)}`,
      signal: AbortSignal.timeout(10_000),
    });
    expect(oauth.status).toBe(413);
    expect(((await oauth.json()) as any).error.request_id).toBe(oauth.headers.get("x-request-id")!);
    expect(server.state.secrets.paths()).toEqual(["apps/five"]);
  }, 30_000);

  test("oversized body without a token gets 401", async () => {
    const reply = await rawRequest(main, "PUT", "/v1/secrets/apps/huge/body", { contentLength: 200_000_000, bytes: 1024 });
    expectError(reply, 401, "authentication_required");
  }, 30_000);

  test("poll rejects non-decimal bounds", async () => {
    const created = await call(main, "POST", "/v1/subscriptions", { body: { paths: ["bounds/**"] } });
    const id = created.body.id;

    for (const query of ["timeout=1e3", "timeout=0x10", "timeout=Infinity", "timeout=-1", "timeout=1.5", "timeout=%205", "max_events=0", "max_events=1e2"]) {
      const reply = await call(main, "GET", `/v1/subscriptions/${id}/poll?${query}`);
      expectError(reply, 400, "invalid_request");
    }
    await put(main, "bounds/one", { k: "v" });
    await put(main, "bounds/two", { k: "v" });
    const huge = await call(main, "GET", `/v1/subscriptions/${id}/poll?timeout=${"9".repeat(30)}&max_events=${"9".repeat(400)}`);
    expect(huge.status).toBe(200);
    expect(huge.body.events).toHaveLength(2);
  }, 30_000);

  test("token store forgets the oldest past its cap", () => {
    const store = new TokenStore({ rootToken: "root-token-cap", ttlSeconds: 60, now: Date.now, maxTokens: 2 });
    const [first, second, third] = [store.issue("sa:a", "service_account"), store.issue("sa:b", "service_account"), store.issue("sa:c", "service_account")];

    expect(() => store.resolve(first.token)).toThrow("not known");
    expect(store.resolve(second.token).id).toBe("sa:b");
    expect(store.resolve(third.token).id).toBe("sa:c");
    expect(store.activeCount).toBe(2);
  });
});

describe("dev command", () => {
  function startCli(args: string[], env: Record<string, string | undefined> = {}) {
    const child = spawnCli(["dev", "--port", "0", ...args], env);
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (chunk) => (stdout += chunk));
    child.stderr!.on("data", (chunk) => (stderr += chunk));
    const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    exited.finally(() => clearTimeout(timer));

    async function waitForUrl(): Promise<string> {
      const deadline = Date.now() + 20_000;
      while (Date.now() < deadline) {
        const match = /ScaiVault dev server listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(stdout);
        if (match) return match[1]!;
        await sleep(50);
      }
      throw new Error(`dev command printed no URL; stderr: ${stderr}`);
    }
    return { child, exited, waitForUrl, output: () => ({ stdout, stderr }) };
  }

  test("dev command serves until SIGTERM", async () => {
    const seedFile = join(scratch, "seed.json");
    writeFileSync(seedFile, JSON.stringify({ "apps/cli/db": { password: "cli-seed-password" } }));
    const cli = startCli(["--seed", seedFile, "--token-ttl", "30s"]);

    const url = await cli.waitForUrl();
    const token = /^Root token: (\S+)$/m.exec(cli.output().stdout)?.[1];
    sensitive.push(token ?? "");
    const secret = await fetch(`${url}/v1/secrets/apps/cli/db`, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(5000) });
    cli.child.kill("SIGTERM");

    expect(token).toMatch(/^svt_/);
    expect(((await secret.json()) as { data: unknown }).data).toEqual({ password: "cli-seed-password" });
    expect(await cli.exited).toBe(0);
    expect(cli.output().stdout.trim().split("\n")).toHaveLength(2);
    expect(cli.output().stderr).toContain("not for production");
    expect(cli.output().stderr).toContain("DOES NOT VERIFY JWT SIGNATURES");
    expect(cli.output().stderr).not.toContain(token!);
    expect(cli.output().stderr).not.toContain("cli-seed-password");
  });

  test("dev command reads the root token env", async () => {
    const cli = startCli([], { SCAIVAULT_DEV_ROOT_TOKEN: "env-root-token-123" });

    const url = await cli.waitForUrl();
    const whoami = await fetch(`${url}/v1/auth/whoami`, { headers: { authorization: "Bearer env-root-token-123" }, signal: AbortSignal.timeout(5000) });
    cli.child.kill("SIGINT");

    expect(whoami.status).toBe(200);
    expect(await cli.exited).toBe(0);
    expect(cli.output().stdout).not.toContain("Root token");
  });

  test("dev command rejects an invalid seed", async () => {
    const seedFile = join(scratch, "bad-seed.json");
    writeFileSync(seedFile, JSON.stringify({ "Bad/Path": { password: "hidden-value" }, "ok/path": "not-an-object" }));
    const cli = startCli(["--seed", seedFile]);

    expect(await cli.exited).toBe(2);
    expect(cli.output().stderr).toContain('\\"Bad/Path\\"');
    expect(cli.output().stderr).toContain('\\"ok/path\\"');
    expect(cli.output().stderr).not.toContain("hidden-value");
  });
});

describe("logs", () => {
  test("logs contain no token or secret value", () => {
    const text = logLines.join("\n");
    const values = ["seed-password-123", "old-password-1", "v2-key", ...sensitive.filter((value) => value.length >= 8)];

    expect(logLines.length).toBeGreaterThan(50);
    for (const value of values) expect(text).not.toContain(value);
  });
});

function encodeBody(body: unknown): string | undefined {
  if (body === undefined) return undefined;
  if (typeof body === "string") return body;
  return JSON.stringify(body);
}
