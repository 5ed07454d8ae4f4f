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
 * - stop: revoke every lease held, within a time bound; a lease the server no longer knows counts
 *   as revoked. A lease that could not be revoked stays in the state file and expires at its TTL.
 *
 * The state file is written before each credential file, so that a crash leaves no lease that
 * the next start does not know about, except one whose generate call was in flight.
 */
import type { ScaiVaultClient } from "./client.ts";
import type { OutputConfig } from "./config.ts";
import { renderTarget, resolveTargets, type FileTarget } from "./deliver.ts";
import { AgentError } from "./errors.ts";
import { readIfExists, writeFileAtomic } from "./files.ts";
import { generateLease, isLeaseNotFound, lookupLease, renewLease } from "./lease-api.ts";
import { createLeaseMetrics, type LeaseMetrics } from "./lease-metrics.ts";
import { LeaseRevoker, type RevokeSummary } from "./lease-revoker.ts";
import { LeaseStore, sha256Hex, type LeaseRecord } from "./lease-store.ts";
import { atMaxLifetime, isShortGrant, nextActionAt, retryDelayMs, safetyMarginMs } from "./lease-timing.ts";
import { errorFields, getLogger } from "./log.ts";
import type { DynamicMapping } from "./mapping.ts";

const log = getLogger("leases");

/** Why a lease was generated: a metric label and a log field. */
export type GenerateReason = "start" | "max_ttl" | "short_grant" | "lost" | "renew_failed" | "retry";

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
        const record = await this.#recordOf(slot, records);
        if (record && (await this.#adopt(slot, record))) {
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

    log.info("Leases ready", { adopted: this.#slots.length - written.length, generated: written.length, files: written });
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
   * Returns the recorded active lease of `slot` whose credential its file contains, or undefined.
   * A crash between recording a new lease and writing its file leaves two candidates; the file decides.
   */
  async #recordOf(slot: Slot, records: LeaseRecord[]): Promise<LeaseRecord | undefined> {
    const { engine, role } = slot.target.mapping;
    const candidates = records.filter((entry) => entry.state === "active" && entry.file === slot.target.file && entry.engine === engine && entry.role === role);
    if (candidates.length === 0) return undefined;

    const current = await readIfExists(slot.target.file).catch(() => undefined);
    const sha = current ? sha256Hex(current.bytes) : undefined;
    const match = candidates.find((entry) => entry.fileSha256 === sha);
    if (!match) log.info("Recorded lease does not match its file: generating a new one", { leaseIds: candidates.map((entry) => entry.leaseId), file: slot.target.file });
    return match;
  }

  async #adopt(slot: Slot, record: LeaseRecord): Promise<boolean> {
    const fields = { leaseId: record.leaseId, file: record.file, generatedBy: record.generatedBy };

    if (record.expiresAt <= Date.now()) {
      log.info("Recorded lease has expired: generating a new one", fields);
      return false;
    }

    try {
      const found = await this.#track(lookupLease(this.#client, record.leaseId, { signal: this.#signal }));
      if (!found) {
        log.info("Recorded lease is gone on the server: generating a new one", fields);
        return false;
      }
      record.expiresAt = found.expiresAt;
      record.maxExpiresAt = found.maxExpiresAt ?? record.maxExpiresAt;
      record.renewable = found.renewable;
    } catch (error) {
      if (this.#signal.aborted) throw error;
      this.metrics.failures.inc({ operation: "lookup" });
      log.warn("Cannot look up recorded lease: adopting it as recorded", { ...fields, ...errorFields(error) });
    }

    slot.lease = record;
    log.info("Adopted recorded lease", { ...fields, expiresInSeconds: Math.round((record.expiresAt - Date.now()) / 1000) });
    return true;
  }

  /**
   * Generates a lease for `slot`, records it, then writes its file. The replaced lease, if any,
   * is retired and revoked after the grace period. On a failed write the old lease stays current.
   */
  async #generate(slot: Slot, reason: GenerateReason): Promise<LeaseRecord> {
    const { mapping, file } = slot.target;
    const source = `${mapping.engine}/${mapping.role}`;

    const lease = await this.#track(generateLease(this.#client, mapping.engine, mapping.role, mapping.ttlMs, { signal: this.#signal }));
    const record: LeaseRecord = {
      leaseId: lease.leaseId,
      engine: mapping.engine,
      role: mapping.role,
      file,
      fileSha256: "",
      state: "active",
      issuedAt: lease.grantedAt,
      grantedAt: lease.grantedAt,
      expiresAt: lease.expiresAt,
      maxExpiresAt: lease.maxExpiresAt,
      durationMs: lease.durationMs,
      // Renewals ask for what the first grant gave, so that a role's TTL cap does not look like a short grant.
      incrementMs: Math.min(mapping.ttlMs ?? lease.durationMs, lease.durationMs),
      renewable: lease.renewable,
      generatedBy: this.#options.owner,
    };

    let bytes: Uint8Array;
    try {
      bytes = renderTarget(slot.target, lease.data!, source);
    } catch (error) {
      this.#revoker.retire(record, Date.now());
      throw error;
    }
    record.fileSha256 = sha256Hex(bytes);

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

    if (mapping.ttlMs !== undefined && lease.durationMs < mapping.ttlMs) {
      log.info("The server granted a shorter TTL than asked; renewals ask for the granted TTL", { leaseId: record.leaseId, file, grantedSeconds: lease.durationMs / 1000 });
    }
    this.metrics.generated.inc({ reason });
    log.info(previous ? "Replaced lease: new credential written" : "Generated lease: credential written", {
      leaseId: record.leaseId,
      engine: mapping.engine,
      role: mapping.role,
      file,
      reason,
      ...(previous ? { previousLeaseId: previous.leaseId } : {}),
      ttlSeconds: lease.durationMs / 1000,
    });
    return record;
  }

  async #renew(slot: Slot): Promise<void> {
    const lease = slot.lease!;
    const fields = { leaseId: lease.leaseId, file: lease.file };

    // A renewal that is still retrying when the lease is about to expire gives way to a new lease.
    const budgetMs = Math.max(1000, lease.expiresAt - Date.now() - safetyMarginMs(lease.durationMs));
    let renewed;
    try {
      const signal = AbortSignal.any([this.#signal, AbortSignal.timeout(budgetMs)]);
      renewed = await this.#track(renewLease(this.#client, lease.leaseId, lease.incrementMs, { signal }));
    } catch (error) {
      if (this.#signal.aborted) return;
      this.metrics.failures.inc({ operation: "renew" });

      if (isLeaseNotFound(error)) {
        log.warn("Lease is gone on the server: generating a new one", fields);
        return this.#replace(slot, "lost");
      }
      if (error instanceof AgentError && error.serverCode === "lease_not_renewable") {
        log.info("Lease reached its maximum lifetime: generating a new one", fields);
        return this.#replace(slot, "max_ttl");
      }

      slot.failures += 1;
      const leftMs = lease.expiresAt - Date.now();
      if (leftMs <= safetyMarginMs(lease.durationMs)) {
        log.warn("Cannot renew lease and it expires soon: generating a new one", { ...fields, attempt: slot.failures, expiresInMs: leftMs, ...errorFields(error) });
        return this.#replace(slot, "renew_failed");
      }

      const delayMs = Math.min(retryDelayMs(slot.failures, this.#random), leftMs - safetyMarginMs(lease.durationMs));
      log.warn("Cannot renew lease, retrying", { ...fields, attempt: slot.failures, delayMs, expiresInMs: leftMs, ...errorFields(error) });
      return this.#schedule(slot, Date.now() + delayMs, "renew");
    }

    const short = isShortGrant(renewed.durationMs, lease.incrementMs);
    Object.assign(lease, {
      grantedAt: renewed.grantedAt,
      durationMs: renewed.durationMs,
      expiresAt: renewed.expiresAt,
      maxExpiresAt: renewed.maxExpiresAt ?? lease.maxExpiresAt,
      renewable: renewed.renewable && !short,
    });
    slot.failures = 0;
    this.metrics.renewals.inc();
    log.info(short ? "Renewed lease for less than asked: a new lease follows before it expires" : "Renewed lease", {
      ...fields,
      grantedSeconds: renewed.durationMs / 1000,
      expiresAt: new Date(renewed.expiresAt).toISOString(),
    });

    await this.#persist();
    this.#planNext(slot, short ? "short_grant" : "max_ttl");
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
