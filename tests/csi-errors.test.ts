/**
 * Every way a Mount fails, through the real gRPC client against the real dev server: the gRPC
 * status and the exact message, which names the object and the fix and never a value or token.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createServer } from "node:net";
import { callError, mountAttributes, podToken, startProviderFixture, type PodOptions, type ProviderFixture } from "./helpers/csi.ts";
import { makeJwt, serviceAccountClaims } from "./helpers/jwt.ts";

const DATABASE = "environments/production/billing/database";
const STRIPE = "environments/production/billing/stripe";
const PAYROLL = "environments/production/payroll/database";
const SEED = {
  [DATABASE]: { username: "billing", password: "db-err-Pa55-w0rd-8Ux" },
  [STRIPE]: { secret_key: "sk_live_err_Str1pe_2Lp" },
  [PAYROLL]: { password: "payroll-err-Den1ed-6Vb" },
};
const PREFIX = 'Invalid SecretProviderClass "scaivault-billing" in namespace "billing": ';
const FIX = 'add tokenRequests with audience "scaivault" to the CSIDriver secrets-store.csi.k8s.io (Helm: --set tokenRequests[0].audience=scaivault)';

/** gRPC status codes. */
const INVALID_ARGUMENT = 3;
const NOT_FOUND = 5;
const PERMISSION_DENIED = 7;
const UNAVAILABLE = 14;
const UNAUTHENTICATED = 16;

let fixture: ProviderFixture;
let unreachableUrl: string;
const messages: string[] = [];
const SENSITIVE: string[] = ["db-err-Pa55-w0rd-8Ux", "sk_live_err_Str1pe_2Lp", "payroll-err-Den1ed-6Vb"];

beforeAll(async () => {
  unreachableUrl = `http://127.0.0.1:${await closedPort()}`;
  fixture = await startProviderFixture({
    seed: SEED,
    extraAllowedUrls: [unreachableUrl],
    config: { identities: { "sa:billing": { read: ["environments/production/billing/**"], write: [] } } },
  });
  SENSITIVE.push(fixture.dev.rootToken);
});

afterAll(async () => {
  await fixture.stop();
});

describe("csi mount errors", () => {
  test.each([
    [
      "invalid YAML",
      "- path: [unclosed\n  file: x",
      `${PREFIX}parameter objects is not valid YAML: Flow sequence in block collection must be sufficiently indented and end with a ] at line 2, column 3; write a YAML list`,
    ],
    ["a duplicate key", "- path: a/b\n  path: c/d", `${PREFIX}parameter objects is not valid YAML: Map keys must be unique at line 2, column 3; write a YAML list`],
    ["a mapping instead of a list", "path: a/b\nfile: x", `${PREFIX}parameter objects must be a YAML list (entries starting with -), each with path and file`],
    ["a missing path", "- file: db.json", `${PREFIX}objects[0] (file "db.json"): path is missing; set it to the secret's path, such as environments/production/billing/database`],
    [
      "a duplicate file",
      `- path: ${DATABASE}\n  file: db.json\n- path: ${STRIPE}\n  file: db.json`,
      `${PREFIX}objects[1] (path "${STRIPE}"): file "db.json" is already used by objects[0]; give each object its own file`,
    ],
    ["an absolute file", `- path: ${DATABASE}\n  file: /etc/passwd`, `${PREFIX}objects[0] (path "${DATABASE}"): file "/etc/passwd" is an absolute path; write a relative name such as db.json`],
    ["a .. file", `- path: ${DATABASE}\n  file: ../../etc/db.json`, `${PREFIX}objects[0] (path "${DATABASE}"): file "../../etc/db.json" contains ".."; write a name inside the volume, such as db.json`],
    ["an invalid path", "- path: Environments/Prod\n  file: x", `${PREFIX}objects[0] (path "Environments/Prod"): invalid path: the path contains "E", but only a-z, 0-9, -, _ and / are allowed`],
    ["an unknown key", `- path: ${DATABASE}\n  file: db.json\n  feild: password`, `${PREFIX}objects[0]: unknown key "feild"; the keys are path, file, field, mode, version, format, encoding`],
    ["a decimal mode", `- path: ${DATABASE}\n  file: db.json\n  mode: 420`, `${PREFIX}objects[0] (path "${DATABASE}"): mode "420" must be octal with a leading zero, such as 0400 or 0644`],
    ["a bad version", `- path: ${DATABASE}\n  file: db.json\n  version: latest`, `${PREFIX}objects[0] (path "${DATABASE}"): version "latest" must be a whole number of 1 or more; remove it to read the current version`],
    ["an empty list", "[]", `${PREFIX}parameter objects is an empty list: add at least one entry with path and file`],
  ])("rejects %s", async (_name, objects, message) => {
    const error = await mountError({ objects });

    expect(error.code).toBe(INVALID_ARGUMENT);
    expect(error.details.startsWith(message)).toBe(true);
  });

  test("rejects several problems in one message", async () => {
    const error = await mountError({ objects: `- file: a\n- path: ${DATABASE}\n  file: /abs` });

    expect(error.details).toBe(
      `${PREFIX}objects[0] (file "a"): path is missing; set it to the secret's path, such as environments/production/billing/database; ` +
        `objects[1] (path "${DATABASE}"): file "/abs" is an absolute path; write a relative name such as db.json`,
    );
  });

  test("rejects a missing base_url", async () => {
    const error = await mountError({ baseUrl: "" });

    expect(error.code).toBe(INVALID_ARGUMENT);
    expect(error.details).toBe(`${PREFIX}parameter base_url is missing: set it to the ScaiVault URL, such as https://scaivault.scailabs.ai`);
  });

  test("rejects a base_url outside SCAIVAULT_ALLOWED_URLS", async () => {
    const error = await mountError({ baseUrl: "https://attacker.example" });

    expect(error.code).toBe(INVALID_ARGUMENT);
    expect(error.details).toBe(
      `${PREFIX}parameter base_url "https://attacker.example" is not allowed: this provider only allows ${fixture.dev.url}, ${unreachableUrl} (SCAIVAULT_ALLOWED_URLS); ask the cluster operator to add the URL`,
    );
  });

  test("rejects a request without tokens", async () => {
    const error = await mountError({ tokens: null });

    expect(error.code).toBe(INVALID_ARGUMENT);
    expect(error.details).toBe(`${PREFIX}the Mount request has no service-account tokens: ${FIX}`);
  });

  test("rejects tokens without the audience", async () => {
    const error = await mountError({ tokens: { vault: podToken("billing", "billing", { aud: ["vault"] }) } });
    remember(error);

    expect(error.code).toBe(INVALID_ARGUMENT);
    expect(error.details).toBe(
      `${PREFIX}no service-account token for audience "scaivault" (the request has tokens for "vault"): ${FIX}, or set the parameter audience to the one the CSIDriver requests`,
    );
  });

  test("rejects an expired token", async () => {
    const now = Math.floor(Date.now() / 1000);
    const expired = makeJwt(serviceAccountClaims("billing", "billing", { iat: now - 7200, nbf: now - 7200, exp: now - 60 }));
    const error = await mountError({ tokens: { scaivault: { token: expired } } });
    remember(error, expired);

    expect(error.code).toBe(UNAUTHENTICATED);
    expect(error.details).toBe(
      `The service-account token of pod "billing/billing-0" for audience "scaivault" expired at ${new Date((now - 60) * 1000).toISOString()}; ` +
        "the kubelet sends a fresh one with the next mount, so check the node's clock if this repeats",
    );
  });

  test("rejects a token whose expirationTimestamp passed", async () => {
    const token = podToken("billing", "billing");
    const error = await mountError({ tokens: { scaivault: { token: token.token, expirationTimestamp: "2020-01-01T00:00:00Z" } } });
    remember(error, token.token);

    expect(error.code).toBe(UNAUTHENTICATED);
    expect(error.details).toStartWith('The service-account token of pod "billing/billing-0" for audience "scaivault" expired at 2020-01-01T00:00:00.000Z');
  });

  test("rejects a token for the wrong audience", async () => {
    const token = podToken("billing", "billing", { aud: ["https://kubernetes.default.svc"] });
    const error = await mountError({ tokens: { scaivault: token } });
    remember(error, token.token);

    expect(error.code).toBe(UNAUTHENTICATED);
    expect(error.details).toBe(
      'The service-account token of pod "billing/billing-0" is for the audience ["https://kubernetes.default.svc"], not "scaivault": ' +
        'set tokenRequests audience "scaivault" on the CSIDriver secrets-store.csi.k8s.io, or set the SecretProviderClass parameter audience to match',
    );
  });

  test("rejects a token of another service account", async () => {
    const token = podToken("billing", "admin");
    const error = await mountError({ tokens: { scaivault: token } });
    remember(error, token.token);

    expect(error.code).toBe(UNAUTHENTICATED);
    expect(error.details).toBe('The service-account token of pod "billing/billing-0" belongs to "billing/admin", not to the pod\'s service account "billing/billing"');
  });

  test("reports an exchange that ScaiVault refuses", async () => {
    const token = podToken("billing", "intruder");
    const error = await mountError({ serviceAccount: "intruder", tokens: { scaivault: token } });
    remember(error, token.token);

    expect(error.code).toBe(PERMISSION_DENIED);
    expect(error.details).toBe(
      'Cannot mount SecretProviderClass "scaivault-billing" for pod "billing/billing-0": ScaiVault rejected auth.exchange: 403 access_denied; ' +
        'grant the ScaiVault identity of service account "billing/intruder" read access',
    );
  });

  test("names the path of a missing secret", async () => {
    const error = await mountError({ objects: `- path: ${DATABASE}\n  file: db.json\n- path: environments/production/billing/missing\n  file: missing.json` });

    expect(error.code).toBe(NOT_FOUND);
    expect(error.details).toBe(
      'Cannot mount SecretProviderClass "scaivault-billing" for pod "billing/billing-0": ' +
        'Cannot read secret "environments/production/billing/missing" for file "missing.json": secret_not_found; check the path and version in objects',
    );
  });

  test("names the path of a forbidden secret", async () => {
    const error = await mountError({ objects: `- path: ${PAYROLL}\n  file: payroll.json` });

    expect(error.code).toBe(PERMISSION_DENIED);
    expect(error.details).toBe(
      'Cannot mount SecretProviderClass "scaivault-billing" for pod "billing/billing-0": ' +
        `Cannot read secret "${PAYROLL}" for file "payroll.json": access_denied; grant the ScaiVault identity of service account "billing/billing" read access`,
    );
  });

  test("names the path and field of a missing field", async () => {
    const error = await mountError({ objects: `- path: ${STRIPE}\n  file: key\n  field: secret_kee` });

    expect(error.code).toBe(NOT_FOUND);
    expect(error.details).toBe(
      'Cannot mount SecretProviderClass "scaivault-billing" for pod "billing/billing-0": ' +
        `Cannot render secret "${STRIPE}" into file "key": field "secret_kee" not found; the secret has the fields: secret_key`,
    );
  });

  test("reports an unreachable ScaiVault as UNAVAILABLE", async () => {
    const baseUrl = unreachableUrl;
    const error = await mountError({ baseUrl });

    expect(error.code).toBe(UNAVAILABLE);
    expect(error.details).toStartWith(`Cannot mount SecretProviderClass "scaivault-billing" for pod "billing/billing-0": Cannot reach ScaiVault at ${baseUrl} for POST auth.exchange`);
  });

  test("messages and logs hold no secret value or token", () => {
    const text = messages.join("\n") + "\n" + fixture.logs.join("\n");
    const leaks = SENSITIVE.filter((value) => text.includes(value));

    expect(messages.length).toBeGreaterThan(20);
    expect(leaks).toEqual([]);
    expect(text).not.toMatch(/svt_[A-Za-z0-9_-]{16}|eyJ[A-Za-z0-9_-]{10}/);
  });
});

// ---------------------------------------------------------------------------------------------

/** Mounts with the defaults of `mountAttributes` overridden and returns the gRPC error. */
async function mountError(options: Partial<PodOptions>) {
  const attributes = mountAttributes({ baseUrl: fixture.dev.url, ...options });
  const tokens = JSON.parse(attributes)["csi.storage.k8s.io/serviceAccount.tokens"];
  if (tokens) for (const entry of Object.values(JSON.parse(tokens) as Record<string, { token: string }>)) SENSITIVE.push(entry.token);

  const error = await callError(() => fixture.client.mount({ attributes }));
  messages.push(error.details);
  return error;
}

function remember(error: { details: string }, token?: string): void {
  messages.push(error.details);
  if (token) SENSITIVE.push(token);
}

/** Returns a port on 127.0.0.1 that nothing listens on. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
