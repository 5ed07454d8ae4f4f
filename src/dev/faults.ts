/**
 * Fault injection for tests (dev-only): the next `count` requests that match a method and a path
 * prefix get a chosen error envelope, optionally after a delay. Requests under `/v1/dev/` are
 * never faulted, so a test can always clear its faults.
 */
import type { MiddlewareHandler } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { ApiError, validationError } from "./api-error.ts";
import type { DevEnv } from "./context.ts";
import { randomToken } from "./tokens.ts";

/** One injected fault, as `POST /v1/dev/faults` accepts it. */
export interface FaultSpec {
  /** Upper-case HTTP method to match; any method when absent. */
  method?: string;
  /** Path prefix to match, such as `/v1/secrets`; any path when absent. */
  pathPrefix?: string;
  /** Status of the error response; without it the request proceeds after `delayMs`. */
  status?: number;
  /** Error code of the envelope. @default derived from the status, such as `service_unavailable` for 503 */
  code?: string;
  /** Number of matching requests to fault. @default 1 */
  count: number;
  /** Seconds for `Retry-After`. */
  retryAfter?: number;
  /** Delay before the fault or the normal response. @default 0 */
  delayMs: number;
}

/** An active fault with its id and the number of requests it still applies to. */
export interface Fault extends FaultSpec {
  id: string;
  remaining: number;
}

/** Active faults, applied in the order they were added. */
export class FaultInjector {
  readonly #faults: Fault[] = [];

  /** Adds a fault and returns it with its id. */
  add(spec: FaultSpec): Fault {
    const fault = { ...spec, id: `flt_${randomToken(9)}`, remaining: spec.count };
    this.#faults.push(fault);
    return fault;
  }

  /** Removes every fault and returns how many were active. */
  clear(): number {
    return this.#faults.splice(0).length;
  }

  list(): Fault[] {
    return this.#faults.map((fault) => ({ ...fault }));
  }

  /** Returns the first fault that matches the request and counts it down, or undefined. */
  take(method: string, path: string): Fault | undefined {
    const index = this.#faults.findIndex(
      (fault) => (!fault.method || fault.method === method) && (!fault.pathPrefix || path.startsWith(fault.pathPrefix)),
    );
    if (index < 0) return undefined;

    const fault = this.#faults[index]!;
    fault.remaining -= 1;
    if (fault.remaining <= 0) this.#faults.splice(index, 1);
    return { ...fault };
  }
}

/**
 * Validates the body of `POST /v1/dev/faults`.
 *
 * @throws ApiError `422 validation_error` listing every invalid field.
 */
export function parseFaultSpec(body: Record<string, unknown>): FaultSpec {
  const fields: Record<string, string> = {};
  const { method, path_prefix, status, code, count = 1, retry_after, delay_ms = 0 } = body;

  if (method !== undefined && (typeof method !== "string" || !/^[A-Z]+$/.test(method))) {
    fields.method = "must be an upper-case HTTP method such as GET";
  }
  if (path_prefix !== undefined && (typeof path_prefix !== "string" || !path_prefix.startsWith("/"))) {
    fields.path_prefix = "must be a string starting with /";
  }
  if (status !== undefined && (!Number.isInteger(status) || (status as number) < 400 || (status as number) > 599)) {
    fields.status = "must be a whole number from 400 to 599";
  }
  if (code !== undefined && (typeof code !== "string" || code === "")) fields.code = "must be a non-empty string";
  if (status !== undefined && code === undefined && DEFAULT_CODES[status as number] === undefined) {
    fields.code = `is required for status ${String(status)}`;
  }
  if (!Number.isInteger(count) || (count as number) < 1) fields.count = "must be a whole number >= 1";
  if (retry_after !== undefined && (typeof retry_after !== "number" || retry_after < 0)) {
    fields.retry_after = "must be a number of seconds >= 0";
  }
  if (!Number.isInteger(delay_ms) || (delay_ms as number) < 0 || (delay_ms as number) > 600_000) {
    fields.delay_ms = "must be a whole number of milliseconds from 0 to 600000";
  }
  if (status === undefined && delay_ms === 0) fields.status = "is required unless delay_ms is set";

  if (Object.keys(fields).length > 0) throw validationError(fields);

  return {
    method: method as string | undefined,
    pathPrefix: path_prefix as string | undefined,
    status: status as number | undefined,
    code: (code as string | undefined) ?? (status === undefined ? undefined : DEFAULT_CODES[status as number]),
    count: count as number,
    retryAfter: retry_after as number | undefined,
    delayMs: delay_ms as number,
  };
}

/**
 * Creates the middleware that applies faults. A delay ends early when the client disconnects or
 * `stopped` is aborted.
 */
export function faultMiddleware(faults: FaultInjector, stopped: AbortSignal): MiddlewareHandler<DevEnv> {
  return async function injectFault(c, next) {
    if (c.req.path.startsWith("/v1/dev/")) return next();

    const fault = faults.take(c.req.method, c.req.path);
    if (!fault) return next();

    if (fault.delayMs > 0) await delay(fault.delayMs, [c.req.raw.signal, stopped]);

    if (fault.status === undefined) return next();
    throw new ApiError(fault.status as ContentfulStatusCode, fault.code!, `Injected fault ${fault.id}`, {
      details: { fault_id: fault.id },
      retryAfter: fault.retryAfter,
    });
  };
}

// ---------------------------------------------------------------------------------------------

const DEFAULT_CODES: Record<number, string> = {
  400: "invalid_request",
  401: "token_invalid",
  403: "access_denied",
  404: "secret_not_found",
  429: "rate_limited",
  500: "internal_error",
  // The contract names no codes for 502 and 504, which proxies in front of ScaiVault return.
  502: "bad_gateway",
  503: "service_unavailable",
  504: "gateway_timeout",
};

function delay(ms: number, signals: AbortSignal[]): Promise<void> {
  return new Promise((resolve) => {
    const signal = AbortSignal.any(signals);
    if (signal.aborted) return resolve();

    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });

    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}
