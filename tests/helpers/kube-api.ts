/**
 * A local HTTPS server that implements the Kubernetes endpoints `sync` uses: Secret get, create
 * and replace with `resourceVersion`, and get and merge-patch of Deployments, StatefulSets and
 * DaemonSets. It responds with the API server's `Status` error bodies, checks the bearer token,
 * validates Secrets as Kubernetes does (key names, 1 MiB of data), and has per-verb denials and
 * hooks that play a concurrent writer. Certificates come from `openssl` into a temp dir: a CA, a
 * server certificate for 127.0.0.1 signed by it, and a second, unrelated CA for the
 * certificate-verification case.
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
export type WorkloadVerb = "get" | "patch";
export type WorkloadResource = "deployments" | "statefulsets" | "daemonsets";

/** One request the server received; bodies are not kept. */
export interface RecordedRequest {
  method: string;
  path: string;
  query: string;
  authorization: string | null;
  contentType: string | null;
}

export interface StoredWorkload {
  apiVersion: "apps/v1";
  kind: string;
  metadata: Record<string, any> & { name: string; namespace: string; resourceVersion: string; generation: number };
  spec: Record<string, any> & { template: { metadata?: { annotations?: Record<string, string>; [key: string]: unknown }; [key: string]: unknown } };
}

/** One cause of a Status error, as the API server reports it. */
export interface StatusCause {
  reason: string;
  field?: string;
  message?: string;
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
  /** Verbs on Secrets that get 403 Forbidden. */
  denied: Set<Verb>;
  /** Workloads by `resource/namespace/name`, such as `deployments/billing/billing`. */
  workloads: Map<string, StoredWorkload>;
  /** Verbs on workloads that get 403 Forbidden. */
  deniedWorkloads: Set<WorkloadVerb>;
  /** Status error to send for the next request instead of handling it. */
  failNext?: { code: number; reason: string; message: string; causes?: StatusCause[] };
  /** Stores a workload with a pod template, as if someone had applied it. */
  putWorkload(resource: WorkloadResource, namespace: string, name: string, templateAnnotations?: Record<string, string>): StoredWorkload;
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
    workloads: new Map(),
    deniedWorkloads: new Set(),
    putWorkload(resource, namespace, name, templateAnnotations) {
      const kind = { deployments: "Deployment", statefulsets: "StatefulSet", daemonsets: "DaemonSet" }[resource];
      const workload: StoredWorkload = {
        apiVersion: "apps/v1",
        kind,
        metadata: { name, namespace, uid: randomUUID(), resourceVersion: nextVersion(), generation: 1 },
        spec: {
          selector: { matchLabels: { app: name } },
          template: { metadata: { labels: { app: name }, ...(templateAnnotations ? { annotations: templateAnnotations } : {}) }, spec: { containers: [{ name, image: "app:1" }] } },
        },
      };
      api.workloads.set(`${resource}/${namespace}/${name}`, workload);
      return workload;
    },
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
      api.workloads.clear();
      api.deniedWorkloads.clear();
      api.failNext = undefined;
      api.beforeUpdate = undefined;
      api.beforeCreate = undefined;
    },
  };

  async function handle(request: Request): Promise<Response> {
    const url = new URL(request.url);
    api.requests.push({
      method: request.method,
      path: url.pathname,
      query: url.search,
      authorization: request.headers.get("authorization"),
      contentType: request.headers.get("content-type"),
    });

    if (request.headers.get("authorization") !== `Bearer ${token}`) return status(401, "Unauthorized", "Unauthorized");

    const injected = api.failNext;
    if (injected) {
      api.failNext = undefined;
      return status(injected.code, injected.reason, injected.message, undefined, injected.causes);
    }

    const workload = url.pathname.match(/^\/apis\/apps\/v1\/namespaces\/([^/]+)\/(deployments|statefulsets|daemonsets)\/([^/]+)$/);
    if (workload) return handleWorkload(request, workload[2] as WorkloadResource, decodeURIComponent(workload[1]!), decodeURIComponent(workload[3]!));

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

    const causes = invalidSecret(body);
    if (causes.length) return status(422, "Invalid", `Secret "${name}" is invalid`, name, causes);
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
    if (!body.metadata?.resourceVersion) {
      return status(422, "Invalid", "metadata.resourceVersion must be specified for an update", name, [
        { reason: "FieldValueInvalid", field: "metadata.resourceVersion", message: "Invalid value: 0x0: must be specified for an update" },
      ]);
    }
    if (body.metadata.resourceVersion !== current.metadata.resourceVersion) {
      return status(409, "Conflict", `Operation cannot be fulfilled on secrets "${name}": the object has been modified; please apply your changes to the latest version and try again`, name);
    }

    const causes = invalidSecret(body);
    if (causes.length) return status(422, "Invalid", `Secret "${name}" is invalid`, name, causes);
    if (body.type !== current.type) {
      return status(422, "Invalid", `Secret "${name}" is invalid: type: field is immutable`, name, [{ reason: "FieldValueInvalid", field: "type", message: "Invalid value: \"" + body.type + "\": field is immutable" }]);
    }

    const stored = api.put({ ...body, metadata: { ...body.metadata, namespace, managedFields: managedFields(url) } });
    return json(200, stored);
  }

  async function handleWorkload(request: Request, resource: WorkloadResource, namespace: string, name: string): Promise<Response> {
    const verbs: Record<string, WorkloadVerb> = { GET: "get", PATCH: "patch" };
    const verb = verbs[request.method];
    if (!verb) return status(405, "MethodNotAllowed", "method not allowed");
    if (api.deniedWorkloads.has(verb)) {
      const message = `${resource}.apps "${name}" is forbidden: User "system:serviceaccount:${namespace}:scaivault-sync" cannot ${verb} resource "${resource}" in API group "apps" in the namespace "${namespace}"`;
      return status(403, "Forbidden", message, name);
    }

    const key = `${resource}/${namespace}/${name}`;
    const current = api.workloads.get(key);
    if (!current) return status(404, "NotFound", `${resource}.apps "${name}" not found`, name);
    if (verb === "get") return json(200, current);

    const type = request.headers.get("content-type");
    if (type !== "application/merge-patch+json" && type !== "application/strategic-merge-patch+json") {
      return status(415, "UnsupportedMediaType", `the body of the request was in an unknown format - accepted media types include: application/merge-patch+json`);
    }

    const patched = mergePatch(structuredClone(current), await request.json()) as StoredWorkload;
    const specChanged = JSON.stringify(patched.spec) !== JSON.stringify(current.spec);
    patched.metadata = { ...patched.metadata, name, namespace, resourceVersion: nextVersion(), generation: current.metadata.generation + (specChanged ? 1 : 0) };
    api.workloads.set(key, patched);
    return json(200, patched);
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

function status(code: number, reason: string, message: string, name?: string, causes?: StatusCause[]): Response {
  return json(code, {
    kind: "Status",
    apiVersion: "v1",
    metadata: {},
    status: "Failure",
    message,
    reason,
    details: { name, kind: "secrets", ...(causes?.length ? { causes } : {}) },
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

/** Applies a JSON merge patch (RFC 7386): objects merge, null removes, anything else replaces. */
function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
  const result: Record<string, unknown> = target !== null && typeof target === "object" && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = mergePatch(result[key], value);
  }
  return result;
}

/**
 * Returns the causes that make `body` an invalid Secret, with Kubernetes' field names and
 * messages: `IsConfigMapKey` for each key and the 1 MiB limit on the decoded data.
 */
function invalidSecret(body: StoredSecret): StatusCause[] {
  if (body.apiVersion !== "v1" || body.kind !== "Secret") return [{ reason: "FieldValueInvalid", field: "kind" }];
  if (!body.metadata?.name) return [{ reason: "FieldValueRequired", field: "metadata.name", message: "Required value: name or generateName is required" }];

  const causes: StatusCause[] = [];
  let total = 0;
  for (const [key, value] of Object.entries(body.data ?? {})) {
    const field = `data[${key}]`;
    if (!/^[-._a-zA-Z0-9]+$/.test(key)) causes.push({ reason: "FieldValueInvalid", field, message: `Invalid value: "${key}": a valid config key must consist of alphanumeric characters, '-', '_' or '.'` });
    else if (key === "." || key === "..") causes.push({ reason: "FieldValueInvalid", field, message: `Invalid value: "${key}": must not be '${key}'` });
    else if (key.startsWith("..")) causes.push({ reason: "FieldValueInvalid", field, message: `Invalid value: "${key}": must not start with '..'` });

    if (typeof value !== "string" || Buffer.from(value, "base64").toString("base64") !== value) causes.push({ reason: "FieldValueInvalid", field, message: "Invalid value: <value>: illegal base64 data" });
    else total += Buffer.from(value, "base64").length;
  }
  if (total > 1024 * 1024) causes.push({ reason: "FieldValueTooLong", field: "data", message: "Too long: may not be more than 1048576 bytes" });
  return causes;
}
