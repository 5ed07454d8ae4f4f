/**
 * The CSI provider through a real @grpc/grpc-js client on its unix socket, against the real dev
 * server on 127.0.0.1. Covered: the guide's SecretProviderClass, object versions across rotation,
 * modes, pinned versions, batch reads, the token cache under 200 concurrent mounts, the response
 * limit and metrics. A final test scans logs and metrics for secret values and tokens.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { parseAllowedUrls } from "../src/csi/allowed-urls.ts";
import { Mounter } from "../src/csi/mount.ts";
import { VERSION } from "../src/version.ts";
import { callError, filesByPath, GUIDE_OBJECTS, mountAttributes, podToken, startProviderFixture, type ProviderFixture } from "./helpers/csi.ts";

const DATABASE = "environments/production/billing/database";
const STRIPE = "environments/production/billing/stripe";
const BIG = "environments/production/billing/big";
const ACCOUNTS = ["billing", "svc-1", "svc-2", "svc-3", "svc-4"];
const MANY = Array.from({ length: 150 }, (_, index) => `environments/production/billing/many/item-${index}`);
const BIG_VALUE = "x".repeat(1536 * 1024);

const SEED: Record<string, Record<string, unknown>> = {
  [DATABASE]: { username: "billing", password: "db-Pa55w0rd-csi-7Yq", host: "db.billing", port: 5432 },
  [STRIPE]: { secret_key: "sk_live_csiStr1peKey_9Kd", publishable_key: "pk_live_csiPub_3Mn" },
  [BIG]: { blob: BIG_VALUE },
  ...Object.fromEntries(MANY.map((path, index) => [path, { value: `many-value-${index}-Zq81` }])),
};

/** Every string that must never appear in logs or metrics. */
const SENSITIVE: string[] = [];

let fixture: ProviderFixture;

beforeAll(async () => {
  fixture = await startProviderFixture({
    seed: SEED,
    config: { identities: Object.fromEntries(ACCOUNTS.map((account) => [`sa:${account}`, { read: ["environments/production/billing/**"], write: [] }])) },
    // The load test sends 200 calls at once; a queue that takes them all keeps it about the token cache.
    provider: { mountQueue: 256 },
  });
  SENSITIVE.push(fixture.dev.rootToken, "db-Pa55w0rd-csi-7Yq", "sk_live_csiStr1peKey_9Kd", "pk_live_csiPub_3Mn", "many-value-7-Zq81");
});

afterAll(async () => {
  await fixture.stop();
});

describe("csi provider", () => {
  test("Version returns the API and agent versions", async () => {
    expect(await fixture.client.version()).toEqual({ version: "v1alpha1", runtimeName: "scaivault-agent", runtimeVersion: VERSION });
  });

  test("Mount returns the guide's files", async () => {
    const attributes = mountAttributes({ baseUrl: fixture.dev.url, objects: GUIDE_OBJECTS });
    rememberTokens(attributes);

    const response = await fixture.client.mount({ attributes, permission: "420" });
    const files = filesByPath(response);

    expect([...files.keys()]).toEqual(["db.json", "stripe.json"]);
    expect(JSON.parse(files.get("db.json")!.text)).toEqual(SEED[DATABASE]!);
    expect(files.get("db.json")!.text).toBe(JSON.stringify(SEED[DATABASE], null, 2) + "\n");
    expect(files.get("stripe.json")!.text).toBe("sk_live_csiStr1peKey_9Kd");
    expect(files.get("db.json")!.mode).toBe(0o644);
    expect(response.objectVersion.map((entry) => entry.id)).toEqual(["db.json", "stripe.json"]);
    for (const entry of response.objectVersion) expect(entry.version).toMatch(/^1-[0-9a-f]{16}$/);
    expect(response.error).toBeUndefined();
  });

  test("unchanged secrets keep identical versions", async () => {
    const attributes = mountAttributes({ baseUrl: fixture.dev.url });
    const first = await fixture.client.mount({ attributes });
    const second = await fixture.client.mount({ attributes, currentObjectVersion: first.objectVersion });

    expect(second.objectVersion).toEqual(first.objectVersion);
    expect(second.files).toEqual(first.files);
  });

  test("rotated secret changes only its own version", async () => {
    const attributes = mountAttributes({ baseUrl: fixture.dev.url });
    const before = await fixture.client.mount({ attributes });

    fixture.dev.state.secrets.rotate(STRIPE, { secret_key: "sk_live_rotatedKey_4Pw", publishable_key: "pk_live_csiPub_3Mn" });
    SENSITIVE.push("sk_live_rotatedKey_4Pw");
    const after = await fixture.client.mount({ attributes, currentObjectVersion: before.objectVersion });

    const versions = (response: typeof before) => Object.fromEntries(response.objectVersion.map((entry) => [entry.id, entry.version]));
    expect(versions(after)["db.json"]).toBe(versions(before)["db.json"]!);
    expect(versions(after)["stripe.json"]).not.toBe(versions(before)["stripe.json"]!);
    expect(filesByPath(after).get("stripe.json")!.text).toBe("sk_live_rotatedKey_4Pw");
    expect(fixture.logs.some((line) => line.includes('"msg":"Mounted objects"') && line.includes('"changed":["stripe.json"]'))).toBe(true);
  });

  test("object mode overrides the mount permission", async () => {
    const objects = `- path: ${DATABASE}\n  file: db.json\n  mode: 0400\n- path: ${STRIPE}\n  file: keys/stripe\n  field: publishable_key\n`;
    const response = await fixture.client.mount({ attributes: mountAttributes({ baseUrl: fixture.dev.url, objects }), permission: "292" });
    const files = filesByPath(response);

    expect(files.get("db.json")!.mode).toBe(0o400);
    expect(files.get("keys/stripe")!.mode).toBe(0o444);
    expect(files.get("keys/stripe")!.text).toBe("pk_live_csiPub_3Mn");
  });

  test("pinned version reads that version", async () => {
    const objects = `- path: ${STRIPE}\n  file: old.key\n  field: secret_key\n  version: 1\n- path: ${STRIPE}\n  file: new.key\n  field: secret_key\n`;
    const response = await fixture.client.mount({ attributes: mountAttributes({ baseUrl: fixture.dev.url, objects }) });
    const files = filesByPath(response);

    expect(files.get("old.key")!.text).toBe("sk_live_csiStr1peKey_9Kd");
    expect(files.get("new.key")!.text).toBe("sk_live_rotatedKey_4Pw");
    expect(response.objectVersion.map((entry) => [entry.id, entry.version.split("-")[0]])).toEqual([
      ["old.key", "1"],
      ["new.key", "2"],
    ]);
  });

  test("150 objects take two batch requests", async () => {
    const objects = MANY.map((path, index) => `- path: ${path}\n  file: item-${index}\n  field: value\n`).join("");
    const attributes = mountAttributes({ baseUrl: fixture.dev.url, objects, pod: "many-0" });
    await fixture.client.mount({ attributes });

    fixture.dev.state.stats.reset();
    const response = await fixture.client.mount({ attributes });

    expect(response.files).toHaveLength(150);
    expect(filesByPath(response).get("item-7")!.text).toBe("many-value-7-Zq81");
    expect(fixture.dev.state.stats.snapshot()).toEqual({ "POST /v1/secrets/batch": 2 });
  });

  test("200 concurrent mounts for 50 pods exchange once per service account", async () => {
    fixture.dev.state.stats.reset();
    const cached = fixture.provider.mounter.tokenCache.stats().entries;

    // A namespace no earlier test used, so no service account has a cached token yet.
    const pods = Array.from({ length: 50 }, (_, index) => {
      const account = ACCOUNTS[index % ACCOUNTS.length]!;
      const attributes = mountAttributes({ baseUrl: fixture.dev.url, namespace: "load", serviceAccount: account, pod: `pod-${index}`, tokens: { scaivault: podToken("load", account) } });
      rememberTokens(attributes);
      return attributes;
    });
    const mounts = Array.from({ length: 200 }, (_, index) => fixture.client.mount({ attributes: pods[index % pods.length]! }));
    const responses = await Promise.all(mounts);

    expect(responses.every((response) => response.files.length === 2)).toBe(true);
    expect(fixture.dev.state.stats.count("POST /v1/auth/exchange")).toBe(ACCOUNTS.length);
    expect(fixture.dev.state.stats.count("POST /v1/secrets/batch")).toBe(200);
    expect(fixture.provider.mounter.tokenCache.stats().entries).toBe(cached + ACCOUNTS.length);
  });

  test("tokens sent as a secret of the request are used", async () => {
    const tokens = { scaivault: podToken("billing", "billing") };
    rememberTokens(mountAttributes({ baseUrl: fixture.dev.url, tokens }));
    const secrets = JSON.stringify({ "csi.storage.k8s.io/serviceAccount.tokens": JSON.stringify(tokens) });

    const response = await fixture.client.mount({ attributes: mountAttributes({ baseUrl: fixture.dev.url, tokens: null }), secrets });

    expect(response.files.map((file) => file.path)).toEqual(["db.json", "stripe.json"]);
  });

  test("revoked ScaiVault token is exchanged again", async () => {
    const attributes = mountAttributes({ baseUrl: fixture.dev.url });
    await fixture.client.mount({ attributes });

    fixture.dev.state.tokens.revokeAll();
    fixture.dev.state.stats.reset();
    const response = await fixture.client.mount({ attributes });

    expect(response.files).toHaveLength(2);
    expect(fixture.dev.state.stats.count("POST /v1/auth/exchange")).toBe(1);
  });

  test("response over 4 MiB is refused", async () => {
    const object = (index: number) => `- path: ${BIG}\n  file: big-${index}\n  field: blob\n`;
    const three = mountAttributes({ baseUrl: fixture.dev.url, objects: [0, 1, 2].map(object).join("") });
    const two = mountAttributes({ baseUrl: fixture.dev.url, objects: [0, 1].map(object).join("") });

    const error = await callError(() => fixture.client.mount({ attributes: three }));
    expect(error.code).toBe(8); // RESOURCE_EXHAUSTED
    expect(error.details).toMatch(
      /^Cannot mount SecretProviderClass "scaivault-billing" for pod "billing\/billing-0": the files add up to a response of \d+ bytes \(4\.5 MiB\), over the limit of 4194304 bytes \(4\.0 MiB\); split the objects over several SecretProviderClasses or select single fields with field$/,
    );

    const response = await fixture.client.mount({ attributes: two });
    expect(response.files.map((file) => file.contents.length)).toEqual([BIG_VALUE.length, BIG_VALUE.length]);
  });

  test("mount runs at most its concurrency of requests", async () => {
    let inFlight = 0;
    let peak = 0;
    const countingFetch = async (input: string | URL | Request, init?: RequestInit) => {
      inFlight += 1;
      peak = Math.max(peak, inFlight);
      try {
        await new Promise((resolve) => setTimeout(resolve, 20));
        return await fetch(input, init);
      } finally {
        inFlight -= 1;
      }
    };

    const mounter = new Mounter({ allowedUrls: parseAllowedUrls(fixture.dev.url), fetch: countingFetch, concurrency: 3 });
    const objects = Array.from({ length: 12 }, (_, index) => `- path: ${MANY[index]}\n  file: pinned-${index}\n  version: 1\n`).join("");
    const result = await mounter.mount({ attributes: mountAttributes({ baseUrl: fixture.dev.url, objects }), secrets: "{}", targetPath: "/t", permission: "420", currentObjectVersion: [] });

    expect(result.response.files).toHaveLength(12);
    expect(peak).toBe(3);
  });

  test("health and metrics endpoints answer", async () => {
    await callError(() => fixture.client.mount({ attributes: mountAttributes({ baseUrl: fixture.dev.url, objects: "- file: x" }) }));

    const health = await fetch(`${fixture.provider.healthUrl}/healthz`);
    const ready = await fetch(`${fixture.provider.healthUrl}/readyz`);
    const metrics = await (await fetch(`${fixture.provider.healthUrl}/metrics`)).text();
    scraped.push(metrics);

    expect(health.status).toBe(200);
    expect(ready.status).toBe(200);
    expect(metrics).toMatch(/^scaivault_csi_mounts_total\{result="ok"\} \d+$/m);
    expect(metrics).toMatch(/^scaivault_csi_mount_errors_total\{code="INVALID_ARGUMENT"\} [1-9]\d*$/m);
    expect(metrics).toMatch(/^scaivault_csi_mount_errors_total\{code="RESOURCE_EXHAUSTED"\} 1$/m);
    expect(metrics).toMatch(/^scaivault_csi_scaivault_request_duration_seconds_total\{route="secrets.batch"\} [0-9.e-]+$/m);
    expect(metrics).toMatch(/^scaivault_csi_scaivault_requests_total\{route="auth.exchange",status="200"\} \d+$/m);
    expect(metrics).toMatch(/^scaivault_csi_token_exchanges_total \d+$/m);
  });

  test("logs and metrics hold no secret value or token", () => {
    const text = fixture.logs.join("\n") + "\n" + scraped.join("\n");
    const leaks = SENSITIVE.filter((value) => text.includes(value));

    expect(fixture.logs.length).toBeGreaterThan(10);
    expect(SENSITIVE.length).toBeGreaterThan(50);
    expect(leaks).toEqual([]);
    // Exchanged ScaiVault tokens (svt_...) and JWTs (eyJ...) are not known here by value.
    expect(text).not.toMatch(/svt_[A-Za-z0-9_-]{16}|eyJ[A-Za-z0-9_-]{10}/);
  });
});

// ---------------------------------------------------------------------------------------------

/** Metrics scraped during the tests, for the final scan. */
const scraped: string[] = [];

/** Adds the pod tokens of `attributes` to the sensitive strings. */
function rememberTokens(attributes: string): void {
  const tokens = JSON.parse(JSON.parse(attributes)["csi.storage.k8s.io/serviceAccount.tokens"]) as Record<string, { token: string }>;
  for (const entry of Object.values(tokens)) SENSITIVE.push(entry.token);
}
