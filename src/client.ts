/**
 * ScaiVault HTTP client: one request path with the contract's retry policy, error mapping and
 * rate-limit handling, and the calls the commands use.
 *
 * Retries, per ScaiVault's contract:
 * - `rate_limited` (429): wait `Retry-After`, then retry.
 * - `service_unavailable`, 502, 504, connection errors, timeouts: backoff with full jitter.
 * - `internal_error` (500): retry once.
 * - `token_expired`, `token_invalid`, `authentication_required`, or any other 401 such as
 *   `token_revoked`: fetch a fresh token, repeat once.
 * - anything else is final.
 * A call that is not idempotent (generating a lease) is retried only when the server cannot have
 * acted on it: a refused connection, 429, 503 or an expired token.
 */
import { AgentError } from "./errors.ts";
import { getLogger } from "./log.ts";
import { backoffDelay, randomHex, sleep, type BackoffOptions } from "./retry.ts";
import type { FetchFunction } from "./runtime.ts";
import { ContractError, parseBatch, parseSecret, type Secret } from "./contract.ts";
import { VERSION } from "./version.ts";
import {
  codeForServerCode,
  errorFromResponse,
  isMissingEndpoint,
  isPerSecretError,
  isThrottled,
  networkReason,
  readBodyText,
  ResponseBodyTooLargeError,
  RetryableError,
  safeServerCode,
} from "./client-errors.ts";

const log = getLogger("client");

/** Supplies bearer tokens; `invalidate` drops a cached token after the server rejected it. */
export interface TokenSource {
  readonly kind: string;
  getToken(signal?: AbortSignal): Promise<string>;
  invalidate(): void;
}

/** One finished HTTP exchange, for metrics. Carries no body. */
export interface RequestRecord {
  method: string;
  route: string;
  status: number;
  durationMs: number;
}

export interface ClientOptions {
  baseUrl: string;
  tokens?: TokenSource;
  tenantId?: string;
  fetch?: FetchFunction;
  /** Ends every request and wait at once: the command's deadline or shutdown. */
  signal?: AbortSignal;
  /** Attempts per call, the first included. @default 6 */
  maxAttempts?: number;
  /** Timeout of one attempt in milliseconds. @default 15000 */
  requestTimeoutMs?: number;
  backoff?: BackoffOptions;
  /** Called after every attempt that reached the server. */
  onRequest?: (record: RequestRecord) => void;
  /** Largest response body read; a longer one fails the attempt with a `server` error. @default 64 MiB */
  maxResponseBytes?: number;
  /** Longest `Retry-After` honoured; a longer one fails the call at once. @default MAX_RETRY_AFTER_MS */
  maxRetryAfterMs?: number;
}

export interface RequestOptions {
  body?: unknown;
  query?: Record<string, string | number | undefined>;
  /** Sends the bearer token. @default true */
  auth?: boolean;
  /** Whether a repeat after an unclear failure is safe. @default true */
  idempotent?: boolean;
  /** Route name for logs and metrics, without ids or paths of secrets. */
  route: string;
  /** Attempts for this call, the first included; 1 lets the caller handle retries. @default the client's */
  maxAttempts?: number;
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface ApiResponse {
  status: number;
  body: unknown;
  requestId?: string;
}

/** Result of reading several secrets: what was read and, per path, why the rest was not. */
export interface ReadResult {
  secrets: Map<string, Secret>;
  errors: Map<string, AgentError>;
}

/** Largest batch the contract allows. */
export const MAX_BATCH_PATHS = 100;
/** Longest `Retry-After` the agent honours; a longer one fails the call at once. */
export const MAX_RETRY_AFTER_MS = 5 * 60_000;
/** Default of `ClientOptions.maxResponseBytes`. */
export const DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024;
/** Batch requests in flight at once for one `readSecrets` call. */
const BATCH_CONCURRENCY = 4;

export class ScaiVaultClient {
  readonly baseUrl: string;
  readonly #options: ClientOptions;
  readonly #fetch: FetchFunction;
  #batchSupported = true;

  constructor(options: ClientOptions) {
    let url: URL;
    try {
      url = new URL(options.baseUrl);
    } catch {
      throw new AgentError("config", `Invalid SCAIVAULT_URL "${options.baseUrl}": write a URL such as https://scaivault.scailabs.ai`);
    }
    if (url.protocol !== "https:" && url.protocol !== "http:") {
      throw new AgentError("config", `Invalid SCAIVAULT_URL "${options.baseUrl}": use http:// or https://`);
    }
    if (url.username !== "" || url.password !== "") {
      // Not echoed, because the URL contains a credential. ScaiVault authenticates with bearer tokens only.
      throw new AgentError("config", "Invalid SCAIVAULT_URL: it contains a user name or password; remove them and use a token source");
    }
    if (url.search !== "" || url.hash !== "") {
      throw new AgentError("config", `Invalid SCAIVAULT_URL "${url.origin}${url.pathname}...": remove the query and fragment`);
    }

    this.baseUrl = url.href.replace(/\/+$/, "");
    this.#options = options;
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** Returns a client that shares this one's settings but sends no token, for the exchange. */
  withoutTokens(): ScaiVaultClient {
    return new ScaiVaultClient({ ...this.#options, tokens: undefined });
  }

  /**
   * Returns a client that shares settings and the token source but ends its requests on `signal`
   * instead, such as a short deadline for clean-up calls after the run signal was aborted.
   */
  withSignal(signal: AbortSignal | undefined): ScaiVaultClient {
    return new ScaiVaultClient({ ...this.#options, signal });
  }

  /** Returns a client that shares settings but uses `tokens`. */
  withTokens(tokens: TokenSource): ScaiVaultClient {
    return new ScaiVaultClient({ ...this.#options, tokens });
  }

  /**
   * Sends one API call with the retry policy above.
   *
   * @throws AgentError with a code from the server's error code, the request id and the route.
   */
  async request(method: string, path: string, options: RequestOptions): Promise<ApiResponse> {
    const maxAttempts = options.maxAttempts ?? this.#options.maxAttempts ?? 6;
    const idempotent = options.idempotent ?? true;
    let refreshedToken = false;
    let internalRetried = false;
    let lastError: AgentError | undefined;

    for (let attempt = 1; attempt <= maxAttempts; attempt++) {
      this.#throwIfAborted(options, lastError);

      // A token source failure is final here: the exchange already applied this policy to itself.
      const token = options.auth !== false && this.#options.tokens ? await this.#options.tokens.getToken(this.#options.signal) : undefined;

      let waitMs: number;
      try {
        return await this.#send(method, path, options, token);
      } catch (error) {
        if (!(error instanceof AgentError)) throw error;
        lastError = error;

        const decision = this.#decide(error, { idempotent, refreshedToken, internalRetried, attempt });
        if (decision === "final") throw error;
        if (decision === "refresh") {
          refreshedToken = true;
          this.#options.tokens?.invalidate();
          log.info("Token rejected, fetching a fresh one", { route: options.route, requestId: error.requestId, serverCode: error.serverCode });
          continue;
        }
        if (error.serverCode === "internal_error") internalRetried = true;

        waitMs = decision === "retry-after" && error.retryAfterMs !== undefined
          ? error.retryAfterMs
          : backoffDelay(attempt, this.#options.backoff);
        const maxWaitMs = this.#options.maxRetryAfterMs ?? MAX_RETRY_AFTER_MS;
        if (waitMs > maxWaitMs) {
          throw new AgentError(error.code, `${error.message}: ScaiVault asked to wait ${Math.round(waitMs / 1000)} s, more than the ${maxWaitMs / 1000} s the agent waits`, {
            cause: error,
            serverCode: error.serverCode,
            requestId: error.requestId,
            status: error.status,
          });
        }
      }

      if (attempt === maxAttempts) break;
      log.warn("Request failed, retrying", {
        route: options.route,
        attempt,
        delayMs: waitMs,
        error: lastError.message,
        requestId: lastError.requestId,
      });
      await this.#wait(waitMs, options, lastError);
    }

    throw new AgentError(lastError!.code, `${lastError!.message} (gave up after ${maxAttempts} attempts)`, {
      cause: lastError,
      serverCode: lastError!.serverCode,
      requestId: lastError!.requestId,
      status: lastError!.status,
      // Kept so that a caller with its own backoff (subscription creation) honours the server's wait.
      retryAfterMs: lastError!.retryAfterMs,
    });
  }

  /** Reads one secret, or one version of it. */
  async getSecret(path: string, version?: number): Promise<Secret> {
    const response = await this.request("GET", `/v1/secrets/${path}`, {
      route: "secrets.get",
      query: { version },
    });
    return this.#parse(() => parseSecret(response.body, path), response);
  }

  /**
   * Reads many secrets with batch reads of at most 100 paths, falling back to single reads when the
   * server has no batch endpoint. A path the server refuses lands in `errors`; a failure of a
   * whole call (unreachable, authentication) throws.
   */
  async readSecrets(paths: string[], concurrency = 8): Promise<ReadResult> {
    const unique = [...new Set(paths)];
    const result: ReadResult = { secrets: new Map(), errors: new Map() };

    const chunks: string[][] = [];
    for (let start = 0; start < unique.length; start += MAX_BATCH_PATHS) chunks.push(unique.slice(start, start + MAX_BATCH_PATHS));

    // A few batches at a time: fast for 1000 paths, and still gentle on the batch bucket.
    const failures: AgentError[] = [];
    const readChunk = async (chunk: string[]): Promise<void> => {
      try {
        if (this.#batchSupported && (await this.#readBatch(chunk, result))) return;
        await this.#readSingles(chunk, result, concurrency);
      } catch (error) {
        // A failed call fails only its own paths, so that the other chunks' secrets stay usable.
        // When every call fails, the first error is thrown below.
        if (!(error instanceof AgentError)) throw error;
        failures.push(error);
        for (const path of chunk) result.errors.set(path, error);
      }
    };
    for (let start = 0; start < chunks.length; start += BATCH_CONCURRENCY) {
      await Promise.all(chunks.slice(start, start + BATCH_CONCURRENCY).map(readChunk));
    }

    if (failures.length === chunks.length && failures[0]) throw failures[0];
    await this.#rereadThrottled(result);
    return result;
  }

  /** Writes a secret; used by tests and the `get`/`dev` tooling. */
  async putSecret(path: string, data: Record<string, unknown>, secretType = "json"): Promise<Secret> {
    const response = await this.request("PUT", `/v1/secrets/${path}`, {
      route: "secrets.put",
      body: { data, secret_type: secretType },
    });
    return this.#parse(() => parseSecret(response.body, path), response);
  }

  /** Returns `GET /v1/auth/whoami`. */
  async whoami(): Promise<Record<string, unknown>> {
    const response = await this.request("GET", "/v1/auth/whoami", { route: "auth.whoami" });
    return (response.body ?? {}) as Record<string, unknown>;
  }

  // -------------------------------------------------------------------------------------------

  async #readBatch(paths: string[], result: ReadResult): Promise<boolean> {
    let response: ApiResponse;
    try {
      response = await this.request("POST", "/v1/secrets/batch", {
        route: "secrets.batch",
        body: { paths, options: { include_metadata: false, fail_fast: false } },
      });
    } catch (error) {
      if (error instanceof AgentError && isMissingEndpoint(error)) {
        log.info("Server has no batch endpoint, reading secrets one by one", { status: error.status, requestId: error.requestId });
        this.#batchSupported = false;
        return false;
      }
      throw error;
    }

    const batch = this.#parse(() => parseBatch(response.body), response);
    for (const path of paths) {
      const secret = batch.secrets.get(path);
      if (secret) {
        result.secrets.set(path, secret);
        continue;
      }

      const found = batch.errors.get(path);
      const entry = found ? { code: safeServerCode(found.code) } : { code: "secret_not_found" };
      result.errors.set(
        path,
        new AgentError(codeForServerCode(entry.code, 0), `Cannot read secret "${path}": ${entry.code}`, {
          serverCode: entry.code,
          requestId: response.requestId,
        }),
      );
    }
    return true;
  }

  /**
   * Reads again the paths for which a batch returned `rate_limited` or `service_unavailable`. Each
   * returned secret costs one read unit, so a large batch can exhaust the read bucket half-way.
   * A batch carries no `Retry-After` per path, so the waits back off from one second.
   */
  async #rereadThrottled(result: ReadResult): Promise<void> {
    const maxAttempts = this.#options.maxAttempts ?? 6;

    for (let attempt = 1; attempt < maxAttempts; attempt++) {
      const throttled = [...result.errors].filter(([, error]) => isThrottled(error)).map(([path]) => path);
      if (throttled.length === 0 || !this.#batchSupported) return;

      const delayMs = 1000 + backoffDelay(attempt, { ...this.#options.backoff, baseMs: 1000, maxMs: 30_000 });
      log.warn("ScaiVault throttled some secrets of a batch, reading them again", { paths: throttled.length, attempt, delayMs });
      await this.#wait(delayMs, { route: "secrets.batch" }, result.errors.get(throttled[0]!)!);

      for (const path of throttled) result.errors.delete(path);
      for (let start = 0; start < throttled.length; start += MAX_BATCH_PATHS) {
        await this.#readBatch(throttled.slice(start, start + MAX_BATCH_PATHS), result);
      }
    }
  }

  async #readSingles(paths: string[], result: ReadResult, concurrency: number): Promise<void> {
    const queue = [...paths];

    const worker = async (): Promise<void> => {
      for (let path = queue.shift(); path !== undefined; path = queue.shift()) {
        try {
          result.secrets.set(path, await this.getSecret(path));
        } catch (error) {
          if (error instanceof AgentError && error.status === 404 && isMissingEndpoint(error)) {
            throw new AgentError("config", `SCAIVAULT_URL ${this.baseUrl} does not serve the ScaiVault API: 404 for GET /v1/secrets/...; check the URL`, {
              cause: error,
              requestId: error.requestId,
            });
          }
          if (!(error instanceof AgentError) || !isPerSecretError(error)) throw error;
          result.errors.set(path, error);
        }
      }
    };

    await Promise.all(Array.from({ length: Math.min(concurrency, paths.length) }, worker));
  }

  async #send(method: string, path: string, options: RequestOptions, token: string | undefined): Promise<ApiResponse> {
    const url = new URL(this.baseUrl + path);
    for (const [key, value] of Object.entries(options.query ?? {})) {
      if (value !== undefined) url.searchParams.set(key, String(value));
    }

    const requestId = `agent-${randomHex(8)}`;
    const headers: Record<string, string> = {
      accept: "application/json",
      "user-agent": `scaivault-agent/${VERSION}`,
      "x-request-id": requestId,
    };
    if (options.body !== undefined) headers["content-type"] = "application/json";
    if (this.#options.tenantId) headers["x-tenant-id"] = this.#options.tenantId;
    if (token !== undefined) headers.authorization = `Bearer ${token}`;

    const timeout = AbortSignal.timeout(options.timeoutMs ?? this.#options.requestTimeoutMs ?? 15_000);
    const signals = [timeout, this.#options.signal, options.signal].filter((s): s is AbortSignal => s !== undefined);
    const started = performance.now();

    let response: Response;
    try {
      response = await this.#fetch(url, {
        method,
        headers,
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
        signal: AbortSignal.any(signals),
      });
    } catch (error) {
      throw this.#networkError(error, method, options, requestId, timeout);
    }

    let text: string;
    try {
      text = await readBodyText(response, this.#options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES);
    } catch (error) {
      if (error instanceof ResponseBodyTooLargeError) {
        throw new AgentError("server", `ScaiVault's response to ${method} ${options.route} exceeds ${error.limit} bytes; check that the base URL points at ScaiVault, or read fewer secrets at once`, {
          requestId: response.headers.get("x-request-id") ?? requestId,
          status: response.status,
        });
      }
      // The body stalled or the connection dropped half-way: a network failure, not a bad response.
      throw this.#networkError(error, method, options, requestId, timeout);
    }
    const serverRequestId = response.headers.get("x-request-id") ?? requestId;
    this.#options.onRequest?.({ method, route: options.route, status: response.status, durationMs: performance.now() - started });

    let body: unknown = undefined;
    if (text !== "") {
      try {
        body = JSON.parse(text);
      } catch {
        body = undefined;
      }
    }

    if (response.ok) return { status: response.status, body, requestId: serverRequestId };
    throw errorFromResponse(response, body, options.route, serverRequestId);
  }

  #networkError(error: unknown, method: string, options: RequestOptions, requestId: string, timeout: AbortSignal): AgentError {
    const what = `${method} ${options.route}`;
    if (this.#options.signal?.aborted || options.signal?.aborted) {
      return new AgentError("timeout", `Cannot complete ${what}: the deadline passed or the agent is stopping`, { cause: error, requestId });
    }
    if (timeout.aborted) {
      return new RetryableError("unreachable", `Cannot reach ScaiVault at ${this.baseUrl} for ${what}: no response in time`, {
        cause: error,
        requestId,
      }, { sent: true });
    }

    const reason = networkReason(error);
    const hint = /CERT|SIGNATURE|certificate|UnknownIssuer|self.signed/i.test(reason)
      ? "; if ScaiVault uses a private CA, set SCAIVAULT_CA_FILE to its PEM bundle"
      : "";
    return new RetryableError("unreachable", `Cannot reach ScaiVault at ${this.baseUrl} for ${what}: ${reason}${hint}`, { cause: error, requestId }, {
      sent: !/ECONNREFUSED|ConnectionRefused|Connection refused|ENOTFOUND|EAI_AGAIN/i.test(reason),
    });
  }

  #decide(
    error: AgentError,
    state: { idempotent: boolean; refreshedToken: boolean; internalRetried: boolean; attempt: number },
  ): "final" | "refresh" | "retry-after" | "backoff" {
    const server = error.serverCode;

    // Any 401 gets one fresh token: a revoked exchanged token is replaced by exchanging again.
    if (error.status === 401 || server === "token_expired" || server === "token_invalid" || server === "authentication_required") {
      return this.#options.tokens && !state.refreshedToken ? "refresh" : "final";
    }
    if (server === "rate_limited" || error.status === 429) return "retry-after";
    if (server === "service_unavailable" || error.status === 503) return "backoff";
    if (error.status === 502 || error.status === 504) return state.idempotent ? "backoff" : "final";
    if (server === "internal_error" || error.status === 500) return state.internalRetried || !state.idempotent ? "final" : "backoff";
    if (error instanceof RetryableError) return state.idempotent || !error.sent ? "backoff" : "final";
    return "final";
  }

  #throwIfAborted(options: RequestOptions, lastError: AgentError | undefined): void {
    if (!this.#options.signal?.aborted && !options.signal?.aborted) return;
    if (lastError) throw lastError;
    throw new AgentError("timeout", `Cannot start ${options.route}: the deadline passed or the agent is stopping`);
  }

  async #wait(ms: number, options: RequestOptions, lastError: AgentError): Promise<void> {
    const signals = [this.#options.signal, options.signal].filter((s): s is AbortSignal => s !== undefined);
    try {
      await sleep(ms, signals.length ? AbortSignal.any(signals) : undefined);
    } catch {
      // The deadline passed while waiting: report the failure that made us wait.
      throw lastError;
    }
  }

  #parse<T>(parse: () => T, response: ApiResponse): T {
    try {
      return parse();
    } catch (error) {
      if (!(error instanceof ContractError)) throw error;
      throw new AgentError("server", `Unexpected response from ScaiVault: ${error.message}`, { requestId: response.requestId });
    }
  }
}

export { codeForServerCode, safeServerCode };
