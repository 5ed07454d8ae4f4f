/**
 * Routes of polling subscriptions: create, long-poll, acknowledge, delete. Only the identity that
 * created a subscription, or the root token, may use it.
 */
import { ApiError, isPlainObject, readJsonObject, validationError } from "./api-error.ts";
import type { DevApp, DevContext, DevRequestContext, DevState } from "./context.ts";
import { globProblem } from "./glob.ts";
import { enforceRateLimit } from "./ratelimit.ts";
import { EVENT_TYPES, type EventType, type SubscriptionInput } from "./subscriptions.ts";

/** Maximum wait of one poll, in seconds. A larger `timeout` is lowered to it. */
export const MAX_POLL_TIMEOUT_SECONDS = 60;

/** Maximum number of events one poll returns. A larger `max_events` is lowered to it. */
export const MAX_POLL_EVENTS = 1000;

/**
 * Registers `POST /v1/subscriptions`, `GET /v1/subscriptions/{id}/poll`,
 * `POST /v1/subscriptions/{id}/ack` and `DELETE /v1/subscriptions/{id}`. Create and delete draw
 * from the `subscription` bucket, and poll and acknowledge draw from `poll`.
 */
export function registerSubscriptionRoutes(app: DevApp, context: DevContext): void {
  const { state, logger } = context;

  app.post("/v1/subscriptions", async function createSubscription(c) {
    enforceRateLimit(c, state.limiter, "subscription");

    const input = parseSubscriptionInput(await readJsonObject(c));
    const created = state.subscriptions.create(input, c.get("identity")!);

    logger.info("subscription created", { subscription: created.id, identity: created.identity_id, requestId: c.get("requestId") });
    const { pending: _pending, dropped: _dropped, ...body } = created;
    return c.json(body, 201);
  });

  app.get("/v1/subscriptions/:id/poll", async function pollSubscription(c) {
    enforceRateLimit(c, state.limiter, "poll");

    const id = c.req.param("id");
    requireOwnSubscription(c, state, id);

    const timeoutSeconds = Math.min(queryInteger(c, "timeout", 30, 0), MAX_POLL_TIMEOUT_SECONDS);
    const maxEvents = Math.min(queryInteger(c, "max_events", 100, 1), MAX_POLL_EVENTS);
    const sinceEventId = c.req.query("since_event_id") || undefined;
    const deadline = Date.now() + timeoutSeconds * 1000;
    const signal = AbortSignal.any([c.req.raw.signal, state.stopped]);

    // Waiters are woken by publish, delete and server stop, so this loop turns once per event.
    for (;;) {
      requireOwnSubscription(c, state, id);

      const batch = state.subscriptions.pending(id, maxEvents, sinceEventId);
      const remaining = deadline - Date.now();
      if (batch.events.length > 0 || remaining <= 0 || signal.aborted) return c.json(batch);

      await state.subscriptions.waitForEvent(id, remaining, signal);
    }
  });

  app.post("/v1/subscriptions/:id/ack", async function acknowledgeEvents(c) {
    enforceRateLimit(c, state.limiter, "poll");

    const id = c.req.param("id");
    requireOwnSubscription(c, state, id);

    const { event_ids: eventIds } = await readJsonObject(c);
    if (!Array.isArray(eventIds) || !eventIds.every((eventId) => typeof eventId === "string")) {
      throw validationError({ event_ids: "must be an array of event ids" });
    }

    const acknowledged = state.subscriptions.acknowledge(id, eventIds);
    return c.json({ acknowledged });
  });

  app.delete("/v1/subscriptions/:id", function deleteSubscription(c) {
    enforceRateLimit(c, state.limiter, "subscription");

    const id = c.req.param("id");
    requireOwnSubscription(c, state, id);

    state.subscriptions.delete(id);
    logger.info("subscription deleted", { subscription: id, identity: c.get("identity")!.id, requestId: c.get("requestId") });
    return c.body(null, 204);
  });
}

// ---------------------------------------------------------------------------------------------

const DEFAULT_BUFFER_SIZE = 1000;
const MAX_BUFFER_SIZE = 10_000;
const MAX_PATHS = 100;

function parseSubscriptionInput(body: Record<string, unknown>): SubscriptionInput {
  const { name, paths, events = [...EVENT_TYPES], delivery = {} } = body;
  const fields: Record<string, string> = {};

  if (name !== undefined && (typeof name !== "string" || name.length === 0 || name.length > 128)) {
    fields.name = "must be a string of 1 to 128 characters";
  }
  if (!Array.isArray(paths) || paths.length === 0 || paths.length > MAX_PATHS) {
    fields.paths = `must be an array of 1 to ${MAX_PATHS} path globs`;
  }
  if (!Array.isArray(events) || events.length === 0 || !events.every((type) => EVENT_TYPES.includes(type))) {
    fields.events = `must be a non-empty array of ${EVENT_TYPES.join(", ")}`;
  }

  const bufferSize = isPlainObject(delivery) ? (delivery.buffer_size ?? DEFAULT_BUFFER_SIZE) : undefined;
  if (!isPlainObject(delivery) || (delivery.type !== undefined && delivery.type !== "polling")) {
    fields.delivery = 'the dev server supports only {"type": "polling"} delivery';
  } else if (!Number.isInteger(bufferSize) || (bufferSize as number) < 1 || (bufferSize as number) > MAX_BUFFER_SIZE) {
    fields["delivery.buffer_size"] = `must be a whole number from 1 to ${MAX_BUFFER_SIZE}`;
  }

  if (Object.keys(fields).length > 0) throw validationError(fields);

  for (const pattern of paths as unknown[]) {
    const problem = typeof pattern === "string" ? globProblem(pattern) : "the pattern is not a string";
    if (problem) {
      throw new ApiError(400, "invalid_path", `Invalid path glob ${JSON.stringify(pattern)}: ${problem}`, {
        details: { path: pattern },
      });
    }
  }

  return {
    name: (name as string | undefined) ?? "",
    paths: [...new Set(paths as string[])],
    events: [...new Set(events as EventType[])],
    bufferSize: bufferSize as number,
  };
}

function requireOwnSubscription(c: DevRequestContext, state: DevState, id: string): void {
  const identity = c.get("identity")!;
  const found = state.subscriptions.get(id);

  if (!found) {
    throw new ApiError(404, "subscription_not_found", `Subscription "${id}" not found`, { details: { id } });
  }
  if (identity.type !== "root" && found.ownerId !== identity.id) {
    throw new ApiError(403, "access_denied", `Subscription "${id}" belongs to another identity`, { details: { id } });
  }
}

function queryInteger(c: DevRequestContext, name: string, fallback: number, min: number): number {
  const text = c.req.query(name);
  if (text === undefined || text === "") return fallback;

  // Digits only, because Number() also takes "1e3", "0x10", " 5" and "Infinity". A huge value may
  // round or become Infinity, which is fine: the caller lowers it to its maximum.
  const value = /^\d+$/.test(text) ? Number(text) : Number.NaN;
  if (Number.isNaN(value) || value < min) {
    throw new ApiError(400, "invalid_request", `Invalid query parameter ${name}: "${text}", expected a whole number >= ${min}`, {
      details: { parameter: name },
    });
  }
  return value;
}
