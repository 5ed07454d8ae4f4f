/**
 * ScaiVault's error envelope for the dev server: `ApiError` carries status, code and details, and
 * the app's error handler renders it as `{"error": {"code", "message", "details", "request_id"}}`.
 * Messages name paths and ids, never secret values or tokens.
 */
import type { Context } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";

export interface ApiErrorOptions {
  details?: Record<string, unknown>;
  /** Seconds for the `Retry-After` header. */
  retryAfter?: number;
}

/** One failed request, as the contract's error envelope describes it. */
export class ApiError extends Error {
  override readonly name = "ApiError";
  readonly status: ContentfulStatusCode;
  readonly code: string;
  readonly details: Record<string, unknown>;
  readonly retryAfter?: number;

  constructor(status: ContentfulStatusCode, code: string, message: string, options: ApiErrorOptions = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = options.details ?? {};
    this.retryAfter = options.retryAfter;
  }
}

/** Body of an error response. */
export interface ErrorEnvelope {
  error: { code: string; message: string; details: Record<string, unknown>; request_id: string };
}

/** Builds the error envelope for `error` and the request id of its request. */
export function errorEnvelope(error: ApiError, requestId: string): ErrorEnvelope {
  return {
    error: { code: error.code, message: error.message, details: error.details, request_id: requestId },
  };
}

/** Renders `error` as a JSON response on `c`, with `Retry-After` when the error has one. */
export function errorResponse(c: Context, error: ApiError, requestId: string): Response {
  if (error.retryAfter !== undefined) c.header("Retry-After", String(Math.max(0, Math.ceil(error.retryAfter))));
  return c.json(errorEnvelope(error, requestId), error.status);
}

/**
 * Reads the request body as a JSON object. An empty body gives `{}` when `optional` is set.
 *
 * @throws ApiError `400 invalid_request` when the body is not JSON or not an object.
 */
export async function readJsonObject(c: Context, optional = false): Promise<Record<string, unknown>> {
  const text = await c.req.text();

  if (text.trim() === "") {
    if (optional) return {};
    throw new ApiError(400, "invalid_request", "Request body is missing: send a JSON object");
  }

  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ApiError(400, "invalid_request", "Request body is not valid JSON");
  }

  if (!isPlainObject(value)) throw new ApiError(400, "invalid_request", "Request body must be a JSON object");
  return value;
}

/** Reports whether `value` is a JSON object (not null, not an array). */
export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Builds a `422 validation_error` whose `details.fields` maps each bad field to its problem. */
export function validationError(fields: Record<string, string>): ApiError {
  const names = Object.keys(fields).join(", ");
  return new ApiError(422, "validation_error", `Invalid request fields: ${names}`, { details: { fields } });
}
