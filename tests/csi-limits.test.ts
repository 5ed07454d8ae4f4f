/**
 * The provider's limits and hardening, through a real @grpc/grpc-js client on its unix socket and
 * the real dev server. Covered: capped status messages, the process-wide Mount queue, the `objects`
 * size and checks, and token checks before a cached token is used. Also content-following object
 * versions, error codes of the wrong shape, the Mount deadline, and a log scan for secrets and tokens.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { MAX_STATUS_MESSAGE_BYTES } from "../src/csi/messages.ts";
import { parsedObjectsCacheStats } from "../src/csi/objects.ts";
import { callError, connectCsi, mountAttributes, podToken, startProviderFixture, type ProviderFixture } from "./helpers/csi.ts";
import { makeJwt, serviceAccountClaims } from "./helpers/jwt.ts";

const INVALID_ARGUMENT = 3;
const NOT_FOUND = 5;
const PERMISSION_DENIED = 7;
const UNAVAILABLE = 14;
const UNAUTHENTICATED = 16;

const DATABASE = "environments/production/billing/database";
const STRIPE = "environments/production/billing/stripe";
const SEED: Record<string, Record<string, unknown>> = {
  [DATABASE]: { username: "billing", password: "limits-db-Pa55-6Hq" },
  [STRIPE]: { secret_key: "sk_live_limits_K1-4Tz", publishable_key: "pk_live_limits_2Pw" },
};
const SENSITIVE: string[] = ["limits-db-Pa55-6Hq", "sk_live_limits_K1-4Tz", "pk_live_limits_2Pw"];

let fixture: ProviderFixture;

beforeAll(async () => {
  fixture = await startProviderFixture({
    seed: SEED,
    config: { identities: { "sa:billing": { read: ["environments/production/billing/**"], write: [] } } },
    provider: { maxMounts: 2, mountQueue: 2, mountTimeoutMs: 3_000, requestTimeoutMs: 10_000 },
  });
  SENSITIVE.push(fixture.dev.rootToken);
});

afterAll(async () => {
  await fixture.stop();
});

async function addFault(fault: Record<string, unknown>): Promise<void> {
  const response = await fetch(`${fixture.dev.url}/v1/dev/faults`, {
    method: "POST",
    headers: { authorization: `Bearer ${fixture.dev.rootToken}`, "content-type": "application/json" },
    body: JSON.stringify(fault),
  });
  expect(response.status).toBe(201);
}

async function clearFaults(): Promise<void> {
  await fetch(`${fixture.dev.url}/v1/dev/faults`, { method: "DELETE", headers: { authorization: `Bearer ${fixture.dev.rootToken}` } });
}

function attributes(options: Partial<Parameters<typeof mountAttributes>[0]> = {}): string {
  const text = mountAttributes({ baseUrl: fixture.dev.url, ...options });
  for (const entry of Object.values(JSON.parse(JSON.parse(text)["csi.storage.k8s.io/serviceAccount.tokens"] ?? "{}") as Record<string, { token: string }>)) {
    SENSITIVE.push(entry.token);
  }
  return text;
}

function versions(response: { objectVersion: Array<{ id: string; version: string }> }): Record<string, string> {
  return Object.fromEntries(response.objectVersion.map((entry) => [entry.id, entry.version]));
}

describe("csi limits", () => {
  test("hundreds of failed objects get a capped message", async () => {
    const longPath = `environments/production/billing/${"missing-".repeat(20)}`;
    const objects = Array.from({ length: 300 }, (_, index) => `- path: ${longPath}${index}\n  file: f${index}`).join("\n");

    const [error, other] = await Promise.all([
      callError(() => fixture.client.mount({ attributes: attributes({ objects }) })),
      fixture.client.mount({ attributes: attributes() }),
    ]);

    expect(error.code).toBe(NOT_FOUND);
    expect(Buffer.byteLength(error.details)).toBeLessThanOrEqual(MAX_STATUS_MESSAGE_BYTES);
    expect(error.details).toContain("and 290 more");
    expect(other.files).toHaveLength(2);
    // The same client still works afterwards: the connection was not closed.
    expect((await fixture.client.mount({ attributes: attributes() })).files).toHaveLength(2);
  });

  test("hundreds of invalid objects get a capped message", async () => {
    const objects = Array.from({ length: 400 }, (_, index) => `- path: a/b${index}\n  file: ../${"x".repeat(200)}${index}`).join("\n");
    const error = await callError(() => fixture.client.mount({ attributes: attributes({ objects }) }));

    expect(error.code).toBe(INVALID_ARGUMENT);
    expect(Buffer.byteLength(error.details)).toBeLessThanOrEqual(MAX_STATUS_MESSAGE_BYTES);
    expect(error.details).toContain("and 390 more");
  });

  test("Mount calls beyond the queue get UNAVAILABLE", async () => {
    await addFault({ method: "POST", path_prefix: "/v1/secrets/batch", delay_ms: 1_500, count: 4 });
    try {
      const calls = Array.from({ length: 6 }, () => fixture.client.mount({ attributes: attributes() }).then(() => undefined, (error) => error));
      const results = await Promise.all(calls);
      const busy = results.filter((result) => result?.code === UNAVAILABLE);

      expect(busy).toHaveLength(2);
      expect(busy[0].details).toContain("The ScaiVault provider is busy: 2 Mount calls run and 2 wait");
      expect(results.filter((result) => result === undefined)).toHaveLength(4);
    } finally {
      await clearFaults();
    }
    const metrics = await (await fetch(`${fixture.provider.healthUrl}/metrics`)).text();
    expect(metrics).toMatch(/^scaivault_csi_mounts_rejected_total 2$/m);
  });

  test("a slow ScaiVault fails the Mount with UNAVAILABLE at its deadline", async () => {
    await addFault({ method: "POST", path_prefix: "/v1/secrets/batch", delay_ms: 6_000, count: 1 });
    try {
      const error = await callError(() => fixture.client.mount({ attributes: attributes() }));
      expect(error.code).toBe(UNAVAILABLE);
      expect(error.details).toContain("Mount deadline of 3 s");
    } finally {
      await clearFaults();
    }
  });

  test("a Retry-After past the Mount deadline fails at once", async () => {
    await addFault({ method: "POST", path_prefix: "/v1/secrets/batch", status: 429, code: "rate_limited", retry_after: 60, count: 1 });
    try {
      const error = await callError(() => fixture.client.mount({ attributes: attributes() }));
      expect(error.code).toBe(UNAVAILABLE);
      expect(error.details).toContain("ScaiVault asked to wait 60 s, more than the 3 s the agent waits");
    } finally {
      await clearFaults();
    }
  });

  test("cancelling one Mount keeps the exchange it shares", async () => {
    // A namespace of its own, so the service account has no cached ScaiVault token yet.
    const shared = attributes({ namespace: "cancel", tokens: { scaivault: podToken("cancel", "billing") } });
    const impatient = connectCsi(fixture.socketPath, 300);
    await addFault({ method: "POST", path_prefix: "/v1/auth/exchange", delay_ms: 1_000, count: 1 });
    try {
      const cancelled = callError(() => impatient.mount({ attributes: shared }));
      await Bun.sleep(50);
      const patient = fixture.client.mount({ attributes: shared });

      expect((await cancelled).code).toBe(4); // DEADLINE_EXCEEDED, set by the client
      expect((await patient).files).toHaveLength(2);
    } finally {
      impatient.close();
      await clearFaults();
    }
  });

  test("objects over 256 KiB are rejected and not cached", async () => {
    const before = parsedObjectsCacheStats();
    const objects = `- path: ${DATABASE}\n  file: db.json\n${"#".repeat(300 * 1024)}\n`;
    const error = await callError(() => fixture.client.mount({ attributes: attributes({ objects }) }));

    expect(error.code).toBe(INVALID_ARGUMENT);
    expect(error.details).toContain("more than the 262144 allowed");
    expect(parsedObjectsCacheStats()).toEqual(before);
  });

  test("rejected objects are not cached", async () => {
    const before = parsedObjectsCacheStats();
    await callError(() => fixture.client.mount({ attributes: attributes({ objects: `- path: ${DATABASE}\n  file: ../db.json` }) }));

    expect(parsedObjectsCacheStats()).toEqual(before);
  });

  test("objects checks reject bad files and modes", async () => {
    const cases: Array<[string, string]> = [
      [`- path: ${DATABASE}\n  file: certs\n- path: ${STRIPE}\n  file: certs/tls.crt`, 'file "certs/tls.crt" is inside "certs", which objects[0] writes as a file'],
      [`- path: ${DATABASE}\n  file: "db\\u0007.json"`, "contains a control character"],
      [`- path: ${DATABASE}\n  file: db.json\n  mode: 00`, 'mode "00" does not let the file\'s owner read it'],
      [`- path: ${DATABASE}\n  file: db.json\n  mode: 0044`, 'mode "0044" does not let the file\'s owner read it'],
      [`- path: ${DATABASE}\n  file: 0777`, 'file "0777" is a YAML number; quote it'],
      [`- path: ${DATABASE}\n  file: true`, 'file "true" is a YAML boolean; quote it'],
    ];

    for (const [objects, message] of cases) {
      const error = await callError(() => fixture.client.mount({ attributes: attributes({ objects }) }));
      expect(error.code).toBe(INVALID_ARGUMENT);
      expect(error.details).toContain(message);
    }
  });

  test("a quoted numeric file name is accepted", async () => {
    const response = await fixture.client.mount({ attributes: attributes({ objects: `- path: ${DATABASE}\n  file: "0777"` }) });
    expect(response.files.map((file) => file.path)).toEqual(["0777"]);
  });

  test("a cached ScaiVault token does not serve a pod token ScaiVault would reject", async () => {
    await fixture.client.mount({ attributes: attributes() });

    const forged: Array<[Record<string, unknown>, number, string]> = [
      [{ sub: undefined }, UNAUTHENTICATED, "has no sub claim"],
      [{ sub: "system:serviceaccount:billing:billing:evil" }, UNAUTHENTICATED, "has no sub claim of the form"],
      [{ exp: "never" }, UNAUTHENTICATED, "has no numeric exp claim"],
      [{ aud: ["other"] }, UNAUTHENTICATED, 'not "scaivault"'],
    ];
    for (const [overrides, code, message] of forged) {
      const token = makeJwt(serviceAccountClaims("billing", "billing", overrides));
      SENSITIVE.push(token);
      const error = await callError(() => fixture.client.mount({ attributes: attributes({ tokens: { scaivault: { token } } }) }));
      expect([code, PERMISSION_DENIED]).toContain(error.code);
      expect(error.details).toContain(message);
      expect(error.details).not.toContain(token);
    }
  });

  test("tokens in both attributes and secrets that differ are rejected", async () => {
    const other = { scaivault: podToken("billing", "billing", { jti: "another-token" }) };
    SENSITIVE.push(other.scaivault.token);
    const secrets = JSON.stringify({ "csi.storage.k8s.io/serviceAccount.tokens": JSON.stringify(other) });

    const error = await callError(() => fixture.client.mount({ attributes: attributes(), secrets }));

    expect(error.code).toBe(INVALID_ARGUMENT);
    expect(error.details).toContain("is in both the attributes and the secrets of the request");
  });

  test("object versions follow the file contents", async () => {
    const objects = `- path: ${STRIPE}\n  file: k1\n  field: secret_key\n- path: ${STRIPE}\n  file: k2\n  field: publishable_key\n- path: ${DATABASE}\n  file: db.json`;
    const first = versions(await fixture.client.mount({ attributes: attributes({ objects }) }));
    const unchanged = versions(await fixture.client.mount({ attributes: attributes({ objects }) }));
    expect(unchanged).toEqual(first);

    // Only k2's bytes change, although both fields live in one secret whose version bumps.
    fixture.dev.state.secrets.rotate(STRIPE, { secret_key: "sk_live_limits_K1-4Tz", publishable_key: "pk_live_limits_3Qx" });
    SENSITIVE.push("pk_live_limits_3Qx");
    const rotated = versions(await fixture.client.mount({ attributes: attributes({ objects }) }));
    expect(rotated.k2).not.toBe(first.k2!);
    expect(rotated.k1!.split("-")[1]).toBe(first.k1!.split("-")[1]!);
    expect(rotated["db.json"]).toBe(first["db.json"]!);

    // Deleted and written again: ScaiVault starts at version 1 again, the content differs.
    fixture.dev.state.secrets.delete(DATABASE);
    fixture.dev.state.secrets.write(DATABASE, { data: { username: "billing", password: "limits-db-N3w-8Jk" } });
    SENSITIVE.push("limits-db-N3w-8Jk");
    const recreated = versions(await fixture.client.mount({ attributes: attributes({ objects }) }));
    expect(recreated["db.json"]).not.toBe(first["db.json"]!);

    // The format changes the file, so it changes the version.
    const env = versions(await fixture.client.mount({ attributes: attributes({ objects: `- path: ${DATABASE}\n  file: db.json\n  format: env` }) }));
    expect(env["db.json"]).not.toBe(recreated["db.json"]!);
  });

  test("a server error code of the wrong shape becomes unknown", async () => {
    const echoed = `echo ${SENSITIVE.at(-1)}`;
    await addFault({ method: "POST", path_prefix: "/v1/secrets/batch", status: 403, code: echoed, count: 1 });
    try {
      const error = await callError(() => fixture.client.mount({ attributes: attributes() }));
      expect(error.details).toContain("unknown");
      expect(error.details).not.toContain(echoed);
    } finally {
      await clearFaults();
    }
  });

  test("the client keeps working after all the failures above", async () => {
    const client = connectCsi(fixture.socketPath);
    try {
      expect((await client.mount({ attributes: attributes() })).files).toHaveLength(2);
    } finally {
      client.close();
    }
  });

  test("provider logs and metrics hold no secret value or token", async () => {
    const metrics = await (await fetch(`${fixture.provider.healthUrl}/metrics`)).text();
    // The dev server's own log records the fault's code as it was set, so only the provider's lines count.
    const text = fixture.logs.filter((line) => !line.includes('"component":"dev"')).join("\n") + metrics;
    for (const value of SENSITIVE) expect(text).not.toContain(value);
  });
});
