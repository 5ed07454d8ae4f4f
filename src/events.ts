/**
 * The sidecar's event subscription: a polling subscription on the watched paths, long-polled,
 * each batch handed to the refresh and acknowledged only after the refresh wrote the files, and
 * deleted at exit. Creation is limited to 20 a minute per identity, so many replicas starting at
 * once see 429: creation then backs off (honouring `Retry-After`) while the interval poll goes on.
 */
import { hostname } from "node:os";
import { randomBytes } from "node:crypto";
import type { ScaiVaultClient } from "./client.ts";
import { parsePoll, subscriptionRequest, type SubscriptionEvent } from "./contract.ts";
import { AgentError } from "./errors.ts";
import { errorFields, getLogger } from "./log.ts";
import { backoffDelay, sleep } from "./retry.ts";
import type { SubscriptionState } from "./sidecar-metrics.ts";

const log = getLogger("events");

/** Event types the sidecar subscribes to. `secret.created` brings back a deleted secret at once. */
export const WATCHED_EVENT_TYPES = ["secret.rotated", "secret.updated", "secret.deleted", "secret.created"];

/** Path globs one subscription may carry (the dev server's limit; ScaiVault documents none). */
export const MAX_SUBSCRIPTION_PATHS = 100;

/**
 * Seconds one poll waits for events: under the contract's maximum of 60 and under the 60-second
 * idle timeout common to load balancers.
 */
export const POLL_TIMEOUT_SECONDS = 50;

export interface EventWatcherOptions {
  /** Client whose requests end when the sidecar stops. */
  client: ScaiVaultClient;
  /** Watched secret paths. */
  paths: string[];
  /**
   * Refreshes the secret paths named by events. Resolves true when the files are written, so
   * that the events may be acknowledged; false leaves them to be delivered again.
   */
  onEvents: (paths: string[]) => Promise<boolean>;
  /** Called when a subscription became active after a time without one, during which events were missed. */
  onGap?: () => void;
  onState?: (state: SubscriptionState) => void;
  onEvent?: (event: SubscriptionEvent) => void;
  /** @default Math.random */
  random?: () => number;
}

/** Creates, polls and deletes the subscription; see the module comment. */
export class EventWatcher {
  readonly #options: EventWatcherOptions;
  readonly #watched: Set<string>;
  readonly #name = `scaivault-agent-sidecar-${hostname().toLowerCase().replace(/[^a-z0-9-]/g, "-").slice(0, 60)}-${randomBytes(3).toString("hex")}`;
  #id: string | undefined;
  #state: SubscriptionState = "off";

  constructor(options: EventWatcherOptions) {
    this.#options = options;
    this.#watched = new Set(options.paths);
  }

  get state(): SubscriptionState {
    return this.#state;
  }

  /** Id of the active subscription, or undefined. */
  get subscriptionId(): string | undefined {
    return this.#id;
  }

  /**
   * Tries once to create the subscription, without waiting on a 429. Called before the first
   * sync, so that no change between that read and the subscription is missed.
   */
  async createOnce(): Promise<boolean> {
    this.#setState("creating");
    try {
      await this.#create();
      return true;
    } catch (error) {
      this.#setState("backoff");
      log.warn("Cannot create event subscription yet: polling meanwhile", { ...errorFields(error), retryAfterMs: (error as AgentError).retryAfterMs });
      return false;
    }
  }

  /** Creates the subscription if needed and polls it until `signal` aborts. */
  async run(signal: AbortSignal): Promise<void> {
    let failures = 0;

    while (!signal.aborted) {
      let waitMs = 0;
      try {
        if (this.#id === undefined) {
          this.#setState("creating");
          await this.#create();
          failures = 0;
          this.#options.onGap?.();
        }

        const handled = await this.#pollOnce();
        failures = handled ? 0 : failures + 1;
        if (!handled) waitMs = backoffDelay(failures, { baseMs: 1_000, maxMs: 30_000, random: this.#options.random });
      } catch (error) {
        if (signal.aborted) break;
        failures += 1;
        waitMs = this.#handleFailure(error, failures);
      }

      if (waitMs > 0) {
        try {
          await sleep(waitMs, signal);
        } catch {
          break;
        }
      }
    }
  }

  /**
   * Deletes the subscription with `client`, whose requests must not end with the run signal.
   * Best effort: a failure is logged, and ScaiVault drops the subscription's events anyway.
   */
  async stop(client: ScaiVaultClient): Promise<void> {
    const id = this.#id;
    this.#id = undefined;
    this.#setState("stopped");
    if (id === undefined) return;

    try {
      await client.request("DELETE", `/v1/subscriptions/${encodeURIComponent(id)}`, { route: "subscriptions.delete", maxAttempts: 2 });
      log.info("Deleted event subscription", { subscription: id });
    } catch (error) {
      if (error instanceof AgentError && error.serverCode === "subscription_not_found") return;
      log.warn("Cannot delete event subscription", { subscription: id, ...errorFields(error) });
    }
  }

  // -------------------------------------------------------------------------------------------

  async #create(): Promise<void> {
    const globs = subscriptionGlobs(this.#options.paths);
    const response = await this.#options.client.request("POST", "/v1/subscriptions", {
      route: "subscriptions.create",
      body: subscriptionRequest(this.#name, globs, WATCHED_EVENT_TYPES),
      // 429 is handled here with a longer backoff than the client's, so one attempt per call.
      maxAttempts: 1,
      idempotent: false,
    });

    const id = (response.body as { id?: unknown } | undefined)?.id;
    if (typeof id !== "string" || id === "") {
      throw new AgentError("server", "Unexpected subscription response: no id", { requestId: response.requestId });
    }

    this.#id = id;
    this.#setState("active");
    log.info("Created event subscription", { subscription: id, globs: globs.length, paths: this.#options.paths.length });
  }

  /** Polls once; returns false when events came but could not be handled. */
  async #pollOnce(): Promise<boolean> {
    const id = this.#id!;
    const response = await this.#options.client.request("GET", `/v1/subscriptions/${encodeURIComponent(id)}/poll`, {
      route: "subscriptions.poll",
      query: { timeout: POLL_TIMEOUT_SECONDS, max_events: 100 },
      timeoutMs: (POLL_TIMEOUT_SECONDS + 15) * 1000,
    });

    const { events } = parsePoll(response.body ?? {});
    if (events.length === 0) return true;

    for (const event of events) this.#options.onEvent?.(event);
    const paths = [...new Set(events.filter((event) => this.#watched.has(event.path)).map((event) => event.path))];
    log.debug("Received events", { subscription: id, events: events.length, paths });

    if (paths.length > 0 && !(await this.#options.onEvents(paths))) {
      log.warn("Refresh after events failed: the events stay unacknowledged", { subscription: id, events: events.length });
      return false;
    }

    try {
      await this.#options.client.request("POST", `/v1/subscriptions/${encodeURIComponent(id)}/ack`, {
        route: "subscriptions.ack",
        body: { event_ids: events.map((event) => event.eventId) },
      });
    } catch (error) {
      // The events come again with the next poll; the refresh then finds nothing new.
      log.warn("Cannot acknowledge events", { subscription: id, events: events.length, ...errorFields(error) });
    }
    return true;
  }

  /** Logs a failure and returns the wait before the next attempt. */
  #handleFailure(error: unknown, failures: number): number {
    const random = this.#options.random;

    if (error instanceof AgentError && error.serverCode === "subscription_not_found" && this.#id !== undefined) {
      log.warn("Event subscription is gone, creating a new one", { subscription: this.#id, requestId: error.requestId });
      this.#id = undefined;
      this.#setState("creating");
      return 0;
    }

    const creating = this.#id === undefined;
    const waitMs = creating
      ? (error instanceof AgentError ? (error.retryAfterMs ?? 0) : 0) + backoffDelay(failures, { baseMs: 2_000, maxMs: 300_000, random })
      : backoffDelay(failures, { baseMs: 1_000, maxMs: 30_000, random });

    if (creating) this.#setState("backoff");
    log.warn(creating ? "Cannot create event subscription: polling meanwhile" : "Event poll failed", {
      attempt: failures,
      delayMs: waitMs,
      ...errorFields(error),
    });
    return waitMs;
  }

  #setState(state: SubscriptionState): void {
    if (state === this.#state) return;
    this.#state = state;
    this.#options.onState?.(state);
  }
}

/**
 * Returns at most `max` globs that cover `paths`: the paths themselves when few enough, else
 * their prefixes of the deepest length that fits, each followed by `/**`. Events for paths
 * outside the watched set are filtered out and acknowledged.
 */
export function subscriptionGlobs(paths: string[], max = MAX_SUBSCRIPTION_PATHS): string[] {
  const unique = [...new Set(paths)];
  if (unique.length <= max) return unique;

  const split = unique.map((path) => path.split("/"));
  const deepest = Math.max(...split.map((segments) => segments.length));
  for (let depth = deepest - 1; depth >= 1; depth--) {
    const globs = new Set(split.map((segments) => (segments.length <= depth ? segments.join("/") : `${segments.slice(0, depth).join("/")}/**`)));
    if (globs.size <= max) return [...globs];
  }
  return ["**"];
}
