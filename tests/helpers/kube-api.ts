/**
 * A local HTTPS server that implements the Kubernetes Secret endpoints `sync` uses: get, create
 * and replace with `resourceVersion`, with the API server's `Status` error bodies, a bearer-token
 * check, per-verb denials and hooks that play a concurrent writer. Certificates come from
 * `openssl` into a temp dir: a CA, a server certificate for 127.0.0.1 signed by it, and a second,
 * unrelated CA for the certificate-verification case.
 */
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface TestCertificates {
  caFile: string;
  /** A CA that did not sign the server certificate. */
  otherCaFile: string;
  certFile: string;
  keyFile: string;
}

/**
 * Creates the CA, the other CA and a server certificate for IP 127.0.0.1 in `dir` with openssl.
 *
 * @throws Error when openssl is missing or fails.
 */
export function makeCertificates(dir: string): TestCertificates {
  const file = (name: string) => join(dir, name);
  const openssl = (...args: string[]) => execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
  const ecKey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

  for (const name of ["ca", "other-ca"]) {
    openssl("req", "-x509", ...ecKey, "-keyout", file(`${name}.key`), "-out", file(`${name}.crt`), "-days", "2", "-subj", `/CN=${name} test`,
      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  }

  openssl("req", ...ecKey, "-keyout", file("server.key"), "-out", file("server.csr"), "-subj", "/CN=kube-apiserver test");
  writeFileSync(file("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n");
  openssl("x509", "-req", "-in", file("server.csr"), "-CA", file("ca.crt"), "-CAkey", file("ca.key"), "-CAcreateserial",
    "-out", file("server.crt"), "-days", "2", "-extfile", file("server.ext"));

  return { caFile: file("ca.crt"), otherCaFile: file("other-ca.crt"), certFile: file("server.crt"), keyFile: file("server.key") };
}

export type Verb = "get" | "create" | "update";

/** One request the server received; bodies are not kept. */
export interface RecordedRequest {
  method: string;
  path: string;
  query: string;
  authorization: string | null;
}

export interface StoredSecret {
  apiVersion: "v1";
  kind: "Secret";
  metadata: Record<string, any> & { name: string; namespace: string; resourceVersion: string };
  type: string;
  data?: Record<string, string>;
  immutable?: boolean;
}

export interface FakeKubeApi {
  url: string;
  port: number;
  requests: RecordedRequest[];
  /** Secrets by `namespace/name`. */
  secrets: Map<string, StoredSecret>;
  /** Verbs that get 403 Forbidden. */
  denied: Set<Verb>;
  /** Runs before a PUT is checked, to change the Secret as another writer would. */
  beforeUpdate?: (key: string) => void;
  /** Runs before a POST is checked. */
  beforeCreate?: (key: string) => void;
  /** Stores a Secret as if another writer created or changed it, with a new resourceVersion. */
  put(secret: Omit<StoredSecret, "metadata"> & { metadata: { name: string; namespace: string; [key: string]: unknown } }): StoredSecret;
  count(method: string): number;
  reset(): void;
  stop(): Promise<void>;
}

/** Starts the fake API server on 127.0.0.1 with TLS, accepting only `Bearer <token>`. */
export function startFakeKubeApi(certs: TestCertificates, token: string): FakeKubeApi {
  let resourceVersion = 1000;
  const nextVersion = () => String(++resourceVersion);
  const api: Omit<FakeKubeApi, "url" | "port" | "stop"> = {
    requests: [],
    secrets: new Map(),
    denied: new Set(),
    put(secret) {
      const key = `${secret.metadata.namespace}/${secret.metadata.name}`;
      const existing = api.secrets.get(key);
      const stored = structuredClone({
        ...secret,
        metadata: {
          uid: existing?.metadata.uid ?? randomUUID(),
          creationTimestamp: existing?.metadata.creationTimestamp ?? new Date().toISOString(),
          ...secret.metadata,
          resourceVersion: nextVersion(),
        },
      }) as StoredSecret;
      api.secrets.set(key, stored);
      return stored;
    },
    count(method) {
      return api.requests.filter((request) => request.method === method).length;
    },
    reset() {
      api.requests.length = 0;
      api.secrets.clear();
      api.denied.clear();
      api.beforeUpdate = undefined;
      api.beforeCreate = undefined;
    },
  };

  async function handle(request: Request): Promise<Response> {
    const url = new URL(request.url);
    api.requests.push({ method: request.method, path: url.pathname, query: url.search, authorization: request.headers.get("authorization") });

    if (request.headers.get("authorization") !== `Bearer ${token}`) return status(401, "Unauthorized", "Unauthorized");

    const match = url.pathname.match(/^\/api\/v1\/namespaces\/([^/]+)\/secrets(?:\/([^/]+))?$/);
    if (!match) return status(404, "NotFound", "the server could not find the requested resource");
    const namespace = decodeURIComponent(match[1]!);
    const name = match[2] === undefined ? undefined : decodeURIComponent(match[2]);

    if (request.method === "GET" && name) return getSecret(namespace, name);
    if (request.method === "POST" && !name) return createSecret(namespace, (await request.json()) as StoredSecret, url);
    if (request.method === "PUT" && name) return replaceSecret(namespace, name, (await request.json()) as StoredSecret, url);
    return status(405, "MethodNotAllowed", "method not allowed");
  }

  function getSecret(namespace: string, name: string): Response {
    if (api.denied.has("get")) return forbidden("get", namespace, name);
    const secret = api.secrets.get(`${namespace}/${name}`);
    return secret ? json(200, secret) : status(404, "NotFound", `secrets "${name}" not found`, name);
  }

  function createSecret(namespace: string, body: StoredSecret, url: URL): Response {
    const name = body.metadata?.name;
    if (api.denied.has("create")) return forbidden("create", namespace, name);
    api.beforeCreate?.(`${namespace}/${name}`);

    const problem = invalidSecret(body);
    if (problem) return status(422, "Invalid", `Secret "${name}" is invalid`, name, problem);
    if (api.secrets.has(`${namespace}/${name}`)) return status(409, "AlreadyExists", `secrets "${name}" already exists`, name);

    const stored = api.put({ ...body, metadata: { ...body.metadata, namespace, managedFields: managedFields(url) } });
    return json(201, stored);
  }

  function replaceSecret(namespace: string, name: string, body: StoredSecret, url: URL): Response {
    if (api.denied.has("update")) return forbidden("update", namespace, name);
    const key = `${namespace}/${name}`;
    api.beforeUpdate?.(key);

    const current = api.secrets.get(key);
    if (!current) return status(404, "NotFound", `secrets "${name}" not found`, name);

    // This server demands the version that was read, so a test proves that sync sends it.
    if (!body.metadata?.resourceVersion) return status(422, "Invalid", "metadata.resourceVersion must be specified for an update", name, "metadata.resourceVersion");
    if (body.metadata.resourceVersion !== current.metadata.resourceVersion) {
      return status(409, "Conflict", `Operation cannot be fulfilled on secrets "${name}": the object has been modified; please apply your changes to the latest version and try again`, name);
    }

    const problem = invalidSecret(body);
    if (problem) return status(422, "Invalid", `Secret "${name}" is invalid`, name, problem);
    if (body.type !== current.type) return status(422, "Invalid", `Secret "${name}" is invalid: type: field is immutable`, name, "type");

    const stored = api.put({ ...body, metadata: { ...body.metadata, namespace, managedFields: managedFields(url) } });
    return json(200, stored);
  }

  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: readFileSync(certs.certFile, "utf8"), key: readFileSync(certs.keyFile, "utf8") },
    fetch: handle,
  });

  return Object.assign(api, {
    url: `https://127.0.0.1:${server.port}`,
    port: server.port!,
    stop: async () => {
      await server.stop(true);
    },
  }) as FakeKubeApi;
}

// ---------------------------------------------------------------------------------------------

function json(code: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status: code, headers: { "content-type": "application/json" } });
}

function status(code: number, reason: string, message: string, name?: string, field?: string): Response {
  return json(code, {
    kind: "Status",
    apiVersion: "v1",
    metadata: {},
    status: "Failure",
    message,
    reason,
    details: { name, kind: "secrets", ...(field ? { causes: [{ reason: "FieldValueInvalid", field }] } : {}) },
    code,
  });
}

function forbidden(verb: Verb, namespace: string, name: string | undefined): Response {
  const message = `secrets "${name}" is forbidden: User "system:serviceaccount:${namespace}:scaivault-sync" cannot ${verb} resource "secrets" in API group "" in the namespace "${namespace}"`;
  return status(403, "Forbidden", message, name);
}

function managedFields(url: URL): unknown[] {
  return [{ manager: url.searchParams.get("fieldManager") ?? "unknown", operation: "Update", apiVersion: "v1" }];
}

/** Returns the field that makes `body` an invalid Secret, or undefined. */
function invalidSecret(body: StoredSecret): string | undefined {
  if (body.apiVersion !== "v1" || body.kind !== "Secret") return "kind";
  if (!body.metadata?.name) return "metadata.name";
  for (const [key, value] of Object.entries(body.data ?? {})) {
    if (!/^[-._a-zA-Z0-9]+$/.test(key)) return `data[${key}]`;
    if (typeof value !== "string" || Buffer.from(value, "base64").toString("base64") !== value) return `data[${key}]`;
  }
  return undefined;
}
