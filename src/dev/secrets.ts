/**
 * Secret routes: read (optionally one version), write, delete, rotate and batch read. Writes,
 * rotations and deletions publish `secret.*` events to the subscriptions.
 */
import { secretPathProblem } from "../paths.ts";
import { ApiError, isPlainObject, readJsonObject, validationError } from "./api-error.ts";
import type { DevApp, DevContext, DevRequestContext, Identity } from "./context.ts";
import { enforceRateLimit } from "./ratelimit.ts";
import { SECRET_TYPES, type SecretInput, type SecretType } from "./state.ts";

/** Most paths one batch read may name. */
export const MAX_BATCH_PATHS = 100;

/**
 * Registers `GET`, `PUT` and `DELETE /v1/secrets/{path}`, `POST /v1/secrets/{path}/rotate` and
 * `POST /v1/secrets/batch`. Single-secret routes draw from the `read` bucket, and a batch draws
 * one `batch` unit plus one `read` unit per returned secret.
 */
export function registerSecretRoutes(app: DevApp, context: DevContext): void {
  const { state, logger } = context;

  // Registered before the `{path}` routes, so that `batch` is not taken for a secret path.
  app.post("/v1/secrets/batch", async function batchRead(c) {
    enforceRateLimit(c, state.limiter, "batch");

    const identity = c.get("identity")!;
    const { paths, failFast, includeMetadata } = parseBatchRequest(await readJsonObject(c));
    // Maps, so that a path such as `__proto__` is an entry like any other and not the prototype.
    const secrets = new Map<string, unknown>();
    const errors = new Map<string, { code: string; message: string }>();

    for (const path of paths) {
      try {
        requireValidPath(path);
        state.policy.authorize(identity, "read", path);
        const secret = state.secrets.read(path);

        const unit = state.limiter.take(identity.id, "read");
        if (!unit.allowed) {
          throw new ApiError(429, "rate_limited", `Rate limit of ${unit.limit} read requests per minute exceeded`, {
            retryAfter: unit.retryAfter,
          });
        }

        const { data, version, secret_type, ...metadata } = secret;
        secrets.set(path, includeMetadata ? { data, version, secret_type, ...metadata } : { data, version, secret_type });
      } catch (error) {
        if (!(error instanceof ApiError)) throw error;
        if (failFast) {
          throw new ApiError(error.status, error.code, error.message, {
            details: { ...error.details, path },
            retryAfter: error.retryAfter,
          });
        }
        errors.set(path, { code: error.code, message: error.message });
      }
    }

    // Object.fromEntries defines own properties, `__proto__` included, which JSON.stringify writes.
    return c.json({ secrets: Object.fromEntries(secrets), errors: Object.fromEntries(errors) });
  });

  app.get("/v1/secrets/:path{.+}", function readSecret(c) {
    enforceRateLimit(c, state.limiter, "read");

    const path = requireValidPath(c.req.param("path"));
    state.policy.authorize(c.get("identity")!, "read", path);

    return c.json(state.secrets.read(path, queryVersion(c)));
  });

  app.put("/v1/secrets/:path{.+}", async function writeSecret(c) {
    enforceRateLimit(c, state.limiter, "read");

    const identity = c.get("identity")!;
    const path = requireValidPath(c.req.param("path"));
    state.policy.authorize(identity, "write", path);

    const { secret, previousVersion } = state.secrets.write(path, parseSecretInput(await readJsonObject(c)));
    if (previousVersion === null) {
      publish(c, identity, "secret.created", path, { version: secret.version });
    } else {
      publish(c, identity, "secret.updated", path, { old_version: previousVersion, new_version: secret.version, is_rotation: false });
    }

    logger.info("secret written", { path, version: secret.version, identity: identity.id, requestId: c.get("requestId") });
    return c.json(secret);
  });

  app.delete("/v1/secrets/:path{.+}", function deleteSecret(c) {
    enforceRateLimit(c, state.limiter, "read");

    const identity = c.get("identity")!;
    const path = requireValidPath(c.req.param("path"));
    state.policy.authorize(identity, "write", path);

    const lastVersion = state.secrets.delete(path);
    publish(c, identity, "secret.deleted", path, { permanent: true, version: lastVersion });

    logger.info("secret deleted", { path, version: lastVersion, identity: identity.id, requestId: c.get("requestId") });
    return c.body(null, 204);
  });

  // POST on a secret path has no other meaning, so a trailing `/rotate` is always a rotation,
  // even for a secret whose own last segment is `rotate`.
  app.post("/v1/secrets/:path{.+}/rotate", async function rotateSecret(c) {
    enforceRateLimit(c, state.limiter, "read");

    const identity = c.get("identity")!;
    const path = requireValidPath(c.req.param("path"));
    state.policy.authorize(identity, "write", path);

    const body = await readJsonObject(c, true);
    if (body.data !== undefined && !isPlainObject(body.data)) throw validationError({ data: "must be a JSON object" });

    const rotated = state.secrets.rotate(path, body.data as Record<string, unknown> | undefined);
    publish(c, identity, "secret.rotated", path, {
      old_version: rotated.previousVersion,
      new_version: rotated.secret.version,
      rotation_policy_id: null,
      grace_period_ends: new Date(rotated.gracePeriodEndsAt).toISOString(),
    });

    logger.info("secret rotated", { path, version: rotated.secret.version, identity: identity.id, requestId: c.get("requestId") });
    return c.json(rotated.secret);
  });

  function publish(
    c: DevRequestContext,
    identity: Identity,
    type: "secret.created" | "secret.updated" | "secret.rotated" | "secret.deleted",
    path: string,
    data: Record<string, unknown>,
  ): void {
    state.subscriptions.publish({ event_type: type, identity_id: identity.id, path, data, request_id: c.get("requestId") });
  }
}

// ---------------------------------------------------------------------------------------------

function requireValidPath(path: string): string {
  const problem = secretPathProblem(path);
  if (problem) {
    throw new ApiError(400, "invalid_path", `Invalid secret path ${JSON.stringify(path)}: ${problem}`, {
      details: { path },
    });
  }
  return path;
}

function queryVersion(c: DevRequestContext): number | undefined {
  const text = c.req.query("version");
  if (text === undefined) return undefined;

  if (!/^[1-9]\d*$/.test(text) || !Number.isSafeInteger(Number(text))) {
    throw new ApiError(400, "invalid_request", `Invalid query parameter version: "${text}", expected a whole number from 1 to ${Number.MAX_SAFE_INTEGER}`);
  }
  return Number(text);
}

function parseSecretInput(body: Record<string, unknown>): SecretInput {
  const { data, secret_type: secretType, metadata } = body;
  const fields: Record<string, string> = {};

  if (!isPlainObject(data)) fields.data = "is required and must be a JSON object";
  if (secretType !== undefined && !(SECRET_TYPES as readonly unknown[]).includes(secretType)) {
    fields.secret_type = `must be one of ${SECRET_TYPES.join(", ")}`;
  }
  if (metadata !== undefined && !isPlainObject(metadata)) fields.metadata = "must be a JSON object";

  if (Object.keys(fields).length > 0) throw validationError(fields);
  return {
    data: data as Record<string, unknown>,
    secretType: secretType as SecretType | undefined,
    metadata: metadata as Record<string, unknown> | undefined,
  };
}

function parseBatchRequest(body: Record<string, unknown>): { paths: string[]; failFast: boolean; includeMetadata: boolean } {
  const { paths, options = {} } = body;

  if (!Array.isArray(paths) || !paths.every((path) => typeof path === "string")) {
    throw validationError({ paths: "is required and must be an array of secret paths" });
  }
  if (paths.length > MAX_BATCH_PATHS) {
    throw new ApiError(400, "invalid_request", `A batch may name at most ${MAX_BATCH_PATHS} paths, found ${paths.length}`, {
      details: { max_paths: MAX_BATCH_PATHS, paths: paths.length },
    });
  }
  if (!isPlainObject(options)) throw validationError({ options: "must be a JSON object" });

  return {
    paths: [...new Set(paths as string[])],
    failFast: options.fail_fast === true,
    includeMetadata: options.include_metadata === true,
  };
}
