/**
 * Revocation of leases the manager no longer uses: a lease replaced by a new one (revoked after
 * the grace period), a recorded lease that no DYNAMIC line adopted (revoked at once), and, at
 * stop, every lease. A failed revocation is retried with backoff until the lease expires, which
 * ends it on the server anyway; `404 lease_not_found` counts as revoked. A replaced lease that
 * expires before its grace period ends is left to expire, which saves a request.
 */
import type { ScaiVaultClient } from "./client.ts";
import { revokeLease } from "./lease-api.ts";
import type { LeaseMetrics } from "./lease-metrics.ts";
import type { LeaseRecord } from "./lease-store.ts";
import { retryDelayMs } from "./lease-timing.ts";
import { errorFields, getLogger } from "./log.ts";

const log = getLogger("leases");

/** Upper bound of one revocation while running; stop() sets its own. */
const REVOKE_TIMEOUT_MS = 15_000;

/** Outcome of revoking every lease. */
export interface RevokeSummary {
  /** Lease ids revoked, or already unknown to the server. */
  revoked: string[];
  /** Lease ids that could not be revoked; they expire at their TTL. */
  failed: string[];
}

export interface LeaseRevokerOptions {
  client: ScaiVaultClient;
  metrics: LeaseMetrics;
  random: () => number;
  /** The manager's current signal, aborted at stop. */
  signal: () => AbortSignal;
  /** Called after the set of retired leases changed, to write the state file. */
  onChange: () => Promise<void>;
}

/** Retired leases waiting for their revocation. */
export class LeaseRevoker {
  readonly #options: LeaseRevokerOptions;
  readonly #entries = new Map<string, Entry>();
  #timersOn = false;

  constructor(options: LeaseRevokerOptions) {
    this.#options = options;
  }

  /** Marks `record` retiring, to be revoked at `revokeAt` (epoch milliseconds). */
  retire(record: LeaseRecord, revokeAt: number): void {
    record.state = "retiring";
    record.revokeAt = revokeAt;
    const entry: Entry = { record, revokeAt, attempts: 0 };
    clearTimeout(this.#entries.get(record.leaseId)?.timer);
    this.#entries.set(record.leaseId, entry);
    if (this.#timersOn) this.#schedule(entry);
  }

  /** Returns the retired leases not yet revoked. */
  retired(): LeaseRecord[] {
    return [...this.#entries.values()].map((entry) => entry.record);
  }

  /** Revokes each retired lease at its time from now on. */
  startTimers(): void {
    this.#timersOn = true;
    for (const entry of this.#entries.values()) if (entry.timer === undefined) this.#schedule(entry);
  }

  stopTimers(): void {
    this.#timersOn = false;
    for (const entry of this.#entries.values()) {
      clearTimeout(entry.timer);
      entry.timer = undefined;
    }
  }

  /**
   * Revokes, once each, the retired leases whose time has come, for `init`, which sets no timers.
   * Leases still in their grace period stay retired, for the sidecar to revoke.
   */
  async revokeDue(signal: AbortSignal): Promise<void> {
    const bounded = AbortSignal.any([signal, AbortSignal.timeout(REVOKE_TIMEOUT_MS)]);
    const due = [...this.#entries.values()].filter((entry) => entry.revokeAt <= Date.now());
    await Promise.all(due.map((entry) => this.#revoke(entry, bounded, false)));
  }

  /** Revokes every retired lease within `timeoutMs`; failures stay retired. */
  async revokeAll(timeoutMs: number): Promise<RevokeSummary> {
    const entries = [...this.#entries.values()];
    if (entries.length === 0) {
      log.info("No leases to revoke");
      return { revoked: [], failed: [] };
    }

    const deadline = AbortSignal.timeout(timeoutMs);
    const results = await Promise.all(entries.map(async (entry) => [entry.record.leaseId, await this.#revoke(entry, deadline, false)] as const));
    const summary: RevokeSummary = {
      revoked: results.filter(([, result]) => result !== "failed").map(([id]) => id),
      failed: results.filter(([, result]) => result === "failed").map(([id]) => id),
    };

    if (summary.failed.length) log.error("Cannot revoke some leases: they expire at their TTL", { revoked: summary.revoked.length, failed: summary.failed });
    else log.info("Revoked every lease", { revoked: summary.revoked.length });
    return summary;
  }

  // -------------------------------------------------------------------------------------------

  #schedule(entry: Entry): void {
    clearTimeout(entry.timer);
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      // A lease that expired before its grace period ended needs no request: the server ended it.
      if (entry.record.expiresAt <= Date.now()) return void this.#dropExpired(entry);

      const signal = AbortSignal.any([this.#options.signal(), AbortSignal.timeout(REVOKE_TIMEOUT_MS)]);
      void this.#revoke(entry, signal, true);
    }, Math.max(0, entry.revokeAt - Date.now()));
  }

  /** Drops an expired lease from the retired ones, without a request. */
  async #dropExpired(entry: Entry): Promise<void> {
    this.#entries.delete(entry.record.leaseId);
    this.#options.metrics.revocations.inc({ result: "expired" });
    log.info("Replaced lease expired on the server: no revocation needed", { leaseId: entry.record.leaseId, file: entry.record.file });
    await this.#options.onChange();
  }

  async #revoke(entry: Entry, signal: AbortSignal, retry: boolean): Promise<"revoked" | "gone" | "failed"> {
    const { record } = entry;
    const fields = { leaseId: record.leaseId, file: record.file };

    try {
      const result = await revokeLease(this.#options.client, record.leaseId, { signal });
      this.#options.metrics.revocations.inc({ result });
      this.#entries.delete(record.leaseId);
      log.info(result === "gone" ? "Lease was already gone on the server" : "Revoked lease", fields);
      await this.#options.onChange();
      return result;
    } catch (error) {
      // A background revocation cut short by stop(): stop() revokes this lease itself.
      if (retry && this.#options.signal().aborted) return "failed";

      this.#options.metrics.revocations.inc({ result: "failed" });
      this.#options.metrics.failures.inc({ operation: "revoke" });
      entry.attempts += 1;

      if (record.expiresAt <= Date.now()) {
        // The server ends an expired lease by itself; nothing is left to revoke.
        log.warn("Cannot revoke lease, but it has expired on the server anyway", { ...fields, ...errorFields(error) });
        this.#entries.delete(record.leaseId);
        await this.#options.onChange();
        return "failed";
      }

      if (!retry || !this.#timersOn) {
        log.warn("Cannot revoke lease", { ...fields, attempt: entry.attempts, ...errorFields(error) });
        return "failed";
      }

      entry.revokeAt = Date.now() + retryDelayMs(entry.attempts, this.#options.random);
      log.warn("Cannot revoke lease, retrying", { ...fields, attempt: entry.attempts, delayMs: entry.revokeAt - Date.now(), ...errorFields(error) });
      this.#schedule(entry);
      return "failed";
    }
  }
}

// ---------------------------------------------------------------------------------------------

interface Entry {
  record: LeaseRecord;
  /** Epoch milliseconds of the next attempt. */
  revokeAt: number;
  attempts: number;
  timer?: ReturnType<typeof setTimeout>;
}
