/**
 * Dynamic-credential routes of the dev server, over the engines of the dev config's `engines`:
 *
 * - `POST /v1/dynamic/engines/{engine}/creds/{role}` with optional `{"ttl": "2h"}`: a new lease
 *   with `data` (`username`, `password`, and for postgresql `host`, `port`, `database`).
 * - `POST /v1/dynamic/leases/{id}/renew` with optional `{"increment": "2h"}`: the lease without
 *   `data`; the grant is shorter than asked near `max_expires_at`, and `400 lease_not_renewable` once
 *   it is reached.
 * - `POST /v1/dynamic/leases/{id}/revoke`: `204`; an unknown, revoked or expired lease is `404 lease_not_found`.
 * - `GET /v1/dynamic/leases/{id}`: the lease without `data`.
 *
 * Generate draws from the `dynamic` rate-limit bucket, the others from `lease`. With access
 * rules in the dev config, generating needs read access to the path `dynamic/{engine}/{role}`,
 * and a lease may be used only by the identity that generated it, or by the root token.
 */
import { AgentError } from "../errors.ts";
import { parseDuration } from "../duration.ts";
import { ApiError, readJsonObject } from "./api-error.ts";
import type { DevApp, DevContext } from "./context.ts";
import { parseEngines } from "./dynamic-config.ts";
import { DynamicStore } from "./dynamic-store.ts";
import { enforceRateLimit } from "./ratelimit.ts";

/** Key of the lease store in `DevState.extensions`. */
export const DYNAMIC_EXTENSION = "dynamic";

/**
 * Registers the dynamic-credential routes and puts their `DynamicStore` into
 * `state.extensions` under `dynamic`. The engines are checked here, so a bad config fails at start.
 *
 * @throws AgentError `config` naming every invalid engine or role key.
 */
export function registerDynamicRoutes(app: DevApp, context: DevContext): void {
  const { state, logger } = context;
  const engines = parseEngines(context.config.engines);
  const store = new DynamicStore({ engines, now: context.now, logger });
  state.extensions.set(DYNAMIC_EXTENSION, store);

  if (engines.size) logger.info("dynamic engines configured", { engines: [...engines.values()].map((engine) => `${engine.name} (${engine.plugin})`) });

  app.post("/v1/dynamic/engines/:engine/creds/:role", async function generateCredential(c) {
    enforceRateLimit(c, state.limiter, "dynamic");

    const engine = c.req.param("engine");
    const role = c.req.param("role");
    const identity = c.get("identity")!;
    state.policy.authorize(identity, "read", `dynamic/${engine}/${role}`);

    const { ttl } = await readJsonObject(c, true);
    const lease = await store.generate(engine, role, durationField(ttl, "ttl"), identity);
    return c.json(lease, 200);
  });

  app.post("/v1/dynamic/leases/:id/renew", async function renewLease(c) {
    enforceRateLimit(c, state.limiter, "lease");

    const { increment } = await readJsonObject(c, true);
    const lease = await store.renew(c.req.param("id"), durationField(increment, "increment"), c.get("identity")!);
    return c.json(lease, 200);
  });

  app.post("/v1/dynamic/leases/:id/revoke", async function revokeLease(c) {
    enforceRateLimit(c, state.limiter, "lease");

    await store.revoke(c.req.param("id"), c.get("identity")!);
    return c.body(null, 204);
  });

  app.get("/v1/dynamic/leases/:id", function lookUpLease(c) {
    enforceRateLimit(c, state.limiter, "lease");
    return c.json(store.lookup(c.req.param("id"), c.get("identity")!), 200);
  });
}

/** Returns the lease store of a dev server's state, for tests. */
export function dynamicStore(context: { extensions: Map<string, unknown> }): DynamicStore {
  const store = context.extensions.get(DYNAMIC_EXTENSION);
  if (!(store instanceof DynamicStore)) throw new Error("The dev server was started without the dynamic routes");
  return store;
}

// ---------------------------------------------------------------------------------------------

/** Reads a duration field: a string such as `2h` or `7200s`, or a number of seconds. */
function durationField(value: unknown, name: string): number | undefined {
  if (value === undefined || value === null) return undefined;

  const text = typeof value === "number" ? String(value) : value;
  if (typeof text !== "string") throw new ApiError(400, "invalid_duration", `${name} must be a duration string such as "2h"`);

  let ms: number;
  try {
    ms = parseDuration(text, name);
  } catch (error) {
    if (!(error instanceof AgentError)) throw error;
    throw new ApiError(400, "invalid_duration", `Invalid ${name} "${text}": write a duration such as 30m, 2h or 7200s`);
  }
  if (ms < 1000) throw new ApiError(400, "invalid_duration", `Invalid ${name} "${text}": the minimum is 1s`);
  return ms;
}
