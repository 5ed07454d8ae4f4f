/**
 * The one error type of the agent. `code` is stable API: the CLI maps it to an exit status and
 * tests assert it. Messages name the action and the item (a path, a line, a lease id), never a
 * secret value or a token.
 */
export type ErrorCode =
  | "config"
  | "auth"
  | "forbidden"
  | "not_found"
  | "unreachable"
  | "rate_limited"
  | "server"
  | "write"
  | "lease"
  | "timeout"
  | "internal";

/** Exit status of every command per error code. Documented in the README's exit code table. */
export const EXIT_CODES: Readonly<Record<ErrorCode, number>> = {
  internal: 1,
  config: 2,
  auth: 3,
  forbidden: 4,
  not_found: 5,
  unreachable: 6,
  rate_limited: 6,
  timeout: 6,
  server: 7,
  write: 8,
  lease: 9,
};

export interface AgentErrorOptions {
  cause?: unknown;
  /** ScaiVault's error code (`access_denied`, `secret_not_found`, ...) when the server sent one. */
  serverCode?: string;
  /** `X-Request-ID` of the failed request, for correlation with server logs. */
  requestId?: string;
  /** HTTP status of the failed request. */
  status?: number;
  /** Delay the server asked for with `Retry-After`, in milliseconds. */
  retryAfterMs?: number;
}

export class AgentError extends Error {
  override readonly name = "AgentError";
  readonly code: ErrorCode;
  readonly serverCode?: string;
  readonly requestId?: string;
  readonly status?: number;
  readonly retryAfterMs?: number;

  constructor(code: ErrorCode, message: string, options: AgentErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.serverCode = options.serverCode;
    this.requestId = options.requestId;
    this.status = options.status;
    this.retryAfterMs = options.retryAfterMs;
  }
}

/** Returns the exit status for any thrown value: an AgentError's code, else 1. */
export function exitCodeOf(error: unknown): number {
  return error instanceof AgentError ? EXIT_CODES[error.code] : EXIT_CODES.internal;
}

/** Returns a short message for logs: the error's own message, never a response body. */
export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
