/**
 * `sync` end to end. The real CLI runs as a child process, reads from the real dev server on
 * 127.0.0.1 and writes through a local HTTPS server that implements the Kubernetes Secret
 * endpoints, with a CA and server certificate made by openssl. The parsing and data-building units
 * run in-process. Every run's output is kept for the final scan for secret values and tokens.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDevServer, type DevServer } from "../src/dev/server.ts";
import { AgentError, EXIT_CODES } from "../src/errors.ts";
import { configureLogging } from "../src/log.ts";
import { parseSyncMapping } from "../src/sync-config.ts";
import { buildSecretData, MAX_CONFLICT_ROUNDS, SOURCES_ANNOTATION } from "../src/sync.ts";
import type { Secret } from "../src/contract.ts";
import { baseEnv, logLines, MOD, runCli, type CliResult } from "./helpers/cli.ts";
import { makeJwt } from "./helpers/jwt.ts";
import { makeCertificates, startFakeKubeApi, type FakeKubeApi, type TestCertificates } from "./helpers/kube-api.ts";

const DATABASE = "environments/production/billing/database";
const STRIPE = "environments/production/billing/stripe";
const CERT = "environments/production/billing/cert";
const DENIED = "environments/production/payroll/database";
const SECRET_KEY = "billing/billing-secrets";

const BINARY = Buffer.from(Array.from({ length: 300 }, (_, index) => (index * 13) % 256));
const SEED: Record<string, Record<string, unknown>> = {
  [DATABASE]: { username: "billing", password: "db-Pa55w0rd-q7Xz", port: 5432 },
  [STRIPE]: { secret_key: "sk_live_Str1peKey-9d8c", publishable_key: "pk_live_Pub11shable-77" },
  [CERT]: { blob: BINARY.toString("base64") },
  [DENIED]: { password: "payroll-Den1ed-Secret" },
};

const MAPPING = [
  `${DATABASE} -> db.json`,
  `${DATABASE}#password -> DB_PASSWORD`,
  `${STRIPE} -> *`,
  `${CERT}#blob -> blob.bin encoding=base64`,
  "",
].join("\n");

const KUBE_TOKEN = "kube-sa-token-Zq81mN4pX0";
const SENSITIVE: string[] = [KUBE_TOKEN];
const outputs: string[] = [];

let server: DevServer;
let kube: FakeKubeApi;
let certs: TestCertificates;
let scratch: string;
let jwtFile: string;
let kubeTokenFile: string;

const HAS_DENO = spawnSync("deno", ["--version"], { stdio: "ignore" }).status === 0;

beforeAll(async () => {
  if (spawnSync("openssl", ["version"], { stdio: "ignore" }).status !== 0) throw new Error("openssl is not installed: the sync tests need it to make certificates");
  configureLogging({ level: "error" });
  scratch = mkdtempSync(join(tmpdir(), "sync-test-"));
  certs = makeCertificates(scratch);
  kube = startFakeKubeApi(certs, KUBE_TOKEN);

  server = await startDevServer({
    port: 0,
    seed: SEED,
    config: { identities: { "sa:billing": { read: ["environments/production/billing/**"], write: [] } } },
  });

  const now = Math.floor(Date.now() / 1000);
  const jwt = makeJwt({ iss: "https://kubernetes.default.svc", sub: "system:serviceaccount:billing:billing", aud: ["scaivault"], iat: now, exp: now + 3600 });
  jwtFile = join(scratch, "scaivault-token");
  kubeTokenFile = join(scratch, "kube-token");
  writeFileSync(jwtFile, jwt);
  writeFileSync(kubeTokenFile, KUBE_TOKEN + "\n");

  const values = collectStrings(SEED).filter((value) => value.length >= 8);
  SENSITIVE.push(jwt, server.rootToken, ...values, ...values.map((value) => Buffer.from(value).toString("base64")));
});

afterAll(async () => {
  await server?.stop();
  await kube?.stop();
  rmSync(scratch, { recursive: true, force: true });
});

beforeEach(() => {
  kube.reset();
});

/** Runs `sync` with the test's defaults, overridden by `env`. */
async function sync(env: Record<string, string | undefined> = {}, args: string[] = []): Promise<CliResult> {
  const result = await runCli(["sync", ...args], {
    SCAIVAULT_URL: server.url,
    SCAIVAULT_TOKEN_FILE: jwtFile,
    SYNC_SECRET_NAME: "billing-secrets",
    SYNC_NAMESPACE: "billing",
    SYNC_MAPPING: MAPPING,
    KUBERNETES_API_URL: kube.url,
    KUBERNETES_TOKEN_FILE: kubeTokenFile,
    KUBERNETES_CA_FILE: certs.caFile,
    ...env,
  });
  outputs.push(result.stdout, result.stderr);
  return result;
}

function decoded(key: string): Record<string, string> {
  const data = kube.secrets.get(key)?.data ?? {};
  return Object.fromEntries(Object.entries(data).map(([name, value]) => [name, Buffer.from(value, "base64").toString("latin1")]));
}

function messages(result: CliResult): string[] {
  return logLines(result.stderr).map((line) => String(line.msg ?? line.raw ?? ""));
}

function collectStrings(value: unknown): string[] {
  if (typeof value === "string") return [value];
  if (value && typeof value === "object") return Object.values(value).flatMap(collectStrings);
  return [];
}

describe("sync against the Kubernetes API", () => {
  test("sync creates the Secret", async () => {
    const result = await sync();

    expect(result.code).toBe(0);
    const secret = kube.secrets.get(SECRET_KEY)!;
    expect(secret.type).toBe("Opaque");
    expect(secret.metadata.labels).toEqual({ "app.kubernetes.io/managed-by": "scaivault-agent" });

    const data = decoded(SECRET_KEY);
    expect(Object.keys(data).sort()).toEqual(["DB_PASSWORD", "blob.bin", "db.json", "publishable_key", "secret_key"]);
    expect(JSON.parse(data["db.json"]!)).toEqual(SEED[DATABASE]!);
    expect(data.DB_PASSWORD).toBe("db-Pa55w0rd-q7Xz");
    expect(data.secret_key).toBe("sk_live_Str1peKey-9d8c");
    expect(data.publishable_key).toBe("pk_live_Pub11shable-77");
    expect(Buffer.from(data["blob.bin"]!, "latin1").equals(BINARY)).toBe(true);

    const sources = JSON.parse(secret.metadata.annotations[SOURCES_ANNOTATION]);
    expect(Object.keys(sources)).toEqual([CERT, DATABASE, STRIPE]);
    expect(sources[DATABASE]).toBe(server.state.secrets.read(DATABASE).version);
  });

  test("sync sends the bearer token and field manager", async () => {
    await sync();

    expect(kube.requests.length).toBe(2);
    for (const request of kube.requests) expect(request.authorization).toBe(`Bearer ${KUBE_TOKEN}`);
    expect(kube.requests.map((request) => `${request.method} ${request.path}${request.query}`)).toEqual([
      "GET /api/v1/namespaces/billing/secrets/billing-secrets",
      "POST /api/v1/namespaces/billing/secrets?fieldManager=scaivault-agent",
    ]);
  });

  test("sync leaves a current Secret untouched", async () => {
    await sync();
    const before = kube.secrets.get(SECRET_KEY)!.metadata.resourceVersion;
    kube.requests.length = 0;

    const result = await sync();

    expect(result.code).toBe(0);
    expect(kube.count("GET")).toBe(1);
    expect(kube.count("PUT")).toBe(0);
    expect(kube.count("POST")).toBe(0);
    expect(kube.secrets.get(SECRET_KEY)!.metadata.resourceVersion).toBe(before);
    expect(messages(result)).toContain("Secret already current");
  });

  test("sync updates changed keys and keeps foreign metadata", async () => {
    await sync();
    const created = kube.secrets.get(SECRET_KEY)!;
    kube.put({
      ...created,
      metadata: { ...created.metadata, labels: { ...created.metadata.labels, team: "billing" }, annotations: { ...created.metadata.annotations, "example.com/note": "kept" } },
    });
    server.state.secrets.write(DATABASE, { data: { ...SEED[DATABASE], password: "db-N3wPassw0rd-r8Yw" } });
    SENSITIVE.push("db-N3wPassw0rd-r8Yw");
    kube.requests.length = 0;

    try {
      const result = await sync();

      expect(result.code).toBe(0);
      expect(kube.count("PUT")).toBe(1);
      const secret = kube.secrets.get(SECRET_KEY)!;
      expect(decoded(SECRET_KEY).DB_PASSWORD).toBe("db-N3wPassw0rd-r8Yw");
      expect(secret.metadata.labels.team).toBe("billing");
      expect(secret.metadata.annotations["example.com/note"]).toBe("kept");
      expect(JSON.parse(secret.metadata.annotations[SOURCES_ANNOTATION])[DATABASE]).toBe(server.state.secrets.read(DATABASE).version);
      const updated = logLines(result.stderr).find((line) => line.msg === "Updated Secret");
      expect(updated?.changedKeys).toEqual(["DB_PASSWORD", "db.json"]);
    } finally {
      server.state.secrets.write(DATABASE, { data: SEED[DATABASE]! });
    }
  });

  test("sync retries a 409 conflict with a fresh read", async () => {
    await sync();
    server.state.secrets.write(STRIPE, { data: { ...SEED[STRIPE], secret_key: "sk_live_R0tated-5k2j" } });
    SENSITIVE.push("sk_live_R0tated-5k2j");
    kube.requests.length = 0;

    let interfered = false;
    kube.beforeUpdate = (key) => {
      if (interfered) return;
      interfered = true;
      const current = kube.secrets.get(key)!;
      kube.put({ ...current, metadata: { ...current.metadata, labels: { ...current.metadata.labels, other: "writer" } } });
    };

    try {
      const result = await sync();

      expect(result.code).toBe(0);
      expect(kube.count("GET")).toBe(2);
      expect(kube.count("PUT")).toBe(2);
      expect(decoded(SECRET_KEY).secret_key).toBe("sk_live_R0tated-5k2j");
      expect(kube.secrets.get(SECRET_KEY)!.metadata.labels.other).toBe("writer");
      expect(messages(result)).toContain("Secret changed since it was read, reading it again");
    } finally {
      server.state.secrets.write(STRIPE, { data: SEED[STRIPE]! });
    }
  });

  test("sync gives up after repeated conflicts", async () => {
    await sync();
    server.state.secrets.write(STRIPE, { data: { ...SEED[STRIPE], publishable_key: "pk_live_Ch4nged-1q2w" } });
    SENSITIVE.push("pk_live_Ch4nged-1q2w");
    kube.requests.length = 0;
    kube.beforeUpdate = (key) => {
      kube.put(kube.secrets.get(key)!);
    };

    try {
      const result = await sync();

      expect(result.code).toBe(EXIT_CODES.server);
      expect(kube.count("PUT")).toBe(MAX_CONFLICT_ROUNDS);
      expect(result.stderr).toContain(`changed ${MAX_CONFLICT_ROUNDS} times while sync ran`);
    } finally {
      server.state.secrets.write(STRIPE, { data: SEED[STRIPE]! });
    }
  });

  test("sync updates a Secret created meanwhile", async () => {
    kube.beforeCreate = (key) => {
      const [namespace, name] = key.split("/") as [string, string];
      kube.put({ apiVersion: "v1", kind: "Secret", type: "Opaque", metadata: { name, namespace, labels: { "app.kubernetes.io/managed-by": "scaivault-agent" } }, data: {} });
    };

    const result = await sync();

    expect(result.code).toBe(0);
    expect(kube.count("POST")).toBe(1);
    expect(kube.count("PUT")).toBe(1);
    expect(decoded(SECRET_KEY).DB_PASSWORD).toBe("db-Pa55w0rd-q7Xz");
  });

  test("sync reports a forbidden update", async () => {
    await sync();
    server.state.secrets.write(DATABASE, { data: { ...SEED[DATABASE], username: "billing-v2" } });
    kube.denied.add("update");
    const before = kube.secrets.get(SECRET_KEY)!.metadata.resourceVersion;

    try {
      const result = await sync();

      expect(result.code).toBe(EXIT_CODES.forbidden);
      expect(result.stderr).toContain('Cannot update Secret \\"billing/billing-secrets\\": the Kubernetes API returned 403 Forbidden');
      expect(result.stderr).toContain("deploy/base/sync-job");
      expect(kube.secrets.get(SECRET_KEY)!.metadata.resourceVersion).toBe(before);
      expect(kube.count("PUT")).toBe(1);
    } finally {
      server.state.secrets.write(DATABASE, { data: SEED[DATABASE]! });
    }
  });

  test("sync reports a forbidden read", async () => {
    kube.denied.add("get");

    const result = await sync();

    expect(result.code).toBe(EXIT_CODES.forbidden);
    expect(kube.count("POST")).toBe(0);
  });

  test("sync rejects an untrusted API certificate", async () => {
    const result = await sync({ KUBERNETES_CA_FILE: certs.otherCaFile });

    expect(result.code).toBe(EXIT_CODES.unreachable);
    expect(result.stderr).toContain("is not trusted");
    expect(kube.requests.length).toBe(0);
    expect(kube.secrets.size).toBe(0);
  });

  test("sync reads the token again after a 401", async () => {
    const wrongToken = join(scratch, "wrong-token");
    writeFileSync(wrongToken, "not-the-kube-token");

    const result = await sync({ KUBERNETES_TOKEN_FILE: wrongToken });

    expect(result.code).toBe(EXIT_CODES.auth);
    expect(kube.count("GET")).toBe(2);
    expect(messages(result)).toContain("Kubernetes API rejected the token, reading the token file again");
  });

  test("sync writes nothing when a secret cannot be read", async () => {
    const result = await sync({ SYNC_MAPPING: `${DATABASE} -> db.json\n${DENIED}#password -> PAYROLL` });

    expect(result.code).toBe(EXIT_CODES.forbidden);
    expect(result.stderr).toContain(DENIED);
    expect(kube.requests.length).toBe(0);
  });

  test("sync refuses a Secret it did not create", async () => {
    kube.put({ apiVersion: "v1", kind: "Secret", type: "Opaque", metadata: { name: "billing-secrets", namespace: "billing" }, data: { manual: "bWFudWFs" } });

    const refused = await sync();
    expect(refused.code).toBe(EXIT_CODES.config);
    expect(refused.stderr).toContain("SYNC_ADOPT=true");
    expect(decoded(SECRET_KEY)).toEqual({ manual: "manual" });

    const adopted = await sync({ SYNC_ADOPT: "true" });
    expect(adopted.code).toBe(0);
    expect(decoded(SECRET_KEY).manual).toBeUndefined();
    expect(kube.secrets.get(SECRET_KEY)!.metadata.labels["app.kubernetes.io/managed-by"]).toBe("scaivault-agent");
  });

  test("sync rejects a Secret of another type", async () => {
    kube.put({
      apiVersion: "v1",
      kind: "Secret",
      type: "kubernetes.io/tls",
      metadata: { name: "billing-secrets", namespace: "billing", labels: { "app.kubernetes.io/managed-by": "scaivault-agent" } },
      data: {},
    });

    const result = await sync();

    expect(result.code).toBe(EXIT_CODES.config);
    expect(result.stderr).toContain("a Secret's type cannot change");
    expect(kube.count("PUT")).toBe(0);
  });

  test("sync applies type, labels and annotations", async () => {
    const result = await sync({
      SYNC_MAPPING: `${DATABASE}#username -> username\n${DATABASE}#password -> password`,
      SYNC_SECRET_TYPE: "kubernetes.io/basic-auth",
      SYNC_LABELS: "app.kubernetes.io/part-of=billing, tier=backend",
      SYNC_ANNOTATIONS: "example.com/owner=team billing",
    });

    expect(result.code).toBe(0);
    const secret = kube.secrets.get(SECRET_KEY)!;
    expect(secret.type).toBe("kubernetes.io/basic-auth");
    expect(secret.metadata.labels).toEqual({ "app.kubernetes.io/part-of": "billing", tier: "backend", "app.kubernetes.io/managed-by": "scaivault-agent" });
    expect(secret.metadata.annotations["example.com/owner"]).toBe("team billing");
    expect(Object.keys(JSON.parse(secret.metadata.annotations[SOURCES_ANNOTATION]))).toEqual([DATABASE]);
  });

  test("sync finds the API and namespace in a pod", async () => {
    const namespaceFile = join(scratch, "namespace");
    writeFileSync(namespaceFile, "billing\n");

    const result = await sync({
      KUBERNETES_API_URL: undefined,
      SYNC_NAMESPACE: undefined,
      KUBERNETES_SERVICE_HOST: "127.0.0.1",
      KUBERNETES_SERVICE_PORT: String(kube.port),
      KUBERNETES_NAMESPACE_FILE: namespaceFile,
    });

    expect(result.code).toBe(0);
    expect(kube.secrets.has(SECRET_KEY)).toBe(true);
  });

  test("sync without an API address fails with a hint", async () => {
    const result = await sync({ KUBERNETES_API_URL: undefined });

    expect(result.code).toBe(EXIT_CODES.config);
    expect(result.stderr).toContain("KUBERNETES_SERVICE_HOST is not set");
  });
});

test.skipIf(!HAS_DENO)("sync under Deno verifies the cluster CA", async () => {
  const env = {
    SCAIVAULT_URL: server.url,
    SCAIVAULT_TOKEN_FILE: jwtFile,
    SYNC_SECRET_NAME: "billing-secrets",
    SYNC_NAMESPACE: "billing",
    SYNC_MAPPING: MAPPING,
    KUBERNETES_API_URL: kube.url,
    KUBERNETES_TOKEN_FILE: kubeTokenFile,
  };
  const deno = async (caFile: string) => {
    const child = spawn("deno", ["run", "-A", MOD, "sync"], { env: baseEnv({ ...env, KUBERNETES_CA_FILE: caFile }), stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout!.on("data", (chunk) => (output += chunk));
    child.stderr!.on("data", (chunk) => (output += chunk));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
    clearTimeout(timer);
    outputs.push(output);
    return { code, output };
  };

  const untrusted = await deno(certs.otherCaFile);
  expect(untrusted.code).toBe(EXIT_CODES.unreachable);
  expect(untrusted.output).toContain("is not trusted");
  expect(kube.requests.length).toBe(0);

  const trusted = await deno(certs.caFile);
  expect(trusted.code).toBe(0);
  expect(decoded(SECRET_KEY).DB_PASSWORD).toBe("db-Pa55w0rd-q7Xz");
});

describe("sync --dry-run", () => {
  test("dry run prints the Secret redacted", async () => {
    const result = await sync({ KUBERNETES_API_URL: undefined }, ["--dry-run"]);

    expect(result.code).toBe(0);
    expect(result.stdout).toContain("# Dry run: sync would create Secret billing/billing-secrets");
    expect(result.stdout).toContain("DB_PASSWORD: <redacted, 16 bytes>");
    expect(result.stdout).toContain(`blob.bin: <redacted, ${BINARY.length} bytes>`);
    expect(result.stdout).toContain(SOURCES_ANNOTATION);
    expect(kube.requests.length).toBe(0);
  });

  test("dry run compares with the current Secret", async () => {
    await sync();
    server.state.secrets.write(DATABASE, { data: { ...SEED[DATABASE], port: 6432 } });
    kube.requests.length = 0;

    try {
      const result = await sync({ SYNC_DRY_RUN: "true" });

      expect(result.code).toBe(0);
      expect(result.stdout).toContain("sync would update Secret billing/billing-secrets");
      expect(result.stdout).toContain("# Keys that would change: db.json");
      expect(kube.count("GET")).toBe(1);
      expect(kube.count("PUT")).toBe(0);
    } finally {
      server.state.secrets.write(DATABASE, { data: SEED[DATABASE]! });
    }
  });
});

describe("sync mapping", () => {
  test.each([
    [`${DATABASE} -> db.json`, { path: DATABASE, target: "db.json", format: "json" }],
    [`${DATABASE}#password -> DB_PASSWORD`, { path: DATABASE, target: "DB_PASSWORD", field: "password", format: "raw" }],
    [`${DATABASE} -> DB_ENV format=env`, { path: DATABASE, target: "DB_ENV", format: "env" }],
    [`${DATABASE} -> *`, { path: DATABASE, target: "*" }],
  ])("mapping line %p parses", (line, expected) => {
    expect(parseSyncMapping(line)[0]).toMatchObject(expected);
  });

  test.each([
    [`${DATABASE}#password -> *`, '"-> *" copies every field as it is'],
    [`${DATABASE} -> * format=env`, '"-> *" copies every field as it is'],
    [`${DATABASE}#password -> PASS mode=0400`, "mode= has no meaning for a Secret key"],
    [`${DATABASE} -> db/json`, 'invalid Secret key "db/json"'],
    [`${DATABASE}#a -> KEY\n${STRIPE}#b -> KEY`, '"KEY" is already written by line 1'],
    ["", "SYNC_MAPPING is not set"],
  ])("mapping %p is rejected", (text, message) => {
    expect(() => parseSyncMapping(text)).toThrow(message);
  });

  test("two * lines may share no key", () => {
    const mappings = parseSyncMapping(`${DATABASE} -> *\n${STRIPE} -> *\n`);
    const secrets = new Map<string, Secret>([
      [DATABASE, { path: DATABASE, version: 1, secretType: "json", data: { password: "a" } }],
      [STRIPE, { path: STRIPE, version: 1, secretType: "json", data: { password: "b" } }],
    ]);

    expect(() => buildSecretData(mappings, secrets)).toThrow('Secret key "password" comes from line 1 and line 2');
  });

  test("a field that is no Secret key is rejected", () => {
    const mappings = parseSyncMapping(`${DATABASE} -> *`);
    const secrets = new Map<string, Secret>([[DATABASE, { path: DATABASE, version: 4, secretType: "json", data: { "db password": "x" } }]]);

    let error: unknown;
    try {
      buildSecretData(mappings, secrets);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(AgentError);
    expect((error as AgentError).message).toContain('Cannot copy field "db password"');
  });

  test("non-string fields are written as JSON", () => {
    const mappings = parseSyncMapping(`${DATABASE} -> *`);
    const secrets = new Map<string, Secret>([[DATABASE, { path: DATABASE, version: 2, secretType: "json", data: { port: 5432, tls: true } }]]);

    const { data, sources } = buildSecretData(mappings, secrets);

    expect(new TextDecoder().decode(data.get("port"))).toBe("5432");
    expect(new TextDecoder().decode(data.get("tls"))).toBe("true");
    expect(sources).toEqual({ [DATABASE]: 2 });
  });
});

test("sync output never contains values or tokens", () => {
  expect(outputs.length).toBeGreaterThan(10);
  const all = outputs.join("\n");
  for (const value of SENSITIVE) expect(all.includes(value)).toBe(false);
});
