/**
 * The life cycle of the dynamic leases of DYNAMIC, one lease per line:
 *
 * - start: take the exclusive hold on the state file (a second live holder fails at once). Adopt
 *   the lease recorded for each line when its file still contains the lease's credential, the
 *   server still has the lease, and the line's options (format, field, mode) are those recorded;
 *   with other options a new lease replaces it. Otherwise generate a lease. Files are written
 *   only after every lease was generated and recorded. Recorded leases of a configured line
 *   (engine, role, file) that no line adopts are revoked, a replaced one at the end of its grace
 *   period; entries of no configured line, and leases the server will not show to this identity,
 *   are left alone and expire at their TTL.
 * - run: renew each lease at about two thirds of its grant. When a renewal comes back short, or
 *   the lease reached its maximum lifetime, generate a new lease at two thirds of the last grant,
 *   write the new credential, call `onCredentialsChanged` once for the changes of one second, and
 *   revoke the old lease after a
 *   grace period. A failing renewal is retried with backoff and, once the lease is about to
 *   expire, replaced by a new lease. Every failure is logged and counted.
 * - stop: revoke every lease held, within a time bound. A lease the server no longer has
 *   (`404 lease_not_found`) counts as revoked. A lease that could not be revoked stays in the
 *   state file and expires at its TTL.
 *
 * The state file is written before each credential file, so that a crash leaves no lease that
 * the next start cannot find.
 * A generate request is not tied to the run signal (a cancelled request may still create the
 * lease on the server): stop() waits for it, bounded, and revokes what it returns, even late.
 * NOTE: a lease whose generate request was in flight at a crash is not recorded; it expires at its TTL.
 */
import type { ScaiVaultClient } from "./client.ts";
import type { OutputConfig } from "./config.ts";
import { resolveTargets, type FileTarget } from "./deliver.ts";
import { AgentError } from "./errors.ts";
import { writeFileAtomic } from "./files.ts";
import { rm } from "node:fs/promises";
import { readIfExists } from "./files.ts";
import { adoptLease, findRecordedLease, settleRecords } from "./lease-adopt.ts";
import { ChangeBatcher } from "./lease-changes.ts";
import { generateForLine, renderDifferences, renderOptionsOf, type GeneratedLease } from "./lease-generate.ts";
import { createLeaseMetrics, type GenerateReason, type LeaseMetrics } from "./lease-metrics.ts";
import { renewOnce } from "./lease-renew.ts";
import { LeaseRevoker, type RevokeSummary } from "./lease-revoker.ts";
import { LeaseStore, sha256Hex, type LeaseRecord } from "./lease-store.ts";
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
  /** Credential changes within this window (at most half of `revokeGraceMs`) make one `onCredentialsChanged` call. @default 1000 */
  changeWindowMs?: number;
  store?: LeaseStore;
  metrics?: LeaseMetrics;
  /** @default Math.random */
  random?: () => number;
}

/** Maximum delay of setTimeout (2^31 - 1 ms); later actions are reached in steps. */
const MAX_TIMER_MS = 2_147_483_647;

/** Error codes that another attempt does not fix, so the sidecar stops at start instead of retrying. */
const PERMANENT_CODES = new Set(["config", "forbidden", "not_found"]);

/** Upper bound of one generate request; it is not cut by the run signal. */
const GENERATE_TIMEOUT_MS = 30_000;

/** Upper bound of revoking a lease whose generate request returned after stop() ended. */
const LATE_REVOKE_MS = 5_000;

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
  #stopped = false;
  /** True while this manager holds the state file; only then does it write it. */
  #holding = false;
  /** Recorded leases of no configured line, or not ours: kept in the state file until they expire. */
  #kept: LeaseRecord[] = [];
  /** Files this manager wrote, by lease id, with their digest. */
  readonly #written = new Map<string, { file: string; sha: string }>();
  readonly #changes: ChangeBatcher;

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

    // The window is at most half the grace period, so that the signal comes before the old lease's revocation.
    this.#changes = new ChangeBatcher({
      windowMs: Math.min(options.changeWindowMs ?? 1000, (options.revokeGraceMs ?? 30_000) / 2),
      notify: (files) => options.onCredentialsChanged?.(files),
      track: (promise) => this.#track(promise),
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

    this.store.lock(this.#options.owner);
    this.#holding = true;
    const records = await this.store.load();
    const { claimed, failures } = await this.#adoptOrGenerate(records, renew);
    this.#settleRecords(records, claimed);
    await this.#persist(!renew);
    if (failures.length) throw failures[0]!;

    // Every lease is generated and recorded: only now are the files written.
    const written: string[] = [];
    for (const slot of this.#slots) {
      if (!slot.generated) continue;
      const { generated } = slot;
      slot.generated = undefined;
      try {
        await this.#install(slot, generated, "start");
        written.push(slot.target.file);
      } catch (error) {
        const failure = this.#failure(slot, error, "generate");
        if (!renew) throw failure;
        this.#schedule(slot, Date.now() + retryDelayMs(1, this.#random), "replace", "retry");
      }
    }

    if (renew) {
      for (const slot of this.#slots) {
        if (!slot.lease || slot.timer !== undefined) continue;
        // A changed ttl applies from the first renewal, which comes at once.
        if (slot.renewSoon && !atMaxLifetime(slot.lease)) this.#schedule(slot, Date.now(), "renew");
        else this.#planNext(slot);
      }
      this.#revoker.startTimers();
    } else {
      await this.#revoker.revokeDue(this.#signal);
      await this.#persist(true);
      this.#release();
    }

    log.info("Leases ready", { adopted: claimed.size, generated: written.length, files: written });
    return written;
  }

  /**
   * Removes the files this manager wrote for `leaseIds` when they still hold that lease's
   * credential, so that a failed `init` leaves no revoked credential behind.
   */
  async removeWrittenFiles(leaseIds: string[]): Promise<string[]> {
    const removed: string[] = [];
    for (const leaseId of leaseIds) {
      const written = this.#written.get(leaseId);
      if (!written) continue;
      const current = await readIfExists(written.file).catch(() => undefined);
      if (!current || sha256Hex(current.bytes) !== written.sha) continue;
      await rm(written.file, { force: true });
      removed.push(written.file);
      log.info("Removed the credential file of a revoked lease", { leaseId, file: written.file });
    }
    return removed;
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
    this.#changes.close();

    // A generate request in flight may create a lease: wait for it, so that lease is revoked too.
    if (this.#inFlight.size) await Promise.race([Promise.allSettled([...this.#inFlight]), delay(Math.min(5000, timeoutMs / 2))]);
    this.#controller.abort(new AgentError("timeout", "Leases are stopping"));

    for (const slot of this.#slots) {
      for (const lease of [slot.lease, slot.pending]) if (lease) this.#revoker.retire(lease, Date.now());
      slot.lease = undefined;
      slot.pending = undefined;
      slot.generated = undefined;
    }

    const summary = await this.#revoker.revokeAll(Math.max(500, timeoutMs - (Date.now() - started)));
    await this.#persist();
    this.#stopped = true;
    this.#release();
    return summary;
  }

  /**
   * Adopts the recorded lease of each line, or generates one (recorded as pending, file not yet
   * written). Returns the ids of recorded leases it accounted for, and the failures that end start.
   */
  async #adoptOrGenerate(records: LeaseRecord[], renew: boolean): Promise<{ claimed: Set<string>; failures: AgentError[] }> {
    const claimed = new Set<string>();
    const failures: AgentError[] = [];

    await Promise.all(
      this.#slots.map(async (slot) => {
        const { mapping } = slot.target;
        const record = await findRecordedLease(records, { ...mapping, file: slot.target.file });
        const result = record ? await this.#track(adoptLease(record, this.#deps())) : undefined;
        if (record && result === "foreign") claimed.add(record.leaseId);

        let reason: GenerateReason = "start";
        if (record && result === "adopted") {
          claimed.add(record.leaseId);
          slot.lease = record;
          const expected = renderOptionsOf(slot.target);
          const differences = record.render ? renderDifferences(record.render, expected) : [];
          if (mapping.ttlMs !== undefined && mapping.ttlMs !== record.incrementMs) {
            differences.push(`ttl ${record.incrementMs / 1000}s -> ${mapping.ttlMs / 1000}s`);
            record.incrementMs = mapping.ttlMs;
            slot.renewSoon = true;
          }
          if (differences.length) log.warn("Adopted lease was recorded with other line options", { leaseId: record.leaseId, file: slot.target.file, differences });

          // The credential is not stored outside its file: other file options need a new lease.
          if (!record.render || !renderDifferences(record.render, expected).length) {
            record.render = expected;
            return;
          }
          reason = "options";
          log.warn("Generating a new lease for the changed file options; the adopted one is revoked after the grace period", { leaseId: record.leaseId, file: slot.target.file });
        }

        try {
          slot.generated = await this.#obtain(slot, !renew);
          if (reason === "options") slot.renewSoon = false;
        } catch (error) {
          const failure = this.#failure(slot, error, "generate");
          if (!renew || PERMANENT_CODES.has(failure.code) || this.#signal.aborted) failures.push(failure);
          else if (slot.lease) this.#schedule(slot, Date.now() + retryDelayMs(1, this.#random), "replace", reason);
          else this.#schedule(slot, Date.now() + retryDelayMs(1, this.#random), "replace", "retry");
        }
      }),
    );
    return { claimed, failures };
  }

  /** Retires the recorded leases to revoke and keeps the others; see `settleRecords`. */
  #settleRecords(records: LeaseRecord[], claimed: Set<string>): void {
    const lines = this.#slots.map((slot) => ({ engine: slot.target.mapping.engine, role: slot.target.mapping.role, file: slot.target.file }));
    const current = new Set(this.#slots.map((slot) => slot.lease));
    const { retire, keep } = settleRecords(records.filter((record) => !current.has(record)), claimed, lines);

    for (const { record, at } of retire) this.#revoker.retire(record, at);
    this.#kept.push(...keep);
  }

  /**
   * Generates a lease for `slot` and records it as pending; its file is not written yet. The
   * request is bounded by its own timeout, not by the run signal: a lease that arrives while
   * stopping is retired (and revoked at once when stop() has ended).
   *
   * @param strict throw when the state file cannot be written (init), after retiring the lease.
   */
  async #obtain(slot: Slot, strict: boolean): Promise<GeneratedLease> {
    const retireNow = (record: LeaseRecord) => this.#revoker.retire(record, Date.now());
    const request = generateForLine(slot.target, this.#options.owner, { client: this.#client, signal: AbortSignal.timeout(GENERATE_TIMEOUT_MS) }, retireNow);

    const generation = this.#track(
      request.then(async (generated) => {
        if (this.#stopping || this.#signal.aborted) {
          log.info("Lease arrived while stopping: revoking it", { leaseId: generated.record.leaseId, file: slot.target.file });
          retireNow(generated.record);
          if (this.#stopped) await this.#revoker.revokeAll(LATE_REVOKE_MS);
          await this.#persist();
          throw new AgentError("timeout", "Leases are stopping");
        }

        // Recorded before the file is written, so that a crash in between leaks no lease.
        slot.pending = generated.record;
        try {
          await this.#persist(strict);
        } catch (error) {
          slot.pending = undefined;
          retireNow(generated.record);
          throw error;
        }
        return generated;
      }),
    );
    return abortable(generation, this.#signal);
  }

  /**
   * Writes the file of a generated lease and makes it the line's lease. The replaced lease, if
   * any, is retired and revoked after the grace period. On a failed write the old lease stays current.
   */
  async #install(slot: Slot, generated: GeneratedLease, reason: GenerateReason): Promise<void> {
    const { mapping, file } = slot.target;
    const { record, bytes } = generated;

    try {
      await writeFileAtomic(file, bytes, { mode: slot.target.mode, layout: this.#options.output.layout });
    } catch (error) {
      slot.pending = undefined;
      this.#revoker.retire(record, Date.now());
      await this.#persist();
      throw error;
    }
    this.#written.set(record.leaseId, { file, sha: record.fileSha256 });

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
  }

  /** Generates, records and writes a new lease for `slot`. */
  async #generate(slot: Slot, reason: GenerateReason): Promise<void> {
    const generated = await this.#obtain(slot, false);
    await this.#install(slot, generated, reason);
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

    this.#changes.add(slot.target.file);
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

  /**
   * Writes the state file, when this manager holds it.
   *
   * @param strict rethrow a failure as AgentError `lease` (init, whose leases nobody else could find).
   */
  async #persist(strict = false): Promise<void> {
    if (!this.#holding) return;
    const now = Date.now();
    this.#kept = this.#kept.filter((record) => record.expiresAt > now);

    try {
      await this.store.save([...this.#records(), ...this.#kept]);
    } catch (error) {
      this.metrics.failures.inc({ operation: "write" });
      log.error("Cannot write the lease state file: a restart cannot adopt these leases", { file: this.store.path, ...errorFields(error) });
      if (strict) {
        throw new AgentError("lease", `Cannot record the leases in "${this.store.path}": ${(error as Error).message}; make it a regular file in a writable output directory`, { cause: error });
      }
    }
  }

  #release(): void {
    if (!this.#holding) return;
    this.#holding = false;
    this.store.unlock();
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

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves as `promise`, or rejects with the signal's reason when `signal` aborts first; `promise` runs on. */
function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}
