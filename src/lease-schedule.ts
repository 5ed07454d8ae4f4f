/**
 * Generation, writing, renewal and replacement of the lease of each DYNAMIC line, each line on its
 * own timer. The module comment of leases.ts gives the rules.
 */
import { AgentError } from "./errors.ts";
import { writeFileAtomic } from "./files.ts";
import { generateForLine, type GeneratedLease } from "./lease-generate.ts";
import { LeaseHolder, type Slot } from "./lease-holder.ts";
import type { GenerateReason } from "./lease-metrics.ts";
import { renewOnce } from "./lease-renew.ts";
import type { LeaseRecord } from "./lease-store.ts";
import { atMaxLifetime, nextActionAt, retryDelayMs } from "./lease-timing.ts";
import { errorFields, getLogger } from "./log.ts";
import { raceAbort } from "./retry.ts";

const log = getLogger("leases");

/** Maximum delay of setTimeout (2^31 - 1 ms); later actions are reached in steps. */
const MAX_TIMER_MS = 2_147_483_647;

/** Upper bound of one generate request; it is not cut by the run signal. */
const GENERATE_TIMEOUT_MS = 30_000;

/** Upper bound of revoking a lease whose generate request returned after stop() ended. */
const LATE_REVOKE_MS = 5_000;

/** Base class of LeaseManager that generates, renews and replaces the lease of each line. */
export abstract class LeaseScheduler extends LeaseHolder {
  /**
   * Generates a lease for `slot` and records it as pending; its file is not written yet. The
   * request is bounded by its own timeout, not by the run signal: a lease that arrives while
   * stopping is retired (and revoked at once when stop() has ended).
   *
   * @param strict throw when the state file cannot be written (init), after retiring the lease.
   */
  protected async obtain(slot: Slot, strict: boolean): Promise<GeneratedLease> {
    const retireNow = (record: LeaseRecord) => this.revoker.retire(record, Date.now());
    const request = generateForLine(slot.target, this.options.owner, { client: this.client, signal: AbortSignal.timeout(GENERATE_TIMEOUT_MS) }, retireNow);

    const generation = this.track(
      request.then(async (generated) => {
        if (this.stopping || this.signal.aborted) {
          log.info("Lease arrived while stopping: revoking it", { leaseId: generated.record.leaseId, file: slot.target.file });
          retireNow(generated.record);
          if (this.stopped) await this.revoker.revokeAll(LATE_REVOKE_MS);
          await this.persist();
          throw new AgentError("timeout", "Leases are stopping");
        }

        // Recorded before the file is written, so that a crash in between leaks no lease.
        slot.pending = generated.record;
        try {
          await this.persist(strict);
        } catch (error) {
          slot.pending = undefined;
          retireNow(generated.record);
          throw error;
        }
        return generated;
      }),
    );
    return raceAbort(generation, this.signal);
  }

  /**
   * Writes the file of a generated lease and makes it the line's lease. The replaced lease, if
   * any, is retired and revoked after the grace period. On a failed write the old lease stays current.
   */
  protected async install(slot: Slot, generated: GeneratedLease, reason: GenerateReason): Promise<void> {
    const { mapping, file } = slot.target;
    const { record, bytes } = generated;

    try {
      await writeFileAtomic(file, bytes, { mode: slot.target.mode, layout: this.options.output.layout });
    } catch (error) {
      slot.pending = undefined;
      this.revoker.retire(record, Date.now());
      await this.persist();
      throw error;
    }
    this.written.set(record.leaseId, { file, sha: record.fileSha256 });

    const previous = slot.lease;
    slot.lease = record;
    slot.pending = undefined;
    if (previous) this.revoker.retire(previous, Math.min(Date.now() + (this.options.revokeGraceMs ?? 30_000), previous.expiresAt));
    await this.persist();

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
    const generated = await this.obtain(slot, false);
    await this.install(slot, generated, reason);
  }

  async #renew(slot: Slot): Promise<void> {
    const outcome = await this.track(renewOnce(slot.lease!, slot.failures + 1, this.deps()));

    switch (outcome.action) {
      case "stopped":
        return;
      case "replace":
        if (outcome.reason === "renew_failed") slot.failures += 1;
        return this.#replace(slot, outcome.reason);
      case "retry":
        slot.failures += 1;
        return this.schedule(slot, Date.now() + outcome.delayMs, "renew");
      case "renewed":
        slot.failures = 0;
        await this.persist();
        return this.planNext(slot, outcome.short ? "short_grant" : "max_ttl");
    }
  }

  async #replace(slot: Slot, reason: GenerateReason): Promise<void> {
    const previous = slot.lease;

    try {
      await this.#generate(slot, reason);
    } catch (error) {
      if (this.signal.aborted) return;
      this.failure(slot, error, "generate");
      slot.failures += 1;

      const delayMs = retryDelayMs(slot.failures, this.random);
      const alive = previous !== undefined && previous.expiresAt > Date.now();
      const message = alive ? "Cannot generate a new lease, retrying while the current one lasts" : "Cannot generate a lease: the credential file is stale, retrying";
      (alive ? log.warn : log.error)(message, { file: slot.target.file, line: slot.target.mapping.line, attempt: slot.failures, delayMs, ...errorFields(error) });
      return this.schedule(slot, Date.now() + delayMs, "replace", reason);
    }

    slot.failures = 0;
    if (previous) this.metrics.replacements.inc({ reason });
    this.planNext(slot);
    this.revoker.startTimers();

    this.changes.add(slot.target.file);
  }

  /** Schedules the next renewal, or the replacement when no renewal can extend the lease. */
  protected planNext(slot: Slot, reason: GenerateReason = "max_ttl"): void {
    const lease = slot.lease!;
    const at = nextActionAt(lease, this.random);
    if (atMaxLifetime(lease)) this.schedule(slot, at, "replace", reason);
    else this.schedule(slot, at, "renew");
  }

  protected schedule(slot: Slot, at: number, action: Slot["action"], reason?: GenerateReason): void {
    clearTimeout(slot.timer);
    if (this.stopping || this.signal.aborted) return;

    slot.action = action;
    slot.reason = reason;
    slot.dueAt = at;
    const delayMs = Math.min(MAX_TIMER_MS, Math.max(0, at - Date.now()));
    slot.timer = setTimeout(() => void this.track(this.#act(slot)), delayMs);
  }

  async #act(slot: Slot): Promise<void> {
    if (this.stopping || this.signal.aborted) return;
    if (slot.dueAt !== undefined && slot.dueAt > Date.now()) return this.schedule(slot, slot.dueAt, slot.action, slot.reason);

    if (slot.action === "renew" && slot.lease) await this.#renew(slot);
    else await this.#replace(slot, slot.reason ?? "retry");
  }
}

