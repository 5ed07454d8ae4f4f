/**
 * The life cycle of the dynamic leases of DYNAMIC, one lease per line:
 *
 * - start: adopt the lease recorded in the state file when its file still contains the lease's
 *   credential and the server still has the lease. Otherwise generate a lease and write its file.
 *   Recorded leases that no line adopts are revoked.
 * - run: renew each lease at about two thirds of its grant. When a renewal comes back short, or
 *   the lease reached its maximum lifetime, generate a new lease at two thirds of the last grant,
 *   write the new credential, call `onCredentialsChanged` once, and revoke the old lease after a
 *   grace period. A failing renewal is retried with backoff and, once the lease is about to
 *   expire, replaced by a new lease. Every failure is logged and counted.
 * - stop: revoke every lease held, within a time bound. A lease the server no longer has
 *   (`404 lease_not_found`) counts as revoked. A lease that could not be revoked stays in the
 *   state file and expires at its TTL.
 *
 * The state file is written before each credential file, so that a crash leaves no lease that
 * the next start cannot find.
 * NOTE: a lease whose generate request was in flight at a crash, or cut off by stop(), is not
 * recorded; it expires at its TTL.
 */
import type { ScaiVaultClient } from "./client.ts";
import type { OutputConfig } from "./config.ts";
import { resolveTargets, type FileTarget } from "./deliver.ts";
import { AgentError } from "./errors.ts";
import { writeFileAtomic } from "./files.ts";
import { adoptLease, findRecordedLease } from "./lease-adopt.ts";
import { generateForLine } from "./lease-generate.ts";
import { createLeaseMetrics, type GenerateReason, type LeaseMetrics } from "./lease-metrics.ts";
import { renewOnce } from "./lease-renew.ts";
import { LeaseRevoker, type RevokeSummary } from "./lease-revoker.ts";
import { LeaseStore, type LeaseRecord } from "./lease-store.ts";
import { atMaxLifetime, nextActionAt, retryDelayMs } from "./lease-timing.ts";
import { errorFields, getLogger } from "./log.ts";
import type { DynamicMapping } from "./mapping.ts";

const log = getLogger("leases");

export type { GenerateReason } from "./lease-metrics.ts";

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
  store?: LeaseStore;
  metrics?: LeaseMetrics;
  /** @default Math.random */
  random?: () => number;
}

/** Maximum delay of setTimeout (2^31 - 1 ms); later actions are reached in steps. */
const MAX_TIMER_MS = 2_147_483_647;

/** Error codes that another attempt does not fix, so the sidecar stops at start instead of retrying. */
const PERMANENT_CODES = new Set(["config", "forbidden", "not_found"]);

/** Holds the leases of DYNAMIC; see the module comment. */
export class LeaseManager {
  readonly store: LeaseStore;
  readonly metrics: LeaseMetrics;
  readonly #options: LeaseManagerOptions;
  readonly #client: ScaiVaultClient;
  readonly #slots: Slot[];
  readonly #revoker: LeaseRevoker;
  readonly #controller = new AbortController();
  readonly #inFlight = new Set<Promise<unknown>>();
  readonly #random: () => number;
  #signal: AbortSignal = this.#controller.signal;
  #stopping: Promise<RevokeSummary> | undefined;

  /** @throws AgentError `config` when a target is outside the output directories. */
  constructor(options: LeaseManagerOptions) {
    this.#options = options;
    this.#random = options.random ?? Math.random;
    // Requests take their deadline per call, so that revocations still go out after a shutdown signal.
    this.#client = options.client.withSignal(undefined);
    this.store = options.store ?? new LeaseStore(options.output);
    this.metrics = options.metrics ?? createLeaseMetrics();
    this.#slots = resolveTargets(options.mappings, options.output, "DYNAMIC").map((target) => ({ target, action: "replace", failures: 0 }));
    this.#revoker = new LeaseRevoker({
      client: this.#client,
      metrics: this.metrics,
      random: this.#random,
      signal: () => this.#signal,
      onChange: () => this.#persist(),
    });

    this.metrics.registry.onCollect(() => this.#collect());
  }

  /** True while every DYNAMIC line holds a lease that has not expired. */
  get ready(): boolean {
    const now = Date.now();
    return this.#slots.every((slot) => slot.lease !== undefined && slot.lease.expiresAt > now);
  }

  /** Copies of the leases held: the current lease of each line, then replaced ones not yet revoked. */
  leases(): LeaseRecord[] {
    return this.#records().map((record) => ({ ...record }));
  }

  /**
   * Adopts or generates the lease of every line and writes the files of generated ones.
   * With `renew`, renewals start. A line whose lease cannot be generated for a passing reason
   * (unreachable, rate limited) is then retried in the background. Without `renew`, any failure throws.
   *
   * @returns the files written.
   * @throws AgentError naming the line, for a failure that retrying does not fix (or any failure without `renew`).
   */
  async start(signal?: AbortSignal): Promise<string[]> {
    const renew = this.#options.renew ?? true;
    this.#signal = signal ? AbortSignal.any([signal, this.#controller.signal]) : this.#controller.signal;
    log.info("Starting leases", { leases: this.#slots.length, stateFile: this.store.path, renew });

    const records = await this.store.load();
    const adopted = new Set<string>();
    const written: string[] = [];
    const failures: AgentError[] = [];

    await Promise.all(
      this.#slots.map(async (slot) => {
        const record = await findRecordedLease(records, { ...slot.target.mapping, file: slot.target.file });
        if (record && (await this.#track(adoptLease(record, this.#deps())))) {
          slot.lease = record;
          adopted.add(record.leaseId);
          return;
        }

        try {
          await this.#generate(slot, "start");
          written.push(slot.target.file);
        } catch (error) {
          const failure = this.#failure(slot, error, "generate");
          if (!renew || PERMANENT_CODES.has(failure.code) || this.#signal.aborted) failures.push(failure);
          else this.#schedule(slot, Date.now() + retryDelayMs(1, this.#random), "replace", "retry");
        }
      }),
    );

    // Recorded leases that no line adopted are revoked: a changed line, a mismatched file, an expired lease.
    for (const record of records) if (!adopted.has(record.leaseId)) this.#revoker.retire(record, Date.now());
    await this.#persist();

    if (failures.length) throw failures[0]!;

    if (renew) {
      for (const slot of this.#slots) if (slot.lease) this.#planNext(slot);
      this.#revoker.startTimers();
    } else {
      await this.#revoker.revokeDue(this.#signal);
    }

    log.info("Leases ready", { adopted: adopted.size, generated: written.length, files: written });
    return written;
  }

  /**
   * Revokes every lease held within `timeoutMs`. Calling it again returns the first call's result.
   */
  stop(timeoutMs = this.#options.stopTimeoutMs ?? 10_000): Promise<RevokeSummary> {
    this.#stopping ??= this.#stopNow(timeoutMs);
    return this.#stopping;
  }

  // -------------------------------------------------------------------------------------------

  async #stopNow(timeoutMs: number): Promise<RevokeSummary> {
    const started = Date.now();
    for (const slot of this.#slots) clearTimeout(slot.timer);
    this.#revoker.stopTimers();

    // An operation in flight may be generating a lease: let it finish, so that lease is revoked too.
    if (this.#inFlight.size) await Promise.race([Promise.allSettled([...this.#inFlight]), delay(Math.min(2000, timeoutMs / 3))]);
    this.#controller.abort(new AgentError("timeout", "Leases are stopping"));

    for (const slot of this.#slots) {
      for (const lease of [slot.lease, slot.pending]) if (lease) this.#revoker.retire(lease, Date.now());
      slot.lease = undefined;
      slot.pending = undefined;
    }

    const summary = await this.#revoker.revokeAll(Math.max(500, timeoutMs - (Date.now() - started)));
    await this.#persist();
    return summary;
  }

  /**
   * Generates a lease for `slot`, records it, then writes its file. The replaced lease, if any,
   * is retired and revoked after the grace period. On a failed write the old lease stays current.
   */
  async #generate(slot: Slot, reason: GenerateReason): Promise<LeaseRecord> {
    const { mapping, file } = slot.target;
    const { record, bytes } = await this.#track(
      generateForLine(slot.target, this.#options.owner, this.#deps(), (unusable) => this.#revoker.retire(unusable, Date.now())),
    );

    // Recorded before the file is written, so that a crash in between leaks no lease.
    slot.pending = record;
    await this.#persist();

    try {
      await writeFileAtomic(file, bytes, { mode: slot.target.mode, layout: this.#options.output.layout });
    } catch (error) {
      slot.pending = undefined;
      this.#revoker.retire(record, Date.now());
      await this.#persist();
      throw error;
    }

    const previous = slot.lease;
    slot.lease = record;
    slot.pending = undefined;
    if (previous) this.#revoker.retire(previous, Math.min(Date.now() + (this.#options.revokeGraceMs ?? 30_000), previous.expiresAt));
    await this.#persist();

    this.metrics.generated.inc({ reason });
    log.info(previous ? "Replaced lease: new credential written" : "Generated lease: credential written", {
      leaseId: record.leaseId,
      engine: mapping.engine,
      role: mapping.role,
      file,
      reason,
      ...(previous ? { previousLeaseId: previous.leaseId } : {}),
      ttlSeconds: record.durationMs / 1000,
    });
    return record;
  }

  async #renew(slot: Slot): Promise<void> {
    const outcome = await this.#track(renewOnce(slot.lease!, slot.failures + 1, this.#deps()));

    switch (outcome.action) {
      case "stopped":
        return;
      case "replace":
        if (outcome.reason === "renew_failed") slot.failures += 1;
        return this.#replace(slot, outcome.reason);
      case "retry":
        slot.failures += 1;
        return this.#schedule(slot, Date.now() + outcome.delayMs, "renew");
      case "renewed":
        slot.failures = 0;
        await this.#persist();
        return this.#planNext(slot, outcome.short ? "short_grant" : "max_ttl");
    }
  }

  async #replace(slot: Slot, reason: GenerateReason): Promise<void> {
    const previous = slot.lease;

    try {
      await this.#generate(slot, reason);
    } catch (error) {
      if (this.#signal.aborted) return;
      this.#failure(slot, error, "generate");
      slot.failures += 1;

      const delayMs = retryDelayMs(slot.failures, this.#random);
      const alive = previous !== undefined && previous.expiresAt > Date.now();
      const message = alive ? "Cannot generate a new lease, retrying while the current one lasts" : "Cannot generate a lease: the credential file is stale, retrying";
      (alive ? log.warn : log.error)(message, { file: slot.target.file, line: slot.target.mapping.line, attempt: slot.failures, delayMs, ...errorFields(error) });
      return this.#schedule(slot, Date.now() + delayMs, "replace", reason);
    }

    slot.failures = 0;
    if (previous) this.metrics.replacements.inc({ reason });
    this.#planNext(slot);
    this.#revoker.startTimers();

    try {
      await this.#options.onCredentialsChanged?.([slot.target.file]);
    } catch (error) {
      log.warn("Cannot request a reload after new credentials", { file: slot.target.file, ...errorFields(error) });
    }
  }

  /** Schedules the next renewal, or the replacement when no renewal can extend the lease. */
  #planNext(slot: Slot, reason: GenerateReason = "max_ttl"): void {
    const lease = slot.lease!;
    const at = nextActionAt(lease, this.#random);
    if (atMaxLifetime(lease)) this.#schedule(slot, at, "replace", reason);
    else this.#schedule(slot, at, "renew");
  }

  #schedule(slot: Slot, at: number, action: Slot["action"], reason?: GenerateReason): void {
    clearTimeout(slot.timer);
    if (this.#stopping || this.#signal.aborted) return;

    slot.action = action;
    slot.reason = reason;
    slot.dueAt = at;
    const delayMs = Math.min(MAX_TIMER_MS, Math.max(0, at - Date.now()));
    slot.timer = setTimeout(() => void this.#track(this.#act(slot)), delayMs);
  }

  async #act(slot: Slot): Promise<void> {
    if (this.#stopping || this.#signal.aborted) return;
    if (slot.dueAt !== undefined && slot.dueAt > Date.now()) return this.#schedule(slot, slot.dueAt, slot.action, slot.reason);

    if (slot.action === "renew" && slot.lease) await this.#renew(slot);
    else await this.#replace(slot, slot.reason ?? "retry");
  }

  /** Logs and counts a failed operation of `slot`; returns it as an AgentError naming the line. */
  #failure(slot: Slot, error: unknown, operation: "generate"): AgentError {
    const isWrite = error instanceof AgentError && error.code === "write";
    this.metrics.failures.inc({ operation: isWrite ? "write" : operation });

    const { mapping } = slot.target;
    const code = error instanceof AgentError ? error.code : "internal";
    const message = `Cannot generate lease of DYNAMIC line ${mapping.line} (engine=${mapping.engine} role=${mapping.role} -> ${mapping.target}): ${(error as Error).message}`;
    log.error("Cannot generate lease", { line: mapping.line, engine: mapping.engine, role: mapping.role, file: slot.target.file, ...errorFields(error) });
    return new AgentError(code === "not_found" || code === "config" || code === "forbidden" ? code : "lease", message, { cause: error });
  }

  #deps(): { client: ScaiVaultClient; signal: AbortSignal; metrics: LeaseMetrics; random: () => number } {
    return { client: this.#client, signal: this.#signal, metrics: this.metrics, random: this.#random };
  }

  #records(): LeaseRecord[] {
    const current = this.#slots.flatMap((slot) => [slot.lease, slot.pending].filter((lease): lease is LeaseRecord => lease !== undefined));
    return [...current, ...this.#revoker.retired()];
  }

  async #persist(): Promise<void> {
    try {
      await this.store.save(this.#records());
    } catch (error) {
      this.metrics.failures.inc({ operation: "write" });
      log.error("Cannot write the lease state file: a restart cannot adopt these leases", { file: this.store.path, ...errorFields(error) });
    }
  }

  #track<T>(promise: Promise<T>): Promise<T> {
    this.#inFlight.add(promise);
    promise.then(
      () => this.#inFlight.delete(promise),
      () => this.#inFlight.delete(promise),
    );
    return promise;
  }

  #collect(): void {
    const now = Date.now();
    this.metrics.held.set({}, this.#records().length);
    for (const slot of this.#slots) {
      if (slot.lease) this.metrics.expiry.set({ file: slot.target.file }, Math.max(0, (slot.lease.expiresAt - now) / 1000));
      else this.metrics.expiry.remove({ file: slot.target.file });
    }
  }
}

// ---------------------------------------------------------------------------------------------

interface Slot {
  target: FileTarget<DynamicMapping>;
  /** The lease whose credential the file contains. */
  lease?: LeaseRecord;
  /** A generated lease whose file is being written. */
  pending?: LeaseRecord;
  action: "renew" | "replace";
  reason?: GenerateReason;
  dueAt?: number;
  timer?: ReturnType<typeof setTimeout>;
  /** Failed attempts in a row, for the backoff. */
  failures: number;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
