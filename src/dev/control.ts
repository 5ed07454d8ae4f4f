/**
 * Dev-only control routes under `/v1/dev/`, which no real ScaiVault has. Tests use them with the
 * root token to inject faults, revoke tokens, reset rate limits and count requests:
 *
 * - `POST /v1/dev/faults`: add a fault (`method`, `path_prefix`, `status`, `code`, `count`,
 *   `retry_after`, `delay_ms`). `GET` lists the active faults and `DELETE` clears them.
 * - `POST /v1/dev/tokens/revoke-all`: every issued token gets `401 token_revoked` from now on.
 * - `POST /v1/dev/rate-limits/reset`: every rate-limit bucket is full again.
 * - `GET /v1/dev/stats`: request counts per `METHOD /route` and the subscriptions;
 *   `DELETE /v1/dev/stats` sets the counts to zero.
 */
import { ApiError, readJsonObject } from "./api-error.ts";
import type { DevApp, DevContext, DevRequestContext } from "./context.ts";
import { parseFaultSpec } from "./faults.ts";

/** Registers the dev-only control routes. Each requires the root token. */
export function registerControlRoutes(app: DevApp, context: DevContext): void {
  const { state, logger } = context;

  app.post("/v1/dev/faults", async function addFault(c) {
    requireRoot(c);

    const fault = state.faults.add(parseFaultSpec(await readJsonObject(c)));
    logger.info("fault added", { fault: fault.id, method: fault.method, pathPrefix: fault.pathPrefix, status: fault.status, count: fault.count });

    return c.json(fault, 201);
  });

  app.get("/v1/dev/faults", function listFaults(c) {
    requireRoot(c);
    return c.json({ faults: state.faults.list() });
  });

  app.delete("/v1/dev/faults", function clearFaults(c) {
    requireRoot(c);

    const cleared = state.faults.clear();
    logger.info("faults cleared", { cleared });
    return c.json({ cleared });
  });

  app.post("/v1/dev/tokens/revoke-all", function revokeAllTokens(c) {
    requireRoot(c);

    const revoked = state.tokens.revokeAll();
    logger.info("issued tokens revoked", { revoked });
    return c.json({ revoked });
  });

  app.post("/v1/dev/rate-limits/reset", function resetRateLimits(c) {
    requireRoot(c);

    state.limiter.reset();
    logger.info("rate-limit buckets reset");
    return c.json({ reset: true });
  });

  app.get("/v1/dev/stats", function readStats(c) {
    requireRoot(c);

    return c.json({
      requests: state.stats.snapshot(),
      subscriptions: state.subscriptions.list(),
      secrets: state.secrets.paths().length,
      active_tokens: state.tokens.activeCount,
    });
  });

  app.delete("/v1/dev/stats", function resetStats(c) {
    requireRoot(c);

    state.stats.reset();
    return c.body(null, 204);
  });
}

// ---------------------------------------------------------------------------------------------

function requireRoot(c: DevRequestContext): void {
  const identity = c.get("identity");
  if (identity?.type !== "root") {
    throw new ApiError(403, "access_denied", "Dev control routes require the root token");
  }
}
