/**
 * The life cycle of the dynamic leases of DYNAMIC, one lease per line:
 *
 * - start: take the exclusive hold on the state file (a second live holder fails at once). Adopt
 *   the lease recorded for each line when its file still contains the lease's credential, the
 *   server still has the lease, and the line's options (format, field, mode) are those recorded;
 *   with other options a new lease replaces it. Otherwise generate a lease. Files are written
 *   only after every lease was generated and recorded. Recorded leases of a configured line
 *   (engine, role, file) that no line adopts are revoked, a replaced one at the end of its grace
 *   period. Entries of no configured line, and leases the server will not show to this identity,
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
import { AgentError } from "./errors.ts";
import { rm } from "node:fs/promises";
import { readIfExists } from "./files.ts";
import { adoptLease, findRecordedLease, settleRecords } from "./lease-adopt.ts";
import { renderDifferences, renderOptionsOf } from "./lease-generate.ts";
import type { GenerateReason } from "./lease-metrics.ts";
import type { RevokeSummary } from "./lease-revoker.ts";
import { LeaseScheduler } from "./lease-schedule.ts";
import { sha256Hex, type LeaseRecord } from "./lease-store.ts";
import { atMaxLifetime, retryDelayMs } from "./lease-timing.ts";
import { getLogger } from "./log.ts";

const log = getLogger("leases");

export type { GenerateReason } from "./lease-metrics.ts";
export type { LeaseManagerOptions } from "./lease-holder.ts";

/** Error codes that another attempt does not fix, so the sidecar stops at start instead of retrying. */
const PERMANENT_CODES = new Set(["config", "forbidden", "not_found"]);

/** Holds the leases of DYNAMIC; see the module comment. */
export class LeaseManager extends LeaseScheduler {
  /**
   * Adopts or generates the lease of every line and writes the files of generated ones.
   * With `renew`, renewals start. A line whose lease cannot be generated for a passing reason
   * (unreachable, rate limited) is then retried in the background. Without `renew`, any failure throws.
   *
   * @returns the files written.
   * @throws AgentError naming the line, for a failure that retrying does not fix (or any failure without `renew`).
   */
  async start(signal?: AbortSignal): Promise<string[]> {
    const renew = this.options.renew ?? true;
    this.signal = signal ? AbortSignal.any([signal, this.controller.signal]) : this.controller.signal;
    log.info("Starting leases", { leases: this.slots.length, stateFile: this.store.path, renew });

    this.store.lock(this.options.owner);
    this.holding = true;
    const records = await this.store.load();
    const { claimed, failures } = await this.#adoptOrGenerate(records, renew);
    this.#settleRecords(records, claimed);
    await this.persist(!renew);
    if (failures.length) throw failures[0]!;

    // Every lease is generated and recorded: only now are the files written.
    const written: string[] = [];
    for (const slot of this.slots) {
      if (!slot.generated) continue;
      const { generated } = slot;
      slot.generated = undefined;
      try {
        await this.install(slot, generated, "start");
        written.push(slot.target.file);
      } catch (error) {
        const failure = this.failure(slot, error, "generate");
        if (!renew) throw failure;
        this.schedule(slot, Date.now() + retryDelayMs(1, this.random), "replace", "retry");
      }
    }

    if (renew) {
      for (const slot of this.slots) {
        if (!slot.lease || slot.timer !== undefined) continue;
        // A changed ttl applies from the first renewal, which comes at once.
        if (slot.renewSoon && !atMaxLifetime(slot.lease)) this.schedule(slot, Date.now(), "renew");
        else this.planNext(slot);
      }
      this.revoker.startTimers();
    } else {
      await this.revoker.revokeDue(this.signal);
      await this.persist(true);
      this.release();
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
      const written = this.written.get(leaseId);
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
  stop(timeoutMs = this.options.stopTimeoutMs ?? 10_000): Promise<RevokeSummary> {
    this.stopping ??= this.#stopNow(timeoutMs);
    return this.stopping;
  }

  // -------------------------------------------------------------------------------------------

  async #stopNow(timeoutMs: number): Promise<RevokeSummary> {
    const started = Date.now();
    for (const slot of this.slots) clearTimeout(slot.timer);
    this.revoker.stopTimers();
    this.changes.close();

    // A generate request in flight may create a lease: wait for it, so that lease is revoked too.
    if (this.inFlight.size) await Promise.race([Promise.allSettled([...this.inFlight]), delay(Math.min(5000, timeoutMs / 2))]);
    this.controller.abort(new AgentError("timeout", "Leases are stopping"));

    for (const slot of this.slots) {
      for (const lease of [slot.lease, slot.pending]) if (lease) this.revoker.retire(lease, Date.now());
      slot.lease = undefined;
      slot.pending = undefined;
      slot.generated = undefined;
    }

    const summary = await this.revoker.revokeAll(Math.max(500, timeoutMs - (Date.now() - started)));
    await this.persist();
    this.stopped = true;
    this.release();
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
      this.slots.map(async (slot) => {
        const { mapping } = slot.target;
        const record = await findRecordedLease(records, { ...mapping, file: slot.target.file });
        const result = record ? await this.track(adoptLease(record, this.deps())) : undefined;
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
          slot.generated = await this.obtain(slot, !renew);
          if (reason === "options") slot.renewSoon = false;
        } catch (error) {
          const failure = this.failure(slot, error, "generate");
          if (!renew || PERMANENT_CODES.has(failure.code) || this.signal.aborted) failures.push(failure);
          else if (slot.lease) this.schedule(slot, Date.now() + retryDelayMs(1, this.random), "replace", reason);
          else this.schedule(slot, Date.now() + retryDelayMs(1, this.random), "replace", "retry");
        }
      }),
    );
    return { claimed, failures };
  }

  /** Retires the recorded leases to revoke and keeps the others; see `settleRecords`. */
  #settleRecords(records: LeaseRecord[], claimed: Set<string>): void {
    const lines = this.slots.map((slot) => ({ engine: slot.target.mapping.engine, role: slot.target.mapping.role, file: slot.target.file }));
    const current = new Set(this.slots.map((slot) => slot.lease));
    const { retire, keep } = settleRecords(records.filter((record) => !current.has(record)), claimed, lines);

    for (const { record, at } of retire) this.revoker.retire(record, at);
    this.kept.push(...keep);
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
