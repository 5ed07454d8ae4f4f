/**
 * `init` end to end: the real CLI as a child process against the real dev server on 127.0.0.1,
 * writing real files. Every run's output is kept for the final scan for secret values and tokens.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDevServer, type DevServer } from "../src/dev/server.ts";
import { EXIT_CODES } from "../src/errors.ts";
import { configureLogging } from "../src/log.ts";
import { logLines, runCli, spawnCli, type CliResult } from "./helpers/cli.ts";
import { makeJwt } from "./helpers/jwt.ts";

const DATABASE = "environments/production/billing/database";
const STRIPE = "environments/production/billing/stripe";
const DENIED = "environments/production/payroll/database";

/** The guide's SECRETS value, byte for byte as a YAML block scalar delivers it. */
const GUIDE_SECRETS =
  "environments/production/billing/database -> /run/secrets/db.json\n" +
  "environments/production/billing/stripe   -> /run/secrets/stripe.json\n";

const BIG_VALUE = "0123456789abcdef".repeat(64 * 1024);
const BINARY = Buffer.from(Array.from({ length: 512 }, (_, index) => (index * 7) % 256));

const SEED: Record<string, Record<string, unknown>> = {
  [DATABASE]: { username: "billing", password: "db-Pa55w0rd-q7Xz", host: "db.billing", port: 5432 },
  [STRIPE]: { secret_key: "sk_live_Str1peKey'with\"quotes\nand lines", publishable_key: "pk_live_Pub11shable" },
  "environments/production/billing/unicode": { text: "pässwörd-密码-🔑-Unic0deVal" },
  "environments/production/billing/big": { blob: BIG_VALUE },
  "environments/production/billing/binary": { blob: BINARY.toString("base64") },
  [DENIED]: { password: "payroll-Den1ed-Secret" },
};

/** Every string that must never appear in output: secret values, tokens, the JWTs. */
const SENSITIVE: string[] = [];
const outputs: string[] = [];

let server: DevServer;
let scratch: string;
let jwtFile: string;
let caseNumber = 0;

beforeAll(async () => {
  configureLogging({ level: "warn" });
  server = await startDevServer({
    port: 0,
    seed: SEED,
    config: { identities: { "sa:billing": { read: ["environments/production/billing/**"], write: [] } } },
  });
  scratch = mkdtempSync(join(tmpdir(), "init-e2e-"));
  jwtFile = join(scratch, "token");

  const jwt = projectedToken({});
  writeFileSync(jwtFile, jwt);
  SENSITIVE.push(jwt, server.rootToken, ...collectStrings(SEED).filter((value) => value.length >= 8));
});

afterAll(async () => {
  await server?.stop();
  rmSync(scratch, { recursive: true, force: true });
});

function projectedToken(overrides: Record<string, unknown>): string {
  const now = Math.floor(Date.now() / 1000);
  return makeJwt({
    iss: "https://kubernetes.default.svc",
    sub: "system:serviceaccount:billing:billing",
    aud: ["scaivault"],
    iat: now,
    exp: now + 3600,
    ...overrides,
  });
}

function collectStrings(value: unknown): string[] {
  if (typeof value === "string") return [value];
  if (value && typeof value === "object") return Object.values(value).flatMap(collectStrings);
  return [];
}

/** Returns a fresh output prefix, so that `/run/secrets/...` lands in a temp dir. */
function freshPrefix(): string {
  const prefix = join(scratch, `case-${++caseNumber}`);
  mkdirSync(join(prefix, "run/secrets"), { recursive: true });
  return prefix;
}

async function init(env: Record<string, string | undefined>, timeoutMs = 60_000): Promise<CliResult> {
  const result = await runCli(["init"], { SCAIVAULT_URL: server.url, SCAIVAULT_TOKEN_FILE: jwtFile, ...env }, timeoutMs);
  outputs.push(result.stdout, result.stderr);
  return result;
}

async function addFault(fault: Record<string, unknown>): Promise<void> {
  const response = await fetch(`${server.url}/v1/dev/faults`, {
    method: "POST",
    headers: { authorization: `Bearer ${server.rootToken}`, "content-type": "application/json" },
    body: JSON.stringify(fault),
  });
  expect(response.status).toBeLessThan(300);
}

async function clearFaults(): Promise<void> {
  await fetch(`${server.url}/v1/dev/faults`, { method: "DELETE", headers: { authorization: `Bearer ${server.rootToken}` } });
}

async function stats(): Promise<Record<string, number>> {
  const response = await fetch(`${server.url}/v1/dev/stats`, { headers: { authorization: `Bearer ${server.rootToken}` } });
  const body = (await response.json()) as { requests: Record<string, number> };
  return body.requests;
}

function filesIn(prefix: string): string[] {
  return readdirSync(join(prefix, "run/secrets")).sort();
}

describe("init with the guide's values", () => {
  test("init writes db.json and stripe.json with each secret's data", async () => {
    const prefix = freshPrefix();

    const result = await init({ SECRETS: GUIDE_SECRETS, OUTPUT_PREFIX: prefix });

    expect(result.code).toBe(0);
    expect(JSON.parse(readFileSync(join(prefix, "run/secrets/db.json"), "utf8"))).toEqual(SEED[DATABASE]);
    expect(JSON.parse(readFileSync(join(prefix, "run/secrets/stripe.json"), "utf8"))).toEqual(SEED[STRIPE]);
    expect(filesIn(prefix)).toEqual(["db.json", "stripe.json"]);
  });

  test("init reads both secrets with one batch request and one exchange", async () => {
    const before = await stats();
    const prefix = freshPrefix();

    const result = await init({ SECRETS: GUIDE_SECRETS, OUTPUT_PREFIX: prefix });
    const after = await stats();

    expect(result.code).toBe(0);
    expect((after["POST /v1/secrets/batch"] ?? 0) - (before["POST /v1/secrets/batch"] ?? 0)).toBe(1);
    expect((after["POST /v1/auth/exchange"] ?? 0) - (before["POST /v1/auth/exchange"] ?? 0)).toBe(1);
  });

  test("init leaves files it finds current untouched", async () => {
    const prefix = freshPrefix();
    await init({ SECRETS: GUIDE_SECRETS, OUTPUT_PREFIX: prefix });
    const before = statSync(join(prefix, "run/secrets/db.json"));

    const result = await init({ SECRETS: GUIDE_SECRETS, OUTPUT_PREFIX: prefix });

    expect(result.code).toBe(0);
    expect(statSync(join(prefix, "run/secrets/db.json")).ino).toBe(before.ino);
    expect(logLines(result.stderr).some((line) => line.msg === "File already current")).toBe(true);
  });
});

describe("init file options", () => {
  test("init writes a field raw, env format and modes", async () => {
    const prefix = freshPrefix();
    const secrets = [
      `${STRIPE}#secret_key -> /run/secrets/stripe.key mode=0400`,
      `${DATABASE} -> /run/secrets/db.env format=env mode=0640`,
      `${DATABASE}#port -> /run/secrets/port`,
    ].join("\n");

    const result = await init({ SECRETS: secrets, OUTPUT_PREFIX: prefix, FILE_MODE: "0600" });

    expect(result.code).toBe(0);
    expect(readFileSync(join(prefix, "run/secrets/stripe.key"), "utf8")).toBe(SEED[STRIPE]!.secret_key as string);
    expect(statSync(join(prefix, "run/secrets/stripe.key")).mode & 0o777).toBe(0o400);
    expect(readFileSync(join(prefix, "run/secrets/db.env"), "utf8")).toContain("USERNAME='billing'\n");
    expect(statSync(join(prefix, "run/secrets/db.env")).mode & 0o777).toBe(0o640);
    expect(readFileSync(join(prefix, "run/secrets/port"), "utf8")).toBe("5432");
    expect(statSync(join(prefix, "run/secrets/port")).mode & 0o777).toBe(0o600);
  });

  test("init writes 1 MiB, non-ASCII and binary values byte-exact", async () => {
    const prefix = freshPrefix();
    const secrets = [
      "environments/production/billing/big#blob -> big.txt",
      "environments/production/billing/unicode#text -> unicode.txt",
      "environments/production/billing/binary#blob -> binary.bin encoding=base64",
    ].join("\n");

    const result = await init({ SECRETS: secrets, OUTPUT_DIRS: join(prefix, "run/secrets") });

    expect(result.code).toBe(0);
    expect(readFileSync(join(prefix, "run/secrets/big.txt"), "utf8")).toBe(BIG_VALUE);
    expect(readFileSync(join(prefix, "run/secrets/unicode.txt")).equals(Buffer.from(SEED["environments/production/billing/unicode"]!.text as string))).toBe(true);
    expect(readFileSync(join(prefix, "run/secrets/binary.bin")).equals(BINARY)).toBe(true);
  });

  test("init fails on a missing field and names it", async () => {
    const prefix = freshPrefix();

    const result = await init({ SECRETS: `${STRIPE}#nope -> s.key`, OUTPUT_DIRS: join(prefix, "run/secrets") });

    expect(result.code).toBe(EXIT_CODES.not_found);
    expect(result.stderr).toContain('field \\"nope\\" not found; the secret has the fields: publishable_key, secret_key');
    expect(filesIn(prefix)).toEqual([]);
  });
});

describe("init configuration errors", () => {
  test.each([
    ["a line without an arrow", "environments/a /run/secrets/a.json", "SECRETS line 1: expected"],
    ["a path outside the character set", "Environments/Prod -> /run/secrets/a.json", 'invalid secret path \\"Environments/Prod\\"'],
    ["a file outside the output root", "environments/a -> /etc/cron.d/evil", 'Target file \\"/etc/cron.d/evil\\" is outside the output directories'],
    ["two lines writing one file", "a/b -> /run/secrets/x\nc/d -> /run/secrets/x", "SECRETS line 2:"],
    ["two spellings of one file", "a/b -> /run/secrets/x\nc/d -> /run/secrets/./x\ne/f -> x\ng/h -> /run//secrets/x", "SECRETS line 4: \\\"/run//secrets/x\\\" is the same file as line 1"],
    ["an unknown option", "a/b -> /run/secrets/x owner=root", 'unknown option \\"owner\\"'],
  ])("init rejects %s with the config exit code", async (_name, secrets, message) => {
    const prefix = freshPrefix();

    const result = await init({ SECRETS: secrets, OUTPUT_PREFIX: prefix });

    expect(result.code).toBe(EXIT_CODES.config);
    expect(result.stderr).toContain(message);
    expect(filesIn(prefix)).toEqual([]);
  });

  test("init rejects a missing SCAIVAULT_URL", async () => {
    const result = await runCli(["init"], { SECRETS: GUIDE_SECRETS, SCAIVAULT_TOKEN_FILE: jwtFile });
    outputs.push(result.stderr);

    expect(result.code).toBe(EXIT_CODES.config);
    expect(result.stderr).toContain("SCAIVAULT_URL is not set");
  });

  test("init rejects an invalid INIT_TIMEOUT", async () => {
    const result = await init({ SECRETS: GUIDE_SECRETS, INIT_TIMEOUT: "soon" });

    expect(result.code).toBe(EXIT_CODES.config);
    expect(result.stderr).toContain('Invalid duration for INIT_TIMEOUT: \\"soon\\"');
  });
});

describe("init failures", () => {
  test("init fails with the auth code when the token file is missing", async () => {
    const prefix = freshPrefix();

    const result = await init({ SECRETS: GUIDE_SECRETS, OUTPUT_PREFIX: prefix, SCAIVAULT_TOKEN_FILE: join(scratch, "absent") });

    expect(result.code).toBe(EXIT_CODES.auth);
    expect(result.stderr).toContain("Cannot read SCAIVAULT_TOKEN_FILE");
    expect(result.stderr).toContain("ENOENT");
    expect(filesIn(prefix)).toEqual([]);
  });

  test("init fails with the auth code when the token file is unreadable", async () => {
    const file = join(scratch, "unreadable");
    mkdirSync(file);
    const prefix = freshPrefix();

    const result = await init({ SECRETS: GUIDE_SECRETS, OUTPUT_PREFIX: prefix, SCAIVAULT_TOKEN_FILE: file });

    expect(result.code).toBe(EXIT_CODES.auth);
    expect(result.stderr).toContain("EISDIR");
  });

  test.each([
    ["an expired JWT", { exp: Math.floor(Date.now() / 1000) - 60 }],
    ["a JWT for another audience", { aud: ["kubernetes"] }],
  ])("init fails with the auth code for %s", async (_name, claims) => {
    const exchangesBefore = (await stats())["POST /v1/auth/exchange"] ?? 0;
    const file = join(scratch, `jwt-${++caseNumber}`);
    const jwt = projectedToken(claims);
    SENSITIVE.push(jwt);
    writeFileSync(file, jwt);
    const prefix = freshPrefix();

    const result = await init({ SECRETS: GUIDE_SECRETS, OUTPUT_PREFIX: prefix, SCAIVAULT_TOKEN_FILE: file });

    expect(result.code).toBe(EXIT_CODES.auth);
    expect(result.stderr).toContain("token_invalid");
    expect(filesIn(prefix)).toEqual([]);
    expect((await stats())["POST /v1/auth/exchange"]).toBe(exchangesBefore + 1);
  });

  test("init writes nothing when one of several secrets is denied", async () => {
    const prefix = freshPrefix();

    const result = await init({ SECRETS: `${GUIDE_SECRETS}${DENIED} -> /run/secrets/payroll.json\n`, OUTPUT_PREFIX: prefix });

    expect(result.code).toBe(EXIT_CODES.forbidden);
    expect(result.stderr).toContain(`Cannot read secret \\"${DENIED}\\": access_denied`);
    expect(result.stderr).toContain("1 of 3 secrets could not be delivered");
    expect(filesIn(prefix)).toEqual([]);
  });

  test("init fails with the not-found code for an unknown secret", async () => {
    const prefix = freshPrefix();

    const result = await init({ SECRETS: "environments/production/billing/nothing -> /run/secrets/x.json", OUTPUT_PREFIX: prefix });

    expect(result.code).toBe(EXIT_CODES.not_found);
    expect(result.stderr).toContain('Cannot read secret \\"environments/production/billing/nothing\\": secret_not_found');
  });

  test("init exits with the unreachable code within the deadline when nothing listens", async () => {
    const port = await freePort();
    const prefix = freshPrefix();

    const result = await init({ SECRETS: GUIDE_SECRETS, OUTPUT_PREFIX: prefix, SCAIVAULT_URL: `http://127.0.0.1:${port}`, INIT_TIMEOUT: "3s" }, 30_000);

    expect(result.code).toBe(EXIT_CODES.unreachable);
    expect(result.signal).toBeNull();
    expect(result.stderr).toContain("ECONNREFUSED");
    expect(filesIn(prefix)).toEqual([]);
  });

  test("init stops at INIT_TIMEOUT when the server hangs", async () => {
    await addFault({ path_prefix: "/v1/secrets/batch", status: 503, code: "service_unavailable", count: 1, delay_ms: 30_000 });
    const prefix = freshPrefix();

    try {
      const result = await init({ SECRETS: GUIDE_SECRETS, OUTPUT_PREFIX: prefix, INIT_TIMEOUT: "2s" }, 30_000);

      expect(result.code).toBe(EXIT_CODES.timeout);
      expect(result.stderr).toContain("Init did not finish within INIT_TIMEOUT");
    } finally {
      await clearFaults();
    }
  });

  test("init stopped by SIGTERM exits 143 and writes nothing", async () => {
    await addFault({ path_prefix: "/v1/secrets/batch", status: 503, code: "service_unavailable", count: 1, delay_ms: 30_000 });
    const prefix = freshPrefix();

    try {
      const child = spawnCli(["init"], { SCAIVAULT_URL: server.url, SCAIVAULT_TOKEN_FILE: jwtFile, SECRETS: GUIDE_SECRETS, OUTPUT_PREFIX: prefix });
      let stderr = "";
      child.stderr!.on("data", (chunk) => (stderr += chunk));
      await waitFor(() => stderr.includes("Starting init"));
      await Bun.sleep(300);

      child.kill("SIGTERM");
      const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
      outputs.push(stderr);

      expect(code).toBe(143);
      expect(filesIn(prefix)).toEqual([]);
    } finally {
      await clearFaults();
    }
  });

  test("init never replaces a good file after a failure", async () => {
    const prefix = freshPrefix();
    await init({ SECRETS: GUIDE_SECRETS, OUTPUT_PREFIX: prefix });
    const good = readFileSync(join(prefix, "run/secrets/db.json"));

    const result = await init({ SECRETS: `${DATABASE}#missing -> /run/secrets/db.json`, OUTPUT_PREFIX: prefix });

    expect(result.code).toBe(EXIT_CODES.not_found);
    expect(readFileSync(join(prefix, "run/secrets/db.json")).equals(good)).toBe(true);
  });
});

describe("init retries", () => {
  test("init honours Retry-After on 429", async () => {
    await addFault({ path_prefix: "/v1/secrets/batch", status: 429, code: "rate_limited", count: 1, retry_after: 2 });
    const prefix = freshPrefix();

    try {
      const result = await init({ SECRETS: GUIDE_SECRETS, OUTPUT_PREFIX: prefix });
      const retry = logLines(result.stderr).find((line) => line.msg === "Request failed, retrying");

      expect(result.code).toBe(0);
      expect(retry?.delayMs).toBe(2000);
      expect(filesIn(prefix)).toEqual(["db.json", "stripe.json"]);
    } finally {
      await clearFaults();
    }
  });

  test("init succeeds after 503 twice", async () => {
    await addFault({ path_prefix: "/v1/secrets/batch", status: 503, code: "service_unavailable", count: 2 });
    const prefix = freshPrefix();

    try {
      const result = await init({ SECRETS: GUIDE_SECRETS, OUTPUT_PREFIX: prefix });

      expect(result.code).toBe(0);
      expect(logLines(result.stderr).filter((line) => line.msg === "Request failed, retrying")).toHaveLength(2);
      expect(filesIn(prefix)).toEqual(["db.json", "stripe.json"]);
    } finally {
      await clearFaults();
    }
  });

  test("init does not retry access_denied", async () => {
    const prefix = freshPrefix();
    const result = await init({ SECRETS: `${DENIED} -> /run/secrets/p.json`, OUTPUT_PREFIX: prefix });

    expect(result.code).toBe(EXIT_CODES.forbidden);
    expect(logLines(result.stderr).filter((line) => line.msg === "Request failed, retrying")).toHaveLength(0);
  });

  test("init falls back to single reads when the server has no batch endpoint", async () => {
    await addFault({ method: "POST", path_prefix: "/v1/secrets/batch", status: 404, code: "not_found", count: 1 });
    const before = await stats();
    const prefix = freshPrefix();

    try {
      const result = await init({ SECRETS: GUIDE_SECRETS, OUTPUT_PREFIX: prefix });
      const after = await stats();

      expect(result.code).toBe(0);
      expect(filesIn(prefix)).toEqual(["db.json", "stripe.json"]);
      expect((after["GET /v1/secrets/{path}"] ?? 0) - (before["GET /v1/secrets/{path}"] ?? 0)).toBe(2);
    } finally {
      await clearFaults();
    }
  });
});

describe("init with FAIL_OPEN", () => {
  const cases: Array<[string, () => Promise<Record<string, string>>]> = [
    ["a missing token file", async () => ({ SCAIVAULT_TOKEN_FILE: join(scratch, "absent") })],
    ["a denied secret", async () => ({ SECRETS: `${DENIED} -> /run/secrets/p.json` })],
    ["an unknown secret", async () => ({ SECRETS: "environments/none -> /run/secrets/n.json" })],
    ["an unreachable server", async () => ({ SCAIVAULT_URL: `http://127.0.0.1:${await freePort()}`, INIT_TIMEOUT: "2s" })],
    ["an expired JWT", async () => {
      const file = join(scratch, `expired-${++caseNumber}`);
      const jwt = projectedToken({ exp: Math.floor(Date.now() / 1000) - 5 });
      SENSITIVE.push(jwt);
      writeFileSync(file, jwt);
      return { SCAIVAULT_TOKEN_FILE: file };
    }],
  ];

  test.each(cases)("init exits 0 and names what it skipped for %s", async (_name, makeEnv) => {
    const prefix = freshPrefix();
    const env = { SECRETS: GUIDE_SECRETS, OUTPUT_PREFIX: prefix, FAIL_OPEN: "true", ...(await makeEnv()) };

    const result = await init(env, 30_000);
    const warning = logLines(result.stderr).find((line) => line.level === "warn" && String(line.msg).startsWith("FAIL_OPEN"));

    expect(result.code).toBe(0);
    expect(warning).toBeDefined();
    expect(JSON.stringify(warning?.skipped)).toContain("-> ");
  });

  test("init with FAIL_OPEN writes the secrets it could read", async () => {
    const prefix = freshPrefix();

    const result = await init({ SECRETS: `${GUIDE_SECRETS}${DENIED} -> /run/secrets/p.json`, OUTPUT_PREFIX: prefix, FAIL_OPEN: "true" });

    expect(result.code).toBe(0);
    expect(filesIn(prefix)).toEqual(["db.json", "stripe.json"]);
  });

  test("init --fail-open flag works like FAIL_OPEN=true", async () => {
    const prefix = freshPrefix();
    const result = await runCli(["init", "--fail-open", "--output-prefix", prefix], {
      SCAIVAULT_URL: server.url,
      SCAIVAULT_TOKEN_FILE: jwtFile,
      SECRETS: "environments/none -> /run/secrets/n.json",
    });
    outputs.push(result.stderr);

    expect(result.code).toBe(0);
    expect(result.stderr).toContain("FAIL_OPEN is set");
  });

  test("init flags win over environment variables", async () => {
    const prefix = freshPrefix();
    const result = await runCli(["init", "--secrets", `${DATABASE} -> /run/secrets/flag.json`, "--output-prefix", prefix], {
      SCAIVAULT_URL: server.url,
      SCAIVAULT_TOKEN_FILE: jwtFile,
      SECRETS: "environments/none -> /run/secrets/env.json",
      OUTPUT_PREFIX: join(scratch, "not-used"),
    });
    outputs.push(result.stderr);

    expect(result.code).toBe(0);
    expect(filesIn(prefix)).toEqual(["flag.json"]);
  });

  test("init with FAIL_OPEN still rejects invalid configuration", async () => {
    const result = await init({ SECRETS: "BAD -> x", FAIL_OPEN: "true" });
    expect(result.code).toBe(EXIT_CODES.config);
  });
});

describe("init with a static token", () => {
  test("init reads with SCAIVAULT_TOKEN and no exchange", async () => {
    const before = await stats();
    const prefix = freshPrefix();

    const result = await init({ SECRETS: GUIDE_SECRETS, OUTPUT_PREFIX: prefix, SCAIVAULT_TOKEN: server.rootToken, SCAIVAULT_TOKEN_FILE: undefined });
    const after = await stats();

    expect(result.code).toBe(0);
    expect(after["POST /v1/auth/exchange"] ?? 0).toBe(before["POST /v1/auth/exchange"] ?? 0);
  });
});

describe("init output", () => {
  test("no log line contains a secret value or token", () => {
    const everything = outputs.join("\n");

    expect(outputs.length).toBeGreaterThan(20);
    for (const value of SENSITIVE) {
      expect({ leaked: everything.includes(value), value: value.slice(0, 4) + "…" }).toEqual({ leaked: false, value: value.slice(0, 4) + "…" });
    }
  });
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      probe.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const started = Date.now();
  while (!condition()) {
    if (Date.now() - started > timeoutMs) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
