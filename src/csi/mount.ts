/**
 * One Mount call: check the request, exchange the pod's token (or reuse the service account's
 * cached ScaiVault token), read the objects with batch reads, render each into its file, and
 * return the files with one object version each. A version follows the file's bytes and
 * settings (`versions.ts`), so unchanged secrets return unchanged versions on every rotation poll.
 */
import { AgentError, type ErrorCode } from "../errors.ts";
import { errorFields, getLogger } from "../log.ts";
import { exchangeToken } from "../auth.ts";
import { ScaiVaultClient, MAX_BATCH_PATHS, type TokenSource } from "../client.ts";
import type { Secret } from "../contract.ts";
import { RenderError, renderSecret } from "../render.ts";
import type { FetchFunction } from "../runtime.ts";
import type { UrlRule } from "./allowed-urls.ts";
import { parseMountAttributes, type MountObject, type MountSpec } from "./attributes.ts";
import type { CsiMetrics } from "./metrics.ts";
import { encodeMountResponse, type File, type MountRequest, type MountResponse, type ObjectVersion } from "./proto.ts";
import { serviceAccountKey, ServiceAccountTokenCache } from "./token-cache.ts";
import { MountLimiter } from "./limiter.ts";
import { joinProblems, MAX_LISTED_PROBLEMS } from "./messages.ts";
import { objectVersion, randomVersionKey } from "./versions.ts";

const log = getLogger("csi");

/** Largest response the driver's gRPC client accepts by default (grpc-go's 4 MiB receive limit). */
export const DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024;
/**
 * Largest ScaiVault response body a Mount reads. A mount's own response is capped at
 * `maxResponseBytes` (4 MiB by default), so twice that leaves room for JSON escaping.
 */
export const MIN_SCAIVAULT_RESPONSE_BYTES = 8 * 1024 * 1024;

export interface MounterOptions {
  /** Base URLs a SecretProviderClass may name. */
  allowedUrls: UrlRule[];
  /** Trusts `SCAIVAULT_CA_FILE` when built by `createFetch`. @default global fetch */
  fetch?: FetchFunction;
  tenantId?: string;
  /** Attempts per ScaiVault request. @default 3, so retries end within the driver's own deadline */
  maxAttempts?: number;
  requestTimeoutMs?: number;
  /** Deadline of one Mount. @default 30000 */
  mountTimeoutMs?: number;
  /** ScaiVault requests one Mount runs at the same time. @default 4 */
  concurrency?: number;
  /** @default 4 MiB */
  maxResponseBytes?: number;
  /** Mount calls that run at once in the process. @default 4 */
  maxMounts?: number;
  /** Mount calls that wait for a slot; more fail with UNAVAILABLE. @default 32 */
  maxQueuedMounts?: number;
  /** HMAC key of object versions (`versions.ts`). @default a random key */
  versionKey?: Uint8Array;
  tokenCache?: ServiceAccountTokenCache;
  metrics?: CsiMetrics;
}

/** Error for a response over the size limit, which the server returns as RESOURCE_EXHAUSTED. */
export class ResponseTooLargeError extends AgentError {
  constructor(message: string) {
    super("config", message);
  }
}

/** A finished Mount: the response and its encoding, so the server sends the bytes that were measured. */
export interface MountResult {
  response: MountResponse;
  encoded: Uint8Array;
}

/** Serves Mount calls with one token cache shared by all of them. */
export class Mounter {
  readonly tokenCache: ServiceAccountTokenCache;
  readonly limiter: MountLimiter;
  readonly #options: MounterOptions;
  readonly #versionKey: Uint8Array;

  constructor(options: MounterOptions) {
    const concurrency = options.concurrency ?? 4;
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new RangeError(`Invalid mount concurrency ${concurrency}: use a whole number of 1 or more`);

    this.#options = options;
    this.tokenCache = options.tokenCache ?? new ServiceAccountTokenCache();
    this.limiter = new MountLimiter(options.maxMounts ?? 4, options.maxQueuedMounts ?? 32);
    this.#versionKey = options.versionKey ?? randomVersionKey();
  }

  /**
   * Serves one Mount request.
   *
   * @throws AgentError naming the SecretProviderClass, the objects and the fix; `ResponseTooLargeError`
   *   over the limit; `MountQueueFullError` when too many Mount calls wait already.
   */
  async mount(request: MountRequest, signal?: AbortSignal): Promise<MountResult> {
    const release = await this.limiter.acquire(signal);
    try {
      return await this.#mount(request, signal);
    } finally {
      release();
    }
  }

  async #mount(request: MountRequest, signal?: AbortSignal): Promise<MountResult> {
    const started = performance.now();
    const spec = parseMountAttributes(request.attributes, request.permission, this.#options.allowedUrls, request.secrets);
    const key = serviceAccountKey(spec, this.#options.tenantId);

    // A timer cleared when the mount ends, rather than AbortSignal.timeout, whose timer would
    // keep this mount's objects alive for the whole timeout after it finished.
    const mountTimeoutMs = this.#options.mountTimeoutMs ?? 30_000;
    const controller = new AbortController();
    const abort = () => controller.abort(signal?.reason);
    const timer = setTimeout(
      () => controller.abort(new AgentError("unreachable", `ScaiVault did not respond within the Mount deadline of ${mountTimeoutMs / 1000} s; the driver retries the Mount`)),
      mountTimeoutMs,
    );
    signal?.addEventListener("abort", abort, { once: true });
    const client = this.#client(spec, key, controller.signal);

    let secrets: ReadSecrets;
    try {
      secrets = await readObjects(client, spec.objects, this.#options.concurrency ?? 4);
    } catch (caught) {
      if (!(caught instanceof AgentError)) throw caught;
      // The client reports an aborted request as `timeout`; the abort's own reason is more exact:
      // the Mount deadline is `unreachable`, so the driver retries it.
      const reason: unknown = controller.signal.reason;
      const error = controller.signal.aborted && reason instanceof AgentError && reason.code === "unreachable" ? reason : caught;
      log.warn("Cannot read objects", { ...podFields(spec), baseUrl: spec.baseUrl, ...errorFields(error) });
      throw new AgentError(error.code, `Cannot mount ${mountLabel(spec)}: ${error.message}${hint(error.code, spec)}`, {
        cause: error,
        serverCode: error.serverCode,
        requestId: error.requestId,
      });
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", abort);
    }

    const { files, versions, failures } = renderObjects(spec, secrets, this.#versionKey);
    if (failures.length) {
      for (const failure of failures.slice(0, MAX_LISTED_PROBLEMS)) {
        log.warn("Cannot mount object", { ...podFields(spec), path: failure.object.path, file: failure.object.file, ...errorFields(failure.error) });
      }
      if (failures.length > MAX_LISTED_PROBLEMS) log.warn("Cannot mount more objects", { ...podFields(spec), more: failures.length - MAX_LISTED_PROBLEMS });
      throw combine(spec, failures);
    }

    const response: MountResponse = { objectVersion: versions, files };
    const encoded = encodeMountResponse(response);
    this.#checkSize(spec, encoded.length);

    log.info("Mounted objects", {
      ...podFields(spec),
      objects: files.length,
      changed: changedIds(request.currentObjectVersion, versions),
      bytes: encoded.length,
      durationMs: Math.round(performance.now() - started),
    });
    return { response, encoded };
  }

  #client(spec: MountSpec, key: string, signal: AbortSignal): ScaiVaultClient {
    const base = new ScaiVaultClient({
      baseUrl: spec.baseUrl,
      fetch: this.#options.fetch,
      tenantId: this.#options.tenantId,
      signal,
      maxAttempts: this.#options.maxAttempts ?? 3,
      requestTimeoutMs: this.#options.requestTimeoutMs,
      onRequest: this.#options.metrics?.recordRequest,
      maxResponseBytes: Math.max(MIN_SCAIVAULT_RESPONSE_BYTES, 2 * (this.#options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES)),
      // A wait past the Mount deadline cannot succeed, so the Mount fails at once and the driver retries.
      maxRetryAfterMs: this.#options.mountTimeoutMs ?? 30_000,
    });

    const cache = this.tokenCache;
    const exchangeTimeoutMs = this.#options.mountTimeoutMs ?? 30_000;
    let handedOut: string | undefined;
    const tokens: TokenSource = {
      kind: "csi-exchange",
      async getToken() {
        handedOut = await cache.get(key, spec.podToken.token, async function exchangePodToken(subjectToken) {
          // Concurrent mounts of the service account share this exchange, so it ends on its own
          // deadline rather than on the signal of the mount that started it.
          const shared = base.withSignal(AbortSignal.timeout(exchangeTimeoutMs));
          const issued = await exchangeToken(shared, subjectToken, { audience: spec.audience, role: spec.role });
          log.info("Exchanged service-account token", {
            namespace: spec.pod.namespace,
            serviceAccount: spec.pod.serviceAccountName,
            identity: issued.identityId,
            expiresAt: issued.expiresAt ? new Date(issued.expiresAt).toISOString() : undefined,
          });
          return issued;
        });
        return handedOut;
      },
      invalidate() {
        if (handedOut !== undefined) cache.invalidate(key, handedOut);
      },
    };
    return base.withTokens(tokens);
  }

  #checkSize(spec: MountSpec, size: number): void {
    const limit = this.#options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
    if (size <= limit) return;

    throw new ResponseTooLargeError(
      `Cannot mount ${mountLabel(spec)}: the files add up to a response of ${formatBytes(size)}, over the limit of ${formatBytes(limit)}; ` +
        "split the objects over several SecretProviderClasses or select single fields with field",
    );
  }
}

// ---------------------------------------------------------------------------------------------

/** Secrets read for a mount by `path` or `path@version`, and errors by the same key. */
interface ReadSecrets {
  secrets: Map<string, Secret>;
  errors: Map<string, AgentError>;
}

/**
 * Reads every object: current versions with batch reads of up to 100 paths, pinned versions one
 * by one, at most `concurrency` requests at a time. Failures of a whole request throw.
 */
async function readObjects(client: ScaiVaultClient, objects: readonly MountObject[], concurrency: number): Promise<ReadSecrets> {
  const result: ReadSecrets = { secrets: new Map(), errors: new Map() };
  const current = [...new Set(objects.filter((object) => object.version === undefined).map((object) => object.path))];
  const pinned = [...new Map(objects.filter((object) => object.version !== undefined).map((object) => [readKey(object), object])).values()];
  const tasks: Array<() => Promise<void>> = [];

  for (let start = 0; start < current.length; start += MAX_BATCH_PATHS) {
    const chunk = current.slice(start, start + MAX_BATCH_PATHS);
    tasks.push(async function readBatch() {
      // One request at a time inside a task keeps the total at `concurrency` even when the
      // server has no batch endpoint and the client falls back to single reads.
      const read = await client.readSecrets(chunk, 1);
      for (const [path, secret] of read.secrets) result.secrets.set(path, secret);
      for (const [path, error] of read.errors) result.errors.set(path, error);
    });
  }

  for (const object of pinned) {
    tasks.push(async function readPinned() {
      try {
        result.secrets.set(readKey(object), await client.getSecret(object.path, object.version));
      } catch (error) {
        if (!(error instanceof AgentError) || !["not_found", "forbidden", "config"].includes(error.code)) throw error;
        result.errors.set(readKey(object), error);
      }
    });
  }

  await runLimited(tasks, concurrency);
  return result;
}

function renderObjects(spec: MountSpec, read: ReadSecrets, versionKey: Uint8Array): { files: File[]; versions: ObjectVersion[]; failures: Array<{ object: MountObject; error: AgentError }> } {
  const files: File[] = [];
  const versions: ObjectVersion[] = [];
  const failures: Array<{ object: MountObject; error: AgentError }> = [];

  for (const object of spec.objects) {
    const secret = read.secrets.get(readKey(object));
    if (!secret) {
      const cause = read.errors.get(readKey(object));
      const reason = cause?.serverCode ?? cause?.message ?? "missing from the response";
      const version = object.version === undefined ? "" : ` version ${object.version}`;
      failures.push({
        object,
        error: new AgentError(cause?.code ?? "not_found", `Cannot read secret "${object.path}"${version} for file "${object.file}": ${reason}${hint(cause?.code, spec)}`, {
          cause,
          serverCode: cause?.serverCode,
          requestId: cause?.requestId,
        }),
      });
      continue;
    }

    try {
      const contents = renderSecret(secret.data, object);
      const mode = object.mode ?? spec.defaultMode;
      files.push({ path: object.file, mode, contents });
      versions.push({ id: object.file, version: objectVersion(versionKey, { secretVersion: secret.version, path: object.path, file: object.file, mode, contents }) });
    } catch (error) {
      if (!(error instanceof RenderError)) throw error;
      failures.push({ object, error: new AgentError("not_found", `Cannot render secret "${object.path}" into file "${object.file}": ${error.message}`, { cause: error }) });
    }
  }
  return { files, versions, failures };
}

/** Runs `tasks` with at most `limit` at a time; the first failure rejects after the running ones end. */
async function runLimited(tasks: Array<() => Promise<void>>, limit: number): Promise<void> {
  let next = 0;
  async function worker(): Promise<void> {
    while (next < tasks.length) await tasks[next++]!();
  }
  const results = await Promise.allSettled(Array.from({ length: Math.min(limit, tasks.length) }, worker));
  const failed = results.find((result): result is PromiseRejectedResult => result.status === "rejected");
  if (failed) throw failed.reason;
}

/** Order in which failures decide the error code when objects fail differently. */
const SEVERITY: ErrorCode[] = ["unreachable", "timeout", "rate_limited", "auth", "forbidden", "not_found", "server", "config"];

function combine(spec: MountSpec, failures: Array<{ error: AgentError }>): AgentError {
  const codes = failures.map((failure) => failure.error.code);
  const code = SEVERITY.find((candidate) => codes.includes(candidate)) ?? codes[0]!;
  const messages = failures.map((failure) => failure.error.message);
  return new AgentError(code, `Cannot mount ${mountLabel(spec)}: ${joinProblems(messages)}`, { cause: failures[0]!.error });
}

/** Returns `SecretProviderClass "x" for pod "namespace/name"` for messages. */
function mountLabel(spec: MountSpec): string {
  const spc = spec.secretProviderClass ? `SecretProviderClass "${spec.secretProviderClass}"` : "the SecretProviderClass";
  return `${spc} for pod "${spec.pod.namespace}/${spec.pod.name}"`;
}

function hint(code: ErrorCode | undefined, spec: MountSpec): string {
  const account = `"${spec.pod.namespace}/${spec.pod.serviceAccountName}"`;
  if (code === "forbidden") return `; grant the ScaiVault identity of service account ${account} read access`;
  if (code === "not_found") return "; check the path and version in objects";
  if (code === "auth") return `; check that ScaiVault trusts the cluster's service-account tokens for audience "${spec.audience}"`;
  return "";
}

function readKey(object: MountObject): string {
  return object.version === undefined ? object.path : `${object.path}@${object.version}`;
}

function changedIds(current: ObjectVersion[], next: ObjectVersion[]): string[] {
  if (current.length === 0) return [];
  const before = new Map(current.map((entry) => [entry.id, entry.version]));
  return next.filter((entry) => before.get(entry.id) !== entry.version).map((entry) => entry.id);
}

function podFields(spec: MountSpec): Record<string, string> {
  return { secretProviderClass: spec.secretProviderClass, namespace: spec.pod.namespace, pod: spec.pod.name, podUid: spec.pod.uid };
}

function formatBytes(bytes: number): string {
  // The exact count comes first: a response 10 bytes over the limit must not read as equal to it.
  return bytes >= 1024 * 1024 ? `${bytes} bytes (${(bytes / (1024 * 1024)).toFixed(1)} MiB)` : `${bytes} bytes`;
}
