/**
 * Turns a Kubernetes `Status` error response into an AgentError. The Status's top-level message
 * is not copied, because an Invalid status may quote submitted values. The reason is copied, and
 * so are the causes (field and message), with any quoted value replaced and cut to a short length.
 */
import { AgentError, type ErrorCode } from "./errors.ts";
import { parseRetryAfter } from "./retry.ts";

/** Maximum length of a cause message in an error, in characters. */
export const MAX_CAUSE_LENGTH = 160;

/** Maximum number of causes in an error. The rest are only counted. */
export const MAX_CAUSES = 5;

/** Details of the failed request that the message uses. */
export interface StatusErrorContext {
  /** The failed action, such as `update Secret "billing/billing-secrets"`. */
  action: string;
  /** Token file, named in the hint of a 401. */
  tokenFile: string;
  /** Permission to grant after a 403, such as `get and update on this Secret`. */
  forbiddenHint: string;
  /** Strings of the request body that must never appear in the message: the Secret's values. */
  sentValues: readonly string[];
}

/** Builds the AgentError for a non-2xx response and its parsed body (undefined if not JSON). */
export function statusError(response: Response, body: unknown, context: StatusErrorContext): AgentError {
  const status = body as { reason?: unknown; details?: { causes?: unknown } } | undefined;
  const reason = typeof status?.reason === "string" ? status.reason : response.statusText || "Unknown";
  const retryAfterMs = parseRetryAfter(response.headers.get("retry-after"));
  const options = { status: response.status, serverCode: reason, retryAfterMs };

  let code: ErrorCode = "server";
  let hint = "";
  switch (response.status) {
    case 401:
      code = "auth";
      hint = `; check that KUBERNETES_TOKEN_FILE "${context.tokenFile}" holds a valid service-account token`;
      break;
    case 403:
      code = "forbidden";
      hint = `; grant the pod's service account ${context.forbiddenHint} (see the Role in deploy/base/sync-job)`;
      break;
    case 404:
      code = "not_found";
      hint = "; check that the namespace exists";
      break;
    case 400:
    case 422:
      code = "config";
      break;
    case 429:
      code = "rate_limited";
      break;
    case 502:
    case 503:
    case 504:
      code = "unreachable";
      break;
  }

  const causes = describeCauses(status?.details?.causes, context.sentValues);
  if (causes) hint += `; the API server reported: ${causes}`;
  return new AgentError(code, `Cannot ${context.action}: the Kubernetes API returned ${response.status} ${reason}${hint}`, options);
}

/**
 * Returns the causes of a Status as `field: message` items joined by "; ", or "" when there are
 * none. A cause message has the form `<type>[: <value>][: <detail>]` (`field.Error.ErrorBody` in
 * k8s.io/apimachinery), so the value after a type that carries one is replaced by `<value>`.
 * Every string of `sentValues` is replaced too, in case the server quotes one elsewhere.
 */
export function describeCauses(causes: unknown, sentValues: readonly string[]): string {
  if (!Array.isArray(causes)) return "";

  const items: string[] = [];
  for (const cause of causes.slice(0, MAX_CAUSES)) {
    const field = typeof cause?.field === "string" ? cut(redactSent(cause.field, sentValues)) : "";
    const message = typeof cause?.message === "string" ? cut(redactSent(withoutValue(cause.message), sentValues)) : "";
    if (field === "" && message === "") continue;
    items.push(field && message ? `${field}: ${message}` : field || message);
  }

  if (causes.length > MAX_CAUSES) items.push(`and ${causes.length - MAX_CAUSES} more`);
  return items.join("; ");
}

// ---------------------------------------------------------------------------------------------

/** Error types whose message carries the rejected value after the type. */
const TYPES_WITH_VALUE = ["Invalid value", "Unsupported value", "Duplicate value", "Not found"];

/** Minimum length of a sent string to redact. Shorter strings, such as "v1", reveal nothing. */
const MIN_REDACTED_LENGTH = 4;

function withoutValue(message: string): string {
  const type = TYPES_WITH_VALUE.find((candidate) => message.startsWith(`${candidate}: `));
  if (type === undefined) return message;

  const rest = message.slice(type.length + 2);
  const end = rest.startsWith('"') ? quotedEnd(rest) : rest.indexOf(": ");
  const detail = end === -1 ? "" : rest.slice(end).replace(/^"?/, "");
  return `${type}: <value>${detail}`;
}

/** Returns the index of the closing quote of the Go-quoted string at the start of `text`, or -1. */
function quotedEnd(text: string): number {
  for (let index = 1; index < text.length; index++) {
    if (text[index] === "\\") index++;
    else if (text[index] === '"') return index;
  }
  return -1;
}

function redactSent(text: string, sentValues: readonly string[]): string {
  let result = text;
  for (const value of sentValues) {
    if (value.length >= MIN_REDACTED_LENGTH && value.length <= result.length && result.includes(value)) result = result.split(value).join("<value>");
  }
  return result;
}

function cut(text: string): string {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length <= MAX_CAUSE_LENGTH ? flat : `${flat.slice(0, MAX_CAUSE_LENGTH - 1)}…`;
}
