/**
 * Event subscriptions with polling delivery. Each subscription queues the events whose path
 * matches one of its globs, whose type it asked for and whose path its owner may read. An event
 * stays queued, and is delivered by every poll, until the owner acknowledges it.
 */
import { DEV_TENANT_ID, type Identity } from "./context.ts";
import { compileGlob } from "./glob.ts";
import type { AccessPolicy } from "./policy.ts";
import { randomToken } from "./tokens.ts";

export const EVENT_TYPES = [
  "secret.created",
  "secret.updated",
  "secret.rotated",
  "secret.deleted",
  "secret.expiring",
  "secret.expired",
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

/** An event as polls deliver it. */
export interface EventEnvelope {
  event_id: string;
  event_type: EventType;
  timestamp: string;
  tenant_id: string;
  /** The identity whose request caused the event. */
  identity_id: string;
  path: string;
  data: Record<string, unknown>;
  request_id: string;
}

/** Validated request of a caller that creates a subscription. */
export interface SubscriptionInput {
  name: string;
  paths: string[];
  events: EventType[];
  /** Queued events kept at most; the oldest is dropped beyond it. */
  bufferSize: number;
}

/** A subscription as the dev routes and `GET /v1/dev/stats` show it. */
export interface SubscriptionInfo {
  id: string;
  name: string;
  status: "active";
  identity_id: string;
  paths: string[];
  events: EventType[];
  delivery: { type: "polling"; buffer_size: number };
  created_at: string;
  /** Events queued and not yet acknowledged. */
  pending: number;
  /** Events dropped because the buffer was full. */
  dropped: number;
}

/** Result of a poll. */
export interface PollBatch {
  events: EventEnvelope[];
  has_more: boolean;
}

/** All subscriptions, their queues and the polls waiting on them. */
export class SubscriptionStore {
  readonly #subscriptions = new Map<string, SubscriptionRecord>();
  readonly #sequenceById = new Map<string, number>();
  readonly #policy: AccessPolicy;
  readonly #now: () => number;
  #nextSequence = 1;

  constructor(options: { policy: AccessPolicy; now: () => number }) {
    this.#policy = options.policy;
    this.#now = options.now;
  }

  /** Creates a subscription owned by `owner`. */
  create(input: SubscriptionInput, owner: Identity): SubscriptionInfo {
    const record: SubscriptionRecord = {
      ...input,
      id: `sub_${randomToken(12)}`,
      owner: { ...owner },
      matchers: input.paths.map(compileGlob),
      createdAt: this.#now(),
      queue: [],
      dropped: 0,
      waiters: new Set(),
    };

    this.#subscriptions.set(record.id, record);
    return describe(record);
  }

  /** Returns the subscription `id` and its owner, or undefined when it does not exist. */
  get(id: string): { info: SubscriptionInfo; ownerId: string } | undefined {
    const record = this.#subscriptions.get(id);
    return record ? { info: describe(record), ownerId: record.owner.id } : undefined;
  }

  list(): SubscriptionInfo[] {
    return [...this.#subscriptions.values()].map(describe);
  }

  /** Deletes subscription `id` and ends the polls waiting on it. Returns false when it did not exist. */
  delete(id: string): boolean {
    const record = this.#subscriptions.get(id);
    if (!record) return false;

    this.#subscriptions.delete(id);
    wake(record);
    return true;
  }

  /** Queues a new event on every subscription it matches and wakes their waiting polls. */
  publish(input: Omit<EventEnvelope, "event_id" | "timestamp" | "tenant_id">): EventEnvelope {
    const sequence = this.#nextSequence++;
    const envelope: EventEnvelope = {
      event_id: `evt_${sequence.toString(36).padStart(8, "0")}${randomToken(6)}`,
      event_type: input.event_type,
      timestamp: new Date(this.#now()).toISOString(),
      tenant_id: DEV_TENANT_ID,
      identity_id: input.identity_id,
      path: input.path,
      data: input.data,
      request_id: input.request_id,
    };
    this.#remember(envelope.event_id, sequence);

    for (const record of this.#subscriptions.values()) {
      if (!record.events.includes(envelope.event_type)) continue;
      if (!record.matchers.some((matches) => matches(envelope.path))) continue;
      if (!this.#policy.allows(record.owner, "read", envelope.path)) continue;

      record.queue.push({ sequence, envelope });
      if (record.queue.length > record.bufferSize) {
        record.queue.shift();
        record.dropped += 1;
      }
      wake(record);
    }
    return envelope;
  }

  /**
   * Returns up to `maxEvents` unacknowledged events of subscription `id`, oldest first, skipping
   * those up to `sinceEventId`. An unknown `sinceEventId` is ignored, so every queued event comes back.
   */
  pending(id: string, maxEvents: number, sinceEventId?: string): PollBatch {
    const record = this.#subscriptions.get(id);
    if (!record) return { events: [], has_more: false };

    const since = sinceEventId === undefined ? 0 : (this.#sequenceById.get(sinceEventId) ?? 0);
    const eligible = record.queue.filter((queued) => queued.sequence > since);

    return {
      events: eligible.slice(0, maxEvents).map((queued) => structuredClone(queued.envelope)),
      has_more: eligible.length > maxEvents,
    };
  }

  /** Removes the events `eventIds` from the queue of subscription `id`. Returns how many were queued. */
  acknowledge(id: string, eventIds: string[]): number {
    const record = this.#subscriptions.get(id);
    if (!record) return 0;

    const acknowledged = new Set(eventIds);
    const before = record.queue.length;
    record.queue = record.queue.filter((queued) => !acknowledged.has(queued.envelope.event_id));
    return before - record.queue.length;
  }

  /**
   * Waits until subscription `id` gets an event or is deleted, `timeoutMs` passes or `signal`
   * aborts. It resolves in every case, and the caller then reads the queue again.
   */
  waitForEvent(id: string, timeoutMs: number, signal: AbortSignal): Promise<void> {
    const record = this.#subscriptions.get(id);
    if (!record || signal.aborted || timeoutMs <= 0) return Promise.resolve();

    return new Promise((resolve) => {
      const timer = setTimeout(done, timeoutMs);
      signal.addEventListener("abort", done, { once: true });
      record.waiters.add(done);

      function done(): void {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        record!.waiters.delete(done);
        resolve();
      }
    });
  }

  /** Ends every waiting poll, as when the server stops. */
  wakeAll(): void {
    for (const record of this.#subscriptions.values()) wake(record);
  }

  #remember(eventId: string, sequence: number): void {
    this.#sequenceById.set(eventId, sequence);

    // Bounded memory: ids older than this many events no longer work as `since_event_id`.
    if (this.#sequenceById.size > 100_000) {
      const oldest = this.#sequenceById.keys().next().value;
      if (oldest !== undefined) this.#sequenceById.delete(oldest);
    }
  }
}

// ---------------------------------------------------------------------------------------------

interface SubscriptionRecord extends SubscriptionInput {
  id: string;
  owner: Identity;
  matchers: Array<(path: string) => boolean>;
  createdAt: number;
  queue: Array<{ sequence: number; envelope: EventEnvelope }>;
  dropped: number;
  waiters: Set<() => void>;
}

function wake(record: SubscriptionRecord): void {
  for (const waiter of [...record.waiters]) waiter();
}

function describe(record: SubscriptionRecord): SubscriptionInfo {
  return {
    id: record.id,
    name: record.name,
    status: "active",
    identity_id: record.owner.id,
    paths: [...record.paths],
    events: [...record.events],
    delivery: { type: "polling", buffer_size: record.bufferSize },
    created_at: new Date(record.createdAt).toISOString(),
    pending: record.queue.length,
    dropped: record.dropped,
  };
}
