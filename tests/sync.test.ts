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
import { KubeClient } from "../src/kube.ts";
import { MAX_CAUSE_LENGTH } from "../src/kube-errors.ts";
import { MAX_SECRET_DATA_BYTES } from "../src/kube-secret-rules.ts";
import { createFetch } from "../src/runtime.ts";
import { loadSyncConfig, parseSyncMapping } from "../src/sync-config.ts";
import { MAX_CONFLICT_ROUNDS } from "../src/sync.ts";
import { parseRestartTargets, SECRET_VERSIONS_ANNOTATION, secretVersionsHash } from "../src/sync-restart.ts";
import { buildSecretData, checkSecretSize, LAST_APPLIED_ANNOTATION, SOURCES_ANNOTATION } from "../src/sync-secret.ts";
import type { Secret } from "../src/contract.ts";
import { baseEnv, logLines, MOD, runCli, type CliResult } from "./helpers/cli.ts";
import { makeJwt } from "./helpers/jwt.ts";
import { makeCertificates, startFakeKubeApi, type FakeKubeApi, type TestCertificates } from "./helpers/kube-api.ts";

const DATABASE = "environments/production/billing/database";
const STRIPE = "environments/production/billing/stripe";
const CERT = "environments/production/billing/cert";
const DENIED = "environments/production/payroll/database";
const LARGE = "environments/production/billing/large";
const SECRET_KEY = "billing/billing-secrets";

const BINARY = Buffer.from(Array.from({ length: 300 }, (_, index) => (index * 13) % 256));
const SEED: Record<string, Record<string, unknown>> = {
  [DATABASE]: { username: "billing", password: "db-Pa55w0rd-q7Xz", port: 5432 },
  [STRIPE]: { secret_key: "sk_live_Str1peKey-9d8c", publishable_key: "pk_live_Pub11shable-77" },
  [CERT]: { blob: BINARY.toString("base64") },
  [DENIED]: { password: "payroll-Den1ed-Secret" },
  // Two fields of 600,000 bytes: together over the 1 MiB that Kubernetes allows in one Secret.
  [LARGE]: { part1: "L".repeat(600_000), part2: "M".repeat(600_000) },
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

describe("sync and kubectl's last-applied annotation", () => {
  const OLD_VALUE = "old-Leaked-Passw0rd-5512";
  const FOREIGN_NOTE = "foreign-Note-Value-9921";
  const FOREIGN_LABEL = "payments-Label-77";

  /** Stores the Secret as `kubectl apply` would leave it: its old data copied into an annotation. */
  function putApplied(data: Record<string, string> = { DB_PASSWORD: Buffer.from(OLD_VALUE).toString("base64") }): void {
    const lastApplied = JSON.stringify({ apiVersion: "v1", kind: "Secret", metadata: { name: "billing-secrets", namespace: "billing" }, stringData: { DB_PASSWORD: OLD_VALUE } });
    kube.put({
      apiVersion: "v1",
      kind: "Secret",
      type: "Opaque",
      metadata: {
        name: "billing-secrets",
        namespace: "billing",
        labels: { "app.kubernetes.io/managed-by": "scaivault-agent", team: FOREIGN_LABEL },
        annotations: { [LAST_APPLIED_ANNOTATION]: lastApplied, "example.com/note": FOREIGN_NOTE },
      },
      data,
    });
  }

  beforeAll(() => {
    SENSITIVE.push(OLD_VALUE, Buffer.from(OLD_VALUE).toString("base64"));
  });

  test("update removes the last-applied annotation", async () => {
    putApplied();

    const result = await sync();

    expect(result.code).toBe(0);
    const secret = kube.secrets.get(SECRET_KEY)!;
    expect(secret.metadata.annotations[LAST_APPLIED_ANNOTATION]).toBeUndefined();
    expect(secret.metadata.annotations["example.com/note"]).toBe(FOREIGN_NOTE);
    expect(JSON.stringify(secret)).not.toContain(OLD_VALUE);
    const removed = logLines(result.stderr).find((line) => line.msg === "Removed annotation that contains an earlier copy of the data");
    expect(removed?.annotation).toBe(LAST_APPLIED_ANNOTATION);
    expect(removed?.secret).toBe(SECRET_KEY);
  });

  test("current data with the annotation still updates", async () => {
    await sync();
    const current = kube.secrets.get(SECRET_KEY)!;
    putApplied(current.data);
    kube.requests.length = 0;

    const result = await sync();

    expect(result.code).toBe(0);
    expect(kube.count("PUT")).toBe(1);
    expect(kube.secrets.get(SECRET_KEY)!.metadata.annotations[LAST_APPLIED_ANNOTATION]).toBeUndefined();
    expect(logLines(result.stderr).find((line) => line.msg === "Updated Secret")?.changedKeys).toEqual([]);
  });

  test("dry run prints only what sync owns", async () => {
    putApplied();

    const result = await sync({ SYNC_LABELS: "tier=backend" }, ["--dry-run"]);

    expect(result.code).toBe(0);
    expect(result.stdout).toContain("sync would update Secret billing/billing-secrets");
    expect(result.stdout).toContain(`# The update would remove the annotation ${LAST_APPLIED_ANNOTATION}`);
    expect(result.stdout).toContain("app.kubernetes.io/managed-by: scaivault-agent");
    expect(result.stdout).toContain("tier: backend");
    expect(result.stdout).toContain(SOURCES_ANNOTATION);
    expect(result.stdout).toContain("DB_PASSWORD: <redacted, 16 bytes>");
    for (const foreign of [OLD_VALUE, FOREIGN_NOTE, FOREIGN_LABEL, "example.com/note", `${LAST_APPLIED_ANNOTATION}:`, "resourceVersion", "uid"]) {
      expect(result.stdout).not.toContain(foreign);
    }
    expect(kube.count("PUT")).toBe(0);
  });
});

describe("sync restarts workloads", () => {
  const RESTART = { SYNC_RESTART: "deployment/billing" };

  function deployment() {
    return kube.workloads.get("deployments/billing/billing")!;
  }

  function expectedHash(): string {
    return secretVersionsHash(JSON.parse(kube.secrets.get(SECRET_KEY)!.metadata.annotations[SOURCES_ANNOTATION]));
  }

  test("restart patches the pod template on change", async () => {
    kube.putWorkload("deployments", "billing", "billing");

    const result = await sync(RESTART);

    expect(result.code).toBe(0);
    const patches = kube.requests.filter((request) => request.method === "PATCH");
    expect(patches.map((request) => `${request.path}${request.query}`)).toEqual(["/apis/apps/v1/namespaces/billing/deployments/billing?fieldManager=scaivault-agent"]);
    expect(patches[0]!.contentType).toBe("application/merge-patch+json");
    expect(deployment().spec.template.metadata!.annotations![SECRET_VERSIONS_ANNOTATION]).toBe(expectedHash());
    expect(deployment().metadata.generation).toBe(2);
    expect(deployment().spec.template.metadata!.labels).toEqual({ app: "billing" });
    expect(logLines(result.stderr).find((line) => line.msg === "Sync finished")?.restarted).toEqual(["deployment/billing"]);
  });

  test("restart leaves the workload on a no-op", async () => {
    kube.putWorkload("deployments", "billing", "billing");
    await sync(RESTART);
    kube.requests.length = 0;

    const result = await sync(RESTART);

    expect(result.code).toBe(0);
    expect(kube.count("PUT")).toBe(0);
    expect(kube.count("PATCH")).toBe(0);
    expect(deployment().metadata.generation).toBe(2);
    expect(messages(result)).toContain("Workload already runs these secret versions");
  });

  test("restart follows a new secret version", async () => {
    kube.putWorkload("deployments", "billing", "billing");
    await sync(RESTART);
    const first = deployment().spec.template.metadata!.annotations![SECRET_VERSIONS_ANNOTATION];
    server.state.secrets.write(DATABASE, { data: { ...SEED[DATABASE], password: "db-R0tated-Pass-4455" } });
    SENSITIVE.push("db-R0tated-Pass-4455");

    try {
      const result = await sync(RESTART);

      expect(result.code).toBe(0);
      expect(kube.count("PATCH")).toBe(2);
      const second = deployment().spec.template.metadata!.annotations![SECRET_VERSIONS_ANNOTATION];
      expect(second).not.toBe(first);
      expect(second).toBe(expectedHash());
      expect(deployment().metadata.generation).toBe(3);
    } finally {
      server.state.secrets.write(DATABASE, { data: SEED[DATABASE]! });
    }
  });

  test("restart reports a forbidden patch", async () => {
    kube.putWorkload("deployments", "billing", "billing");
    kube.deniedWorkloads.add("patch");

    const result = await sync(RESTART);

    expect(result.code).toBe(EXIT_CODES.forbidden);
    expect(result.stderr).toContain('Cannot patch Deployment \\"billing/billing\\": the Kubernetes API returned 403 Forbidden');
    expect(result.stderr).toContain('grant the pod\'s service account get and patch on deployments \\"billing\\" in the API group \\"apps\\"');
    expect(result.stderr).toContain("The Secret is created, but the pods of deployment/billing keep the values they started with until they restart");
    expect(kube.secrets.has(SECRET_KEY)).toBe(true);
    expect(deployment().metadata.generation).toBe(1);
  });

  test("restart retries after a failed run", async () => {
    kube.putWorkload("deployments", "billing", "billing", { [SECRET_VERSIONS_ANNOTATION]: "sha256:versions-of-an-earlier-run" });
    kube.deniedWorkloads.add("patch");
    expect((await sync(RESTART)).code).toBe(EXIT_CODES.forbidden);
    kube.deniedWorkloads.clear();

    const result = await sync(RESTART);

    expect(result.code).toBe(0);
    expect(messages(result)).toContain("Secret already current");
    expect(deployment().spec.template.metadata!.annotations![SECRET_VERSIONS_ANNOTATION]).toBe(expectedHash());
  });

  test("restart reports a forbidden read", async () => {
    kube.putWorkload("deployments", "billing", "billing");
    kube.deniedWorkloads.add("get");

    const result = await sync(RESTART);

    expect(result.code).toBe(EXIT_CODES.forbidden);
    expect(result.stderr).toContain('Cannot get Deployment \\"billing/billing\\"');
    expect(kube.count("PATCH")).toBe(0);
  });

  test("restart skips a missing workload", async () => {
    const result = await sync(RESTART);

    expect(result.code).toBe(0);
    expect(kube.secrets.has(SECRET_KEY)).toBe(true);
    expect(kube.count("PATCH")).toBe(0);
    expect(messages(result)).toContain("Workload to restart not found, leaving it");
  });

  test("restart handles StatefulSets and DaemonSets", async () => {
    kube.putWorkload("statefulsets", "billing", "billing-db");
    kube.putWorkload("daemonsets", "billing", "billing-agent");

    const result = await sync({ SYNC_RESTART: "sts/billing-db, daemonset/billing-agent" });

    expect(result.code).toBe(0);
    for (const key of ["statefulsets/billing/billing-db", "daemonsets/billing/billing-agent"]) {
      expect(kube.workloads.get(key)!.spec.template.metadata!.annotations![SECRET_VERSIONS_ANNOTATION]).toBe(expectedHash());
    }
  });

  test("dry run shows the restart without patching", async () => {
    kube.putWorkload("deployments", "billing", "billing");

    const result = await sync(RESTART, ["--dry-run"]);

    expect(result.code).toBe(0);
    expect(result.stdout).toContain("# Would restart deployment/billing: its pod template lacks the secret versions sha256:");
    expect(kube.count("PATCH")).toBe(0);
    expect(kube.count("POST")).toBe(0);
  });

  test.each([
    ["deployment/billing", [{ kind: "Deployment", name: "billing" }]],
    ["deploy/a,sts/b ds/c", [{ kind: "Deployment", name: "a" }, { kind: "StatefulSet", name: "b" }, { kind: "DaemonSet", name: "c" }]],
    ["StatefulSets/db", [{ kind: "StatefulSet", name: "db" }]],
    ["", []],
  ])("SYNC_RESTART %p parses", (text, expected) => {
    expect(parseRestartTargets(text)).toEqual(expected as never);
  });

  test.each([
    ["job/billing", '"job/billing" is not kind/name'],
    ["billing", '"billing" is not kind/name'],
    ["deployment/Billing", '"Billing" in "deployment/Billing" is no valid name'],
    ["deployment/a/b", '"deployment/a/b" is not kind/name'],
    ["deployment/a,deploy/a", '"deploy/a" is given twice'],
  ])("SYNC_RESTART %p is rejected", (text, message) => {
    expect(() => parseRestartTargets(text)).toThrow(message);
  });

  test("secret versions hash ignores order", () => {
    expect(secretVersionsHash({ a: 1, b: 2 })).toBe(secretVersionsHash({ b: 2, a: 1 }));
    expect(secretVersionsHash({ a: 1, b: 2 })).not.toBe(secretVersionsHash({ a: 1, b: 3 }));
    expect(secretVersionsHash({ a: 1 })).toMatch(/^sha256:[0-9a-f]{32}$/);
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
    [`${DATABASE} -> .`, 'invalid Secret key ".": Kubernetes rejects "." as a key'],
    [`${DATABASE} -> ..`, 'invalid Secret key "..": Kubernetes rejects ".." as a key'],
    [`${DATABASE}#password -> ..data`, 'invalid Secret key "..data": Kubernetes rejects keys that start with ".."'],
    [`${DATABASE} -> ${"k".repeat(254)}`, "longer than 253 characters"],
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

  test.each([".", "..", "..data"])("field %p is no Secret key for * lines", (field) => {
    const mappings = parseSyncMapping(`${DATABASE} -> *`);
    const secrets = new Map<string, Secret>([[DATABASE, { path: DATABASE, version: 4, secretType: "json", data: { [field]: "x", ok: "y" } }]]);

    expect(() => buildSecretData(mappings, secrets)).toThrow(`Cannot copy field "${field}"`);
    expect(() => buildSecretData(mappings, secrets)).toThrow("Kubernetes rejects");
  });

  test("a key with single dots is accepted", () => {
    expect(parseSyncMapping(`${DATABASE} -> .env`)[0]!.target).toBe(".env");
    expect(parseSyncMapping(`${DATABASE} -> a..b`)[0]!.target).toBe("a..b");
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

describe("sync data size", () => {
  const config = loadSyncConfig({}, { SYNC_SECRET_NAME: "billing-secrets", SYNC_NAMESPACE: "billing", SYNC_MAPPING: `${DATABASE} -> *`, SYNC_DRY_RUN: "true", SCAIVAULT_URL: "https://scaivault.example.com" });

  test("size check accepts exactly 1 MiB", () => {
    const data = new Map([
      ["a", new Uint8Array(MAX_SECRET_DATA_BYTES - 10)],
      ["b", new Uint8Array(10)],
    ]);
    expect(() => checkSecretSize(config, data)).not.toThrow();
  });

  test("size check rejects one byte more", () => {
    const data = new Map([
      ["a", new Uint8Array(MAX_SECRET_DATA_BYTES - 10)],
      ["b", new Uint8Array(11)],
    ]);

    let error: unknown;
    try {
      checkSecretSize(config, data);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(AgentError);
    expect((error as AgentError).code).toBe("config");
    expect((error as AgentError).message).toContain(`its data would be ${MAX_SECRET_DATA_BYTES + 1} bytes, more than the ${MAX_SECRET_DATA_BYTES} bytes`);
    expect((error as AgentError).message).toContain(`Largest keys: a (${MAX_SECRET_DATA_BYTES - 10} bytes), b (11 bytes)`);
  });

  test("sync rejects data over 1 MiB before writing", async () => {
    const result = await sync({ SYNC_MAPPING: `${LARGE} -> *` });

    expect(result.code).toBe(EXIT_CODES.config);
    expect(result.stderr).toContain("its data would be 1200000 bytes, more than the 1048576 bytes (1 MiB)");
    expect(result.stderr).toContain("part1 (600000 bytes)");
    expect(kube.count("GET")).toBe(0);
    expect(kube.count("POST")).toBe(0);
  });

  test("dry run rejects data over 1 MiB", async () => {
    const result = await sync({ SYNC_MAPPING: `${LARGE} -> *` }, ["--dry-run"]);

    expect(result.code).toBe(EXIT_CODES.config);
    expect(result.stderr).toContain("more than the 1048576 bytes (1 MiB)");
    expect(result.stdout).toBe("");
  });

  test("dry run prints the data size", async () => {
    const result = await sync({ SYNC_MAPPING: `${LARGE}#part1 -> part1` }, ["--dry-run"]);

    expect(result.code).toBe(0);
    expect(result.stdout).toContain(`# Data size: 600000 of at most ${MAX_SECRET_DATA_BYTES} bytes`);
  });
});

describe("Kubernetes API errors", () => {
  const sent = "kube-Sent-Value-7731";

  function client(): KubeClient {
    return new KubeClient({ apiUrl: kube.url, tokenFile: kubeTokenFile, fetch: createFetch(certs.caFile), maxAttempts: 1 });
  }

  async function failure(action: () => Promise<unknown>): Promise<AgentError> {
    try {
      await action();
    } catch (error) {
      outputs.push(String((error as Error).message));
      return error as AgentError;
    }
    throw new Error("expected the request to fail");
  }

  test("invalid key names the field and the rule", async () => {
    const secret = { apiVersion: "v1" as const, kind: "Secret" as const, metadata: { name: "billing-secrets" }, data: { "..data": Buffer.from(sent).toString("base64") } };

    const error = await failure(() => client().createSecret("billing", secret));

    expect(error.code).toBe("config");
    expect(error.message).toContain("returned 422 Invalid; the API server reported: data[..data]: Invalid value: <value>: must not start with '..'");
  });

  test("cause messages never repeat sent values", async () => {
    const encoded = Buffer.from(sent).toString("base64");
    kube.failNext = {
      code: 422,
      reason: "Invalid",
      message: `Secret "billing-secrets" is invalid: data[token]: ${sent}`,
      causes: [
        { reason: "FieldValueInvalid", field: "data[token]", message: `Invalid value: "${encoded}": value rejected` },
        { reason: "FieldValueInvalid", field: "metadata.annotations", message: `Forbidden: the value ${sent} is not allowed here` },
      ],
    };
    const secret = { apiVersion: "v1" as const, kind: "Secret" as const, metadata: { name: "billing-secrets" }, data: { token: encoded } };

    const error = await failure(() => client().createSecret("billing", secret));

    expect(error.message).toContain("data[token]: Invalid value: <value>: value rejected");
    expect(error.message).toContain("metadata.annotations: Forbidden: the value <value> is not allowed here");
    expect(error.message).not.toContain(sent);
    expect(error.message).not.toContain(encoded);
  });

  test("cause messages are cut and counted", async () => {
    kube.failNext = {
      code: 422,
      reason: "Invalid",
      message: "invalid",
      causes: Array.from({ length: 7 }, (_, index) => ({ reason: "FieldValueInvalid", field: `spec.field${index}`, message: `Invalid value: 1: ${"x".repeat(500)}` })),
    };

    const error = await failure(() => client().getSecret("billing", "billing-secrets"));

    const reported = error.message.split("the API server reported: ")[1]!.split("; ");
    expect(reported.length).toBe(6);
    for (const item of reported.slice(0, 5)) expect(item.length).toBeLessThanOrEqual("spec.fieldN: ".length + MAX_CAUSE_LENGTH);
    expect(reported[0]).toEndWith("…");
    expect(reported[5]).toBe("and 2 more");
  });

  test("missing Kubernetes token file exits with the auth code", async () => {
    const result = await sync({ KUBERNETES_TOKEN_FILE: join(scratch, "no-such-token") });

    expect(result.code).toBe(EXIT_CODES.auth);
    expect(result.stderr).toContain("Cannot read KUBERNETES_TOKEN_FILE");
    expect(kube.requests.length).toBe(0);
  });

  test("empty Kubernetes token file exits with the auth code", async () => {
    const empty = join(scratch, "empty-token");
    writeFileSync(empty, "\n");

    const result = await sync({ KUBERNETES_TOKEN_FILE: empty });

    expect(result.code).toBe(EXIT_CODES.auth);
    expect(result.stderr).toContain("is empty");
  });
});

test("sync output never contains values or tokens", () => {
  expect(outputs.length).toBeGreaterThan(10);
  const all = outputs.join("\n");
  for (const value of SENSITIVE) expect(all.includes(value)).toBe(false);
});
