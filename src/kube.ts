/**
 * The few Kubernetes API calls that `sync` needs: read, create and replace one Secret, and read
 * and patch the pod template of the workloads it restarts. Requests carry the service-account
 * token, re-read from its file for every request because the kubelet rotates it. Retries: 429
 * after `Retry-After`, 500/502/503/504 and connection failures with backoff, and 401 once with a
 * freshly read token. A 409 is returned to the caller, which re-reads the Secret: only the caller
 * knows how to merge.
 */
import { readFile } from "node:fs/promises";
import { AgentError } from "./errors.ts";
import { statusError } from "./kube-errors.ts";
import { getLogger } from "./log.ts";
import { backoffDelay, sleep, type BackoffOptions } from "./retry.ts";
import type { FetchFunction } from "./runtime.ts";
import { VERSION } from "./version.ts";

const log = getLogger("kube");

/** Field manager recorded in the Secret's `managedFields`. */
export const FIELD_MANAGER = "scaivault-agent";

/** A core/v1 Secret, with only the fields `sync` reads or writes. */
export interface KubeSecret {
  apiVersion: "v1";
  kind: "Secret";
  metadata: {
    name: string;
    namespace?: string;
    resourceVersion?: string;
    uid?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    [key: string]: unknown;
  };
  type?: string;
  /** Key to base64 of the value's bytes. */
  data?: Record<string, string>;
  immutable?: boolean;
}

/** Kinds of workload whose pods `sync` can restart, all in the `apps/v1` API group. */
export type WorkloadKind = "Deployment" | "StatefulSet" | "DaemonSet";

/** A Deployment, StatefulSet or DaemonSet, with only the fields `sync` reads. */
export interface KubeWorkload {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; resourceVersion?: string; generation?: number; [key: string]: unknown };
  spec?: { template?: { metadata?: { annotations?: Record<string, string>; [key: string]: unknown }; [key: string]: unknown }; [key: string]: unknown };
}

export interface KubeClientOptions {
  /** API server base URL, such as https://10.96.0.1:443. */
  apiUrl: string;
  /** Bearer token file: the pod's service-account token. */
  tokenFile: string;
  /** A `fetch` that trusts the cluster CA (see `createFetch`). */
  fetch: FetchFunction;
  /** Ends every request and wait at once. */
  signal?: AbortSignal;
  /** Timeout of one attempt in milliseconds. @default 15000 */
  requestTimeoutMs?: number;
  /** Attempts per call, the first included. @default 5 */
  maxAttempts?: number;
  backoff?: BackoffOptions;
}

/** Client for the Secret and workload endpoints of the Kubernetes API that `sync` uses. */
export class KubeClient {
  readonly apiUrl: string;
  readonly #options: KubeClientOptions;

  constructor(options: KubeClientOptions) {
    let url: URL;
    try {
      url = new URL(options.apiUrl);
    } catch {
      throw new AgentError("config", `Invalid Kubernetes API URL "${options.apiUrl}": write a URL such as https://10.96.0.1:443`);
    }
    if (url.protocol !== "https:") {
      throw new AgentError("config", `Invalid Kubernetes API URL "${options.apiUrl}": use https://, because the token must not travel in clear text`);
    }

    this.apiUrl = url.href.replace(/\/+$/, "");
    this.#options = options;
  }

  /**
   * Reads a Secret.
   *
   * @returns the Secret, or undefined when it does not exist.
   * @throws AgentError `forbidden`, `auth`, `unreachable` or `server`.
   */
  async getSecret(namespace: string, name: string): Promise<KubeSecret | undefined> {
    try {
      return (await this.#request("GET", secretPath(namespace, name), `get Secret "${namespace}/${name}"`, undefined, SECRET_REQUEST)) as KubeSecret;
    } catch (error) {
      if (error instanceof AgentError && error.status === 404) return undefined;
      throw error;
    }
  }

  /**
   * Creates a Secret.
   *
   * @throws AgentError with `serverCode` "AlreadyExists" (status 409) when another writer created it first.
   */
  async createSecret(namespace: string, secret: KubeSecret): Promise<KubeSecret> {
    const path = `${secretPath(namespace)}?fieldManager=${FIELD_MANAGER}`;
    const options = { ...SECRET_REQUEST, sentValues: secretValues(secret) };
    return (await this.#request("POST", path, `create Secret "${namespace}/${secret.metadata.name}"`, secret, options)) as KubeSecret;
  }

  /**
   * Replaces a Secret; `secret.metadata.resourceVersion` must be the version that was read.
   *
   * @throws AgentError with `serverCode` "Conflict" (status 409) when the Secret changed since.
   */
  async replaceSecret(namespace: string, secret: KubeSecret): Promise<KubeSecret> {
    const path = `${secretPath(namespace, secret.metadata.name)}?fieldManager=${FIELD_MANAGER}`;
    const options = { ...SECRET_REQUEST, sentValues: secretValues(secret) };
    return (await this.#request("PUT", path, `update Secret "${namespace}/${secret.metadata.name}"`, secret, options)) as KubeSecret;
  }

  /**
   * Reads a Deployment, StatefulSet or DaemonSet.
   *
   * @returns the workload, or undefined when it does not exist.
   * @throws AgentError `forbidden`, `auth`, `unreachable` or `server`.
   */
  async getWorkload(namespace: string, kind: WorkloadKind, name: string): Promise<KubeWorkload | undefined> {
    try {
      return (await this.#request("GET", workloadPath(namespace, kind, name), `get ${kind} "${namespace}/${name}"`, undefined, workloadRequest(kind, name))) as KubeWorkload;
    } catch (error) {
      if (error instanceof AgentError && error.status === 404) return undefined;
      throw error;
    }
  }

  /**
   * Sets annotations of a workload's pod template with a JSON merge patch (RFC 7386), which
   * changes nothing else. A changed pod template makes the controller roll out new pods, as
   * `kubectl rollout restart` does with its own annotation.
   */
  async patchPodTemplateAnnotations(namespace: string, kind: WorkloadKind, name: string, annotations: Record<string, string>): Promise<KubeWorkload> {
    const path = `${workloadPath(namespace, kind, name)}?fieldManager=${FIELD_MANAGER}`;
    const patch = { spec: { template: { metadata: { annotations } } } };
    const options = { ...workloadRequest(kind, name), contentType: "application/merge-patch+json" };
    return (await this.#request("PATCH", path, `patch ${kind} "${namespace}/${name}"`, patch, options)) as KubeWorkload;
  }

  // -------------------------------------------------------------------------------------------

  async #request(method: string, path: string, action: string, body: unknown, options: RequestOptions): Promise<unknown> {
    const maxAttempts = this.#options.maxAttempts ?? 5;
    let tokenRetried = false;
    let lastError: AgentError | undefined;

    for (let attempt = 1; attempt <= maxAttempts; attempt++) {
      if (this.#options.signal?.aborted) throw lastError ?? new AgentError("timeout", `Cannot ${action}: the deadline passed or the agent is stopping`);

      let waitMs: number;
      try {
        return await this.#send(method, path, action, body, options);
      } catch (error) {
        if (!(error instanceof AgentError)) throw error;
        lastError = error;

        if (error.status === 401 && !tokenRetried) {
          // The kubelet may have rotated the token file since it was read: read it again, once.
          tokenRetried = true;
          log.info("Kubernetes API rejected the token, reading the token file again", { action, tokenFile: this.#options.tokenFile });
          continue;
        }
        if (!isRetryable(error)) throw error;
        waitMs = error.retryAfterMs ?? backoffDelay(attempt, this.#options.backoff);
      }

      if (attempt === maxAttempts) break;
      log.warn("Kubernetes API request failed, retrying", { action, attempt, delayMs: waitMs, error: lastError.message, status: lastError.status });
      try {
        await sleep(waitMs, this.#options.signal);
      } catch {
        throw lastError;
      }
    }

    throw new AgentError(lastError!.code, `${lastError!.message} (gave up after ${maxAttempts} attempts)`, {
      cause: lastError,
      serverCode: lastError!.serverCode,
      status: lastError!.status,
    });
  }

  async #send(method: string, path: string, action: string, body: unknown, options: RequestOptions): Promise<unknown> {
    const token = await readServiceAccountToken(this.#options.tokenFile);
    const headers: Record<string, string> = {
      accept: "application/json",
      authorization: `Bearer ${token}`,
      "user-agent": `scaivault-agent/${VERSION}`,
    };
    if (body !== undefined) headers["content-type"] = options.contentType ?? "application/json";

    const timeout = AbortSignal.timeout(this.#options.requestTimeoutMs ?? 15_000);
    const signals = [timeout, this.#options.signal].filter((signal): signal is AbortSignal => signal !== undefined);

    let response: Response;
    try {
      response = await this.#options.fetch(this.apiUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.any(signals),
      });
    } catch (error) {
      throw this.#networkError(error, action, timeout);
    }

    const text = await response.text().catch(() => "");
    let parsed: unknown;
    try {
      parsed = text === "" ? undefined : JSON.parse(text);
    } catch {
      parsed = undefined;
    }

    if (response.ok) return parsed;
    throw statusError(response, parsed, {
      action,
      tokenFile: this.#options.tokenFile,
      forbiddenHint: options.forbiddenHint,
      sentValues: options.sentValues ?? [],
    });
  }

  #networkError(error: unknown, action: string, timeout: AbortSignal): AgentError {
    if (this.#options.signal?.aborted) {
      return new AgentError("timeout", `Cannot ${action}: the deadline passed or the agent is stopping`, { cause: error });
    }
    if (timeout.aborted) {
      return new AgentError("unreachable", `Cannot ${action}: the Kubernetes API at ${this.apiUrl} did not respond in time`, { cause: error });
    }

    const code = networkErrorDetail(error);
    if (isCertificateError(code)) {
      return new AgentError(
        "unreachable",
        `Cannot ${action}: the certificate of the Kubernetes API at ${this.apiUrl} is not trusted (${code}); ` +
          "set KUBERNETES_CA_FILE to the cluster CA bundle",
        { cause: error, serverCode: "certificate" },
      );
    }
    return new AgentError("unreachable", `Cannot ${action}: cannot reach the Kubernetes API at ${this.apiUrl} (${code})`, { cause: error });
  }
}

/**
 * Reads the service-account token from `file`.
 *
 * @throws AgentError `auth` when the file is missing or empty, as for a missing ScaiVault token.
 */
export async function readServiceAccountToken(file: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "error";
    throw new AgentError(
      "auth",
      `Cannot read KUBERNETES_TOKEN_FILE "${file}": ${code}. Run sync in a pod whose service-account token is mounted, or set KUBERNETES_TOKEN_FILE`,
      { cause: error },
    );
  }

  const token = text.trim();
  if (token === "") throw new AgentError("auth", `KUBERNETES_TOKEN_FILE "${file}" is empty: mount the pod's service-account token there`);
  return token;
}

// ---------------------------------------------------------------------------------------------

interface RequestOptions {
  /** Permission that the message of a 403 asks the operator to grant. */
  forbiddenHint: string;
  /** Content type of the body. @default "application/json" */
  contentType?: string;
  /** Strings of the body that an error message must not repeat. */
  sentValues?: readonly string[];
}

const SECRET_REQUEST: RequestOptions = { forbiddenHint: "get, create and update on this Secret" };

const WORKLOAD_RESOURCES: Record<WorkloadKind, string> = { Deployment: "deployments", StatefulSet: "statefulsets", DaemonSet: "daemonsets" };

function workloadRequest(kind: WorkloadKind, name: string): RequestOptions {
  return { forbiddenHint: `get and patch on ${WORKLOAD_RESOURCES[kind]} "${name}" in the API group "apps"` };
}

function workloadPath(namespace: string, kind: WorkloadKind, name: string): string {
  return `/apis/apps/v1/namespaces/${encodeURIComponent(namespace)}/${WORKLOAD_RESOURCES[kind]}/${encodeURIComponent(name)}`;
}

/** Returns the Secret's values, base64 and decoded, so that no error message repeats them. */
function secretValues(secret: KubeSecret): string[] {
  const values: string[] = [];
  for (const encoded of Object.values(secret.data ?? {})) values.push(encoded, Buffer.from(encoded, "base64").toString("utf8"));
  return values;
}

function secretPath(namespace: string, name?: string): string {
  const base = `/api/v1/namespaces/${encodeURIComponent(namespace)}/secrets`;
  return name === undefined ? base : `${base}/${encodeURIComponent(name)}`;
}

function isRetryable(error: AgentError): boolean {
  if (error.status === undefined) return error.code === "unreachable" && error.serverCode !== "certificate";
  return error.status === 429 || error.status === 500 || error.status === 502 || error.status === 503 || error.status === 504;
}

/** Returns the error code (Bun, Node.js) or the cause's message (Deno: "invalid peer certificate: UnknownIssuer"). */
function networkErrorDetail(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  if (typeof code === "string" && code !== "") return code;

  const cause = (error as { cause?: { message?: unknown } }).cause;
  if (typeof cause?.message === "string" && cause.message !== "") return cause.message.replace(/^.*client error \(Connect\): /s, "");
  return (error as Error).name ?? "error";
}

function isCertificateError(detail: string): boolean {
  return /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNKNOWN_?ISSUER|certificate|TLS|SSL/i.test(detail);
}
