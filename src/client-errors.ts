/**
 * Failure handling of the ScaiVault client: the mapping of ScaiVault's error codes to the agent's
 * codes, network failures as retryable errors, and a response body read with a size limit.
 */
import { AgentError, type ErrorCode } from "./errors.ts";
import { parseRetryAfter } from "./retry.ts";

/** Maps a ScaiVault error code (and, without one, the HTTP status) to the agent's error code. */
export function codeForServerCode(serverCode: string | undefined, status: number): ErrorCode {
  switch (serverCode) {
    case "authentication_required":
    case "token_expired":
    case "token_invalid":
    case "token_revoked":
      return "auth";
    case "access_denied":
    case "insufficient_scope":
    case "ip_not_allowed":
    case "tenant_access_denied":
      return "forbidden";
    case "secret_not_found":
    case "version_not_found":
    case "subscription_not_found":
    case "lease_not_found":
      return "not_found";
    case "rate_limited":
      return "rate_limited";
    case "service_unavailable":
      return "unreachable";
    case "internal_error":
      return "server";
    case "lease_not_renewable":
      return "lease";
    case "invalid_request":
    case "invalid_path":
    case "invalid_duration":
    case "invalid_config":
    case "invalid_role":
    case "validation_error":
      return "config";
  }

  if (status === 401) return "auth";
  if (status === 403) return "forbidden";
  if (status === 404) return "not_found";
  if (status === 429) return "rate_limited";
  if (status === 502 || status === 503 || status === 504) return "unreachable";
  return "server";
}

/** A failure before any response; `sent` is true when the server may have acted on the request. */
export class RetryableError extends AgentError {
  readonly sent: boolean;

  constructor(code: ErrorCode, message: string, options: ConstructorParameters<typeof AgentError>[2], extra: { sent: boolean }) {
    super(code, message, options);
    this.sent = extra.sent;
  }
}

export function errorFromResponse(response: Response, body: unknown, route: string, requestId: string): AgentError {
  const envelope = (body as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
  const serverCode = envelope?.code === undefined ? undefined : safeServerCode(envelope.code);
  const code = codeForServerCode(serverCode, response.status);

  // The server's message is not included: a misbehaving server could echo a value into it.
  const message = `ScaiVault rejected ${route}: ${response.status} ${serverCode ?? response.statusText}`;
  const retryAfterMs = parseRetryAfter(response.headers.get("retry-after"));
  return new AgentError(code, message, { serverCode, requestId, status: response.status, retryAfterMs });
}

/**
 * Returns a ScaiVault error code when it has the documented shape (lowercase snake case, at most
 * 64 characters), else "unknown". Codes go into messages and logs, so a server that echoes a
 * request value (a token) into the code must not get it there.
 */
export function safeServerCode(code: unknown): string {
  return typeof code === "string" && /^[a-z][a-z0-9_]{0,63}$/.test(code) ? code : "unknown";
}

/** Error of `readBodyText` past its limit. */
export class ResponseBodyTooLargeError extends Error {
  constructor(readonly limit: number) {
    super(`response body exceeds ${limit} bytes`);
  }
}

/** Reads a response body as UTF-8 text, cancelling the stream once it exceeds `limit` bytes. */
export async function readBodyText(response: Response, limit: number): Promise<string> {
  const declared = Number(response.headers.get("content-length") ?? "");
  if (Number.isFinite(declared) && declared > limit) {
    await response.body?.cancel().catch(() => undefined);
    throw new ResponseBodyTooLargeError(limit);
  }
  if (!response.body) return "";

  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const parts: string[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > limit) {
      await reader.cancel().catch(() => undefined);
      throw new ResponseBodyTooLargeError(limit);
    }
    parts.push(decoder.decode(value, { stream: true }));
  }
  parts.push(decoder.decode());
  return parts.join("");
}

/** Names a network failure: Node-style error code where the runtime gives one, else its message. */
export function networkReason(error: unknown): string {
  const code = (error as { code?: unknown }).code ?? ((error as { cause?: { code?: unknown } }).cause?.code);
  if (typeof code === "string" && code !== "") return code;

  // Deno reports connection failures as a TypeError ("fetch failed") whose cause names the reason;
  // these messages hold the URL and the transport error, never a body.
  let deepest: unknown = error;
  while (deepest instanceof Error && deepest.cause instanceof Error) deepest = deepest.cause;
  const message = deepest instanceof Error ? deepest.message : String(deepest);
  return message.replace(/\s+/g, " ").slice(0, 200) || "network error";
}

export function isMissingEndpoint(error: AgentError): boolean {
  if (error.status === 405 || error.status === 501) return true;
  return error.status === 404 && (error.serverCode === undefined || error.serverCode === "not_found");
}

export function isThrottled(error: AgentError): boolean {
  return error.serverCode === "rate_limited" || error.serverCode === "service_unavailable";
}

export function isPerSecretError(error: AgentError): boolean {
  return error.code === "not_found" || error.code === "forbidden" || error.code === "config";
}
