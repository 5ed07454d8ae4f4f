/**
 * `init` token sources and TLS end to end: client credentials against the dev server's stand-in
 * for ScaiKey's token endpoint, the fallback from a refused exchange, and a private CA bundle.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDevServer, type DevServer } from "../src/dev/server.ts";
import { GUIDE_SECRETS, GUIDE_SEED, projectedToken } from "../src/dev/guide.ts";
import { EXIT_CODES } from "../src/errors.ts";
import { configureLogging } from "../src/log.ts";
import { logLines, runCli, type CliResult } from "./helpers/cli.ts";
import { makeCertificates, type TestCertificates } from "./helpers/tls.ts";

const CLIENT_SECRET = "dev-client-secret-Qm9vZ1x";
let server: DevServer;
let tlsServer: DevServer;
let certificates: TestCertificates;
let scratch: string;
let caseNumber = 0;
const outputs: string[] = [];

beforeAll(async () => {
  configureLogging({ level: "silent" });
  const config = { clients: { "billing-ci": { secret: CLIENT_SECRET, identity: "sa:billing-ci" } } };
  server = await startDevServer({ port: 0, seed: GUIDE_SEED, config });
  certificates = makeCertificates();
  tlsServer = await startDevServer({ port: 0, seed: GUIDE_SEED, tls: { cert: certificates.cert, key: certificates.key } });
  scratch = mkdtempSync(join(tmpdir(), "init-auth-"));
});

afterAll(async () => {
  await server?.stop();
  await tlsServer?.stop();
  rmSync(scratch, { recursive: true, force: true });
  rmSync(certificates.dir, { recursive: true, force: true });
});

async function init(env: Record<string, string | undefined>): Promise<{ result: CliResult; files: string[] }> {
  const prefix = join(scratch, `case-${++caseNumber}`);
  mkdirSync(join(prefix, "run/secrets"), { recursive: true });

  const result = await runCli(["init"], { SCAIVAULT_URL: server.url, SECRETS: GUIDE_SECRETS, OUTPUT_PREFIX: prefix, INIT_TIMEOUT: "20s", ...env });
  outputs.push(result.stdout, result.stderr);
  return { result, files: readdirSync(join(prefix, "run/secrets")).sort() };
}

describe("init with client credentials", () => {
  test("init uses client credentials when no token file exists", async () => {
    const { result, files } = await init({
      SCAIKEY_CLIENT_ID: "billing-ci",
      SCAIKEY_CLIENT_SECRET: CLIENT_SECRET,
      SCAIKEY_TOKEN_URL: `${server.url}/oauth/token`,
    });

    expect(result.code).toBe(0);
    expect(files).toEqual(["db.json", "stripe.json"]);
    expect(logLines(result.stderr).some((line) => line.msg === "Obtained token with client credentials")).toBe(true);
  });

  test("init reads the client id and secret from files", async () => {
    writeFileSync(join(scratch, "client-id"), "billing-ci\n");
    writeFileSync(join(scratch, "client-secret"), `${CLIENT_SECRET}\n`);

    const { result, files } = await init({
      SCAIKEY_CLIENT_ID_FILE: join(scratch, "client-id"),
      SCAIKEY_CLIENT_SECRET_FILE: join(scratch, "client-secret"),
      SCAIKEY_TOKEN_URL: `${server.url}/oauth/token`,
    });

    expect(result.code).toBe(0);
    expect(files).toEqual(["db.json", "stripe.json"]);
  });

  test("init falls back to client credentials when the exchange is refused", async () => {
    const expired = join(scratch, "expired-jwt");
    writeFileSync(expired, projectedToken({ lifetimeSeconds: -60 }));

    const { result, files } = await init({
      SCAIVAULT_TOKEN_FILE: expired,
      SCAIKEY_CLIENT_ID: "billing-ci",
      SCAIKEY_CLIENT_SECRET: CLIENT_SECRET,
      SCAIKEY_TOKEN_URL: `${server.url}/oauth/token`,
    });
    const fallback = logLines(result.stderr).find((line) => line.msg === "Token source failed, trying the next one");

    expect(result.code).toBe(0);
    expect(fallback?.source).toBe("exchange");
    expect(files).toEqual(["db.json", "stripe.json"]);
  });

  test("init fails with the auth code for a wrong client secret", async () => {
    const { result, files } = await init({
      SCAIKEY_CLIENT_ID: "billing-ci",
      SCAIKEY_CLIENT_SECRET: "wrong-secret-value-77",
      SCAIKEY_TOKEN_URL: `${server.url}/oauth/token`,
    });

    expect(result.code).toBe(EXIT_CODES.auth);
    expect(result.stderr).toContain('rejected client \\"billing-ci\\": 401');
    expect(files).toEqual([]);
  });

  test("init names the settings when no token source is configured", async () => {
    const { result } = await init({ SCAIVAULT_TOKEN_FILE: join(scratch, "nothing-here") });

    expect(result.code).toBe(EXIT_CODES.auth);
    expect(result.stderr).toContain("Mount the file or set SCAIVAULT_TOKEN_FILE to its path");
  });
});

describe("init over HTTPS", () => {
  test("init trusts a private CA from SCAIVAULT_CA_FILE", async () => {
    writeFileSync(join(scratch, "jwt"), projectedToken());

    const { result, files } = await init({ SCAIVAULT_URL: tlsServer.url, SCAIVAULT_TOKEN_FILE: join(scratch, "jwt"), SCAIVAULT_CA_FILE: certificates.caFile });

    expect(tlsServer.url.startsWith("https://")).toBe(true);
    expect(result.code).toBe(0);
    expect(files).toEqual(["db.json", "stripe.json"]);
  });

  test("init rejects a server certificate from an unknown CA", async () => {
    writeFileSync(join(scratch, "jwt"), projectedToken());

    const { result, files } = await init({ SCAIVAULT_URL: tlsServer.url, SCAIVAULT_TOKEN_FILE: join(scratch, "jwt"), RETRY_MAX_ATTEMPTS: "2" });

    expect(result.code).toBe(EXIT_CODES.unreachable);
    expect(result.stderr).toContain("set SCAIVAULT_CA_FILE to its PEM bundle");
    expect(files).toEqual([]);
  });

  test("init rejects an unreadable CA file as configuration", async () => {
    const { result } = await init({ SCAIVAULT_URL: tlsServer.url, SCAIVAULT_CA_FILE: join(scratch, "no-ca.pem") });

    expect(result.code).toBe(EXIT_CODES.config);
    expect(result.stderr).toContain("Cannot read SCAIVAULT_CA_FILE");
  });
});

test("init auth output holds no client secret or token", () => {
  const everything = outputs.join("\n");
  expect(everything.includes(CLIENT_SECRET)).toBe(false);
  expect(everything.includes(server.rootToken)).toBe(false);
  expect(everything.includes("svt_")).toBe(false);
});
