/**
 * The sidecar's event subscription: a polling subscription on the watched paths, long-polled,
 * each batch handed to the refresh and acknowledged only after the refresh wrote the files of its
 * path, and deleted at exit. Creation is limited to 20 a minute per identity, so many replicas
 * starting at once see 429: creation then backs off (waiting at least `Retry-After`) while the
 * interval poll goes on. Creation runs beside the first sync and never delays it. A creation still
 * in flight at shutdown is given a short time to finish, and the subscription it made is deleted.
 */
import { hostname } from "node:os";
import { randomBytes } from "node:crypto";
import type { ScaiVaultClient } from "./client.ts";
import { parsePoll, subscriptionRequest, type SubscriptionEvent } from "./contract.ts";
import { AgentError } from "./errors.ts";
import { errorFields, getLogger } from "./log.ts";
import { backoffDelay, raceAbort, sleep } from "./retry.ts";
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
   * Refreshes the secret paths named by events. Resolves with the paths whose files could not be
   * made current: their events stay unacknowledged and are delivered again; the others are acknowledged.
   */
  onEvents: (paths: string[]) => Promise<string[]>;
  /**
   * Client for subscription creation, not bound to the run signal, so that a creation that
   * completes during shutdown still returns the id to delete. @default `client`
   */
  createClient?: ScaiVaultClient;
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
  /** The creation request in flight, with the controller that ends it. */
  #creating: { promise: Promise<string>; controller: AbortController } | undefined;
  #firstAttempt: { promise: Promise<void>; resolve: () => void };

  constructor(options: EventWatcherOptions) {
    this.#options = options;
    this.#watched = new Set(options.paths);
    let resolve!: () => void;
    const promise = new Promise<void>((done) => (resolve = done));
    this.#firstAttempt = { promise, resolve };
  }

  /** Resolves when the first creation attempt succeeded or failed. */
  get firstAttempt(): Promise<void> {
    return this.#firstAttempt.promise;
  }

  get state(): SubscriptionState {
    return this.#state;
  }

  /** Id of the active subscription, or undefined. */
  get subscriptionId(): string | undefined {
    return this.#id;
  }

  /**
   * Tries once to create the subscription, without waiting on a 429. `run` creates it as well;
   * this is for callers that want the subscription before anything else.
   */
  async createOnce(signal?: AbortSignal): Promise<boolean> {
    this.#setState("creating");
    try {
      await this.#create(signal);
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
          try {
            await this.#create(signal);
          } finally {
            this.#firstAttempt.resolve();
          }
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
  async stop(client: ScaiVaultClient, options: { lateCreateWaitMs?: number } = {}): Promise<void> {
    let id = this.#id;
    this.#id = undefined;
    this.#setState("stopped");
    if (id === undefined && this.#creating) id = await this.#awaitLateCreate(options.lateCreateWaitMs ?? 3_000);
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

  /**
   * Creates the subscription. When `signal` aborts first, this rejects at once and the request
   * goes on: `stop` then deletes what it created.
   */
  async #create(signal: AbortSignal | undefined): Promise<void> {
    const globs = subscriptionGlobs(this.#options.paths);
    const controller = new AbortController();
    const client = (this.#options.createClient ?? this.#options.client).withSignal(controller.signal);
    const promise = this.#requestCreate(client, globs);
    const creating = { promise, controller };
    this.#creating = creating;
    // A creation that completes after the abort stays recorded, for `stop` to delete.
    const settle = (succeeded: boolean) => {
      if (this.#creating === creating && !(succeeded && signal?.aborted)) this.#creating = undefined;
    };
    promise.then(() => settle(true), () => settle(false));

    const id = await raceAbort(promise, signal);
    this.#id = id;
    this.#setState("active");
    log.info("Created event subscription", { subscription: id, globs: globs.length, paths: this.#options.paths.length });
  }

  async #requestCreate(client: ScaiVaultClient, globs: string[]): Promise<string> {
    const response = await client.request("POST", "/v1/subscriptions", {
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
    return id;
  }

  /** Waits up to `waitMs` for a creation still in flight at shutdown; returns the id it made. */
  async #awaitLateCreate(waitMs: number): Promise<string | undefined> {
    const creating = this.#creating!;
    this.#creating = undefined;
    log.info("Event subscription creation still in flight at shutdown: waiting for it, to delete it", { waitMs });

    const timer = setTimeout(() => creating.controller.abort(new Error("shutdown")), waitMs);
    try {
      const id = await creating.promise;
      log.info("Event subscription was created during shutdown: deleting it", { subscription: id });
      return id;
    } catch (error) {
      log.info("Event subscription creation ended without a subscription", errorFields(error));
      return undefined;
    } finally {
      clearTimeout(timer);
    }
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

    const failed = new Set(paths.length > 0 ? await this.#options.onEvents(paths) : []);
    const done = events.filter((event) => !failed.has(event.path));
    if (failed.size > 0) {
      log.warn("Refresh after events left secrets not current: their events stay unacknowledged", {
        subscription: id,
        events: events.length - done.length,
        paths: [...failed].slice(0, 20),
      });
    }

    if (done.length > 0) {
      try {
        await this.#options.client.request("POST", `/v1/subscriptions/${encodeURIComponent(id)}/ack`, {
          route: "subscriptions.ack",
          body: { event_ids: done.map((event) => event.eventId) },
        });
      } catch (error) {
        // The events come again with the next poll; the refresh then finds nothing new.
        log.warn("Cannot acknowledge events", { subscription: id, events: done.length, ...errorFields(error) });
      }
    }
    return failed.size === 0;
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
    // At least Retry-After, and at least half of the backoff ceiling, so that a failure is never retried at once.
    const ceilingMs = Math.min(creating ? 300_000 : 30_000, (creating ? 2_000 : 1_000) * 2 ** (failures - 1));
    const backoffMs = Math.floor(ceilingMs / 2) + backoffDelay(1, { baseMs: Math.ceil(ceilingMs / 2), maxMs: ceilingMs, random });
    const retryAfterMs = error instanceof AgentError ? (error.retryAfterMs ?? 0) : 0;
    const waitMs = creating ? Math.max(retryAfterMs, backoffMs) : backoffMs;

    if (creating) this.#setState("backoff");
    const message = creating ? (failures === 1 ? "Cannot create event subscription yet: polling meanwhile" : "Cannot create event subscription: polling meanwhile") : "Event poll failed";
    log.warn(message, { attempt: failures, delayMs: waitMs, retryAfterMs: retryAfterMs || undefined, ...errorFields(error) });
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

