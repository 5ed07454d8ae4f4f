/**
 * Checks that run on every request of the dev server before any handler: the request path must
 * carry no percent-encoding, and the body must stay under a size limit. Both respond with the
 * contract's error envelope and the request id, like every other error.
 */
import type { MiddlewareHandler } from "hono";
import { bodyLimit } from "hono/body-limit";
import { ApiError } from "./api-error.ts";
import type { DevEnv } from "./context.ts";

/** Largest body of the unauthenticated token routes, `POST /v1/auth/exchange` and `POST /oauth/token`. */
export const MAX_TOKEN_BODY_BYTES = 4 * 1024 * 1024;

/** Largest body of every other route. */
export const MAX_BODY_BYTES = 16 * 1024 * 1024;

/** Routes whose body is limited to `MAX_TOKEN_BODY_BYTES`: anyone may call them, and a JWT or a form is small. */
export const TOKEN_ROUTES: ReadonlySet<string> = new Set(["/v1/auth/exchange", "/oauth/token"]);

/**
 * Creates the middleware that rejects a request whose path contains `%`. The router and
 * `c.req.param()` decode percent-encoding, so `/v1/secrets/a%2Fb` would reach the handler as the
 * path `a/b`, with other segments than the client wrote. No secret path, id or name of this API
 * needs encoding: secret paths use only `a-z 0-9 - _ /`.
 *
 * @throws ApiError `400 invalid_path`.
 */
export function rejectEncodedPath(): MiddlewareHandler<DevEnv> {
  return async function rejectPercentEncoding(c, next) {
    const path = rawPath(c.req.url);

    if (path.includes("%")) {
      throw new ApiError(
        400,
        "invalid_path",
        `Invalid request path ${JSON.stringify(path)}: percent-encoding (%XX) is not allowed; secret paths use only a-z, 0-9, -, _ and /`,
        { details: { path } },
      );
    }
    return next();
  };
}

/**
 * Creates the middleware that limits request bodies: `MAX_TOKEN_BODY_BYTES` on `TOKEN_ROUTES`,
 * `MAX_BODY_BYTES` elsewhere. A `Content-Length` over the limit is rejected before any byte of the
 * body is read, and a chunked body is read only up to the limit.
 *
 * @throws ApiError `413 invalid_request` with `details.max_bytes`.
 */
export function limitBodySize(): MiddlewareHandler<DevEnv> {
  const tokenLimit = bodyLimit({ maxSize: MAX_TOKEN_BODY_BYTES, onError: tooLarge(MAX_TOKEN_BODY_BYTES) });
  const defaultLimit = bodyLimit({ maxSize: MAX_BODY_BYTES, onError: tooLarge(MAX_BODY_BYTES) });

  return function limitRequestBody(c, next) {
    return TOKEN_ROUTES.has(c.req.path) ? tokenLimit(c, next) : defaultLimit(c, next);
  };
}

// ---------------------------------------------------------------------------------------------

function tooLarge(maxBytes: number): () => never {
  return function rejectLargeBody(): never {
    // The contract names no code for 413. `invalid_request` is one that clients already know
    // and treat as final, which is right: sending the same body again fails again.
    throw new ApiError(413, "invalid_request", `Request body is larger than ${maxBytes} bytes: send a smaller body`, {
      details: { max_bytes: maxBytes },
    });
  };
}

/** Returns the path of `url` as the client sent it, without decoding, query or fragment. */
function rawPath(url: string): string {
  const start = url.charCodeAt(0) === 47 ? 0 : url.indexOf("/", url.indexOf("://") + 3);
  if (start === -1) return "/";

  const end = url.slice(start).search(/[?#]/);
  return end === -1 ? url.slice(start) : url.slice(start, start + end);
}
