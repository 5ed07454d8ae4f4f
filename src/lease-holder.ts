/**
 * The state of a lease manager: options, one slot per DYNAMIC line, leases, state file, requests in
 * flight and metrics. LeaseScheduler and LeaseManager extend it.
 *
 * Shared members are `protected` and not `#`, because a subclass in another file cannot reach `#` members.
 */
import type { ScaiVaultClient } from "./client.ts";
import type { OutputConfig } from "./config.ts";
import { resolveTargets, type FileTarget } from "./deliver.ts";
import { AgentError } from "./errors.ts";
import { ChangeBatcher } from "./lease-changes.ts";
import type { GeneratedLease } from "./lease-generate.ts";
import { createLeaseMetrics, type GenerateReason, type LeaseMetrics } from "./lease-metrics.ts";
import { LeaseRevoker, type RevokeSummary } from "./lease-revoker.ts";
import { LeaseStore, type LeaseRecord } from "./lease-store.ts";
import { errorFields, getLogger } from "./log.ts";
import type { DynamicMapping } from "./mapping.ts";

const log = getLogger("leases");

export interface LeaseManagerOptions {
  /** Its requests are bounded by the manager's own signals, so it may be bound to no signal. */
  client: ScaiVaultClient;
  mappings: DynamicMapping[];
  output: OutputConfig;
  /** Recorded with each lease it generates. */
  owner: "init" | "sidecar";
  /** Renew and replace leases after start; false for `init`, which only generates or adopts. @default true */
  renew?: boolean;
  /** Called after a lease was replaced and its new credential written, so the application reloads. */
  onCredentialsChanged?: (files: string[]) => unknown;
  /** Time the application gets to switch to new credentials before the old lease is revoked. @default 30000 */
  revokeGraceMs?: number;
  /** Upper bound of `stop()`. @default 10000 */
  stopTimeoutMs?: number;
  /** Credential changes within this window (at most half of `revokeGraceMs`) make one `onCredentialsChanged` call. @default 1000 */
  changeWindowMs?: number;
  store?: LeaseStore;
  metrics?: LeaseMetrics;
  /** @default Math.random */
  random?: () => number;
}

/** Base class of LeaseManager that contains its state (see the module comment). */
export abstract class LeaseHolder {
  readonly store: LeaseStore;
  readonly metrics: LeaseMetrics;
  protected readonly options: LeaseManagerOptions;
  protected readonly client: ScaiVaultClient;
  protected readonly slots: Slot[];
  protected readonly revoker: LeaseRevoker;
  protected readonly controller = new AbortController();
  protected readonly inFlight = new Set<Promise<unknown>>();
  protected readonly random: () => number;
  protected signal: AbortSignal = this.controller.signal;
  protected stopping: Promise<RevokeSummary> | undefined;
  protected stopped = false;
  /** True while this manager owns the state file, the only time it writes the file. */
  protected holding = false;
  /** Recorded leases of no configured line, or not ours: kept in the state file until they expire. */
  protected kept: LeaseRecord[] = [];
  /** Files this manager wrote, by lease id, with their digest. */
  protected readonly written = new Map<string, { file: string; sha: string }>();
  protected readonly changes: ChangeBatcher;

  /** @throws AgentError `config` when a target is outside the output directories. */
  constructor(options: LeaseManagerOptions) {
    this.options = options;
    this.random = options.random ?? Math.random;
    // Requests take their deadline per call, so that revocations still go out after a shutdown signal.
    this.client = options.client.withSignal(undefined);
    this.store = options.store ?? new LeaseStore(options.output);
    this.metrics = options.metrics ?? createLeaseMetrics();
    this.slots = resolveTargets(options.mappings, options.output, "DYNAMIC").map((target) => ({ target, action: "replace", failures: 0 }));
    this.revoker = new LeaseRevoker({
      client: this.client,
      metrics: this.metrics,
      random: this.random,
      signal: () => this.signal,
      onChange: () => this.persist(),
    });

    // The window is at most half the grace period, so that the signal comes before the old lease's revocation.
    this.changes = new ChangeBatcher({
      windowMs: Math.min(options.changeWindowMs ?? 1000, (options.revokeGraceMs ?? 30_000) / 2),
      notify: (files) => options.onCredentialsChanged?.(files),
      track: (promise) => this.track(promise),
    });

    this.metrics.registry.onCollect(() => this.#collect());
  }

  /** True while every DYNAMIC line holds a lease that has not expired. */
  get ready(): boolean {
    const now = Date.now();
    return this.slots.every((slot) => slot.lease !== undefined && slot.lease.expiresAt > now);
  }

  /** Copies of the leases held: the current lease of each line, then replaced ones not yet revoked. */
  leases(): LeaseRecord[] {
    return this.#records().map((record) => ({ ...record }));
  }

  /** Logs and counts a failed operation of `slot`; returns it as an AgentError naming the line. */
  protected failure(slot: Slot, error: unknown, operation: "generate"): AgentError {
    const isWrite = error instanceof AgentError && error.code === "write";
    this.metrics.failures.inc({ operation: isWrite ? "write" : operation });

    const { mapping } = slot.target;
    const code = error instanceof AgentError ? error.code : "internal";
    const message = `Cannot generate lease of DYNAMIC line ${mapping.line} (engine=${mapping.engine} role=${mapping.role} -> ${mapping.target}): ${(error as Error).message}`;
    log.error("Cannot generate lease", { line: mapping.line, engine: mapping.engine, role: mapping.role, file: slot.target.file, ...errorFields(error) });
    return new AgentError(code === "not_found" || code === "config" || code === "forbidden" ? code : "lease", message, { cause: error });
  }

  protected deps(): { client: ScaiVaultClient; signal: AbortSignal; metrics: LeaseMetrics; random: () => number } {
    return { client: this.client, signal: this.signal, metrics: this.metrics, random: this.random };
  }

  #records(): LeaseRecord[] {
    const current = this.slots.flatMap((slot) => [slot.lease, slot.pending].filter((lease): lease is LeaseRecord => lease !== undefined));
    return [...current, ...this.revoker.retired()];
  }

  /**
   * Writes the state file when this manager owns it.
   *
   * @param strict rethrow a failure as AgentError `lease` (init, whose leases nobody else could find).
   */
  protected async persist(strict = false): Promise<void> {
    if (!this.holding) return;
    const now = Date.now();
    this.kept = this.kept.filter((record) => record.expiresAt > now);

    try {
      await this.store.save([...this.#records(), ...this.kept]);
    } catch (error) {
      this.metrics.failures.inc({ operation: "write" });
      log.error("Cannot write the lease state file: a restart cannot adopt these leases", { file: this.store.path, ...errorFields(error) });
      if (strict) {
        throw new AgentError("lease", `Cannot record the leases in "${this.store.path}": ${(error as Error).message}; make it a regular file in a writable output directory`, { cause: error });
      }
    }
  }

  protected release(): void {
    if (!this.holding) return;
    this.holding = false;
    this.store.unlock();
  }

  protected track<T>(promise: Promise<T>): Promise<T> {
    this.inFlight.add(promise);
    promise.then(
      () => this.inFlight.delete(promise),
      () => this.inFlight.delete(promise),
    );
    return promise;
  }

  #collect(): void {
    const now = Date.now();
    this.metrics.held.set({}, this.#records().length);
    for (const slot of this.slots) {
      if (slot.lease) this.metrics.expiry.set({ file: slot.target.file }, Math.max(0, (slot.lease.expiresAt - now) / 1000));
      else this.metrics.expiry.remove({ file: slot.target.file });
    }
  }
}

/** The lease of one DYNAMIC line and its next action. */
export interface Slot {
  target: FileTarget<DynamicMapping>;
  /** The lease whose credential the file contains. */
  lease?: LeaseRecord;
  /** A generated lease whose file is being written. */
  pending?: LeaseRecord;
  /** At start: a generated and recorded lease whose file is written once every line has one. */
  generated?: GeneratedLease;
  /** The adopted lease's ttl changed: renew at once with the new increment. */
  renewSoon?: boolean;
  action: "renew" | "replace";
  reason?: GenerateReason;
  dueAt?: number;
  timer?: ReturnType<typeof setTimeout>;
  /** Failed attempts in a row, for the backoff. */
  failures: number;
}
