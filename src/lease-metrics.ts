/**
 * Prometheus metrics of the dynamic leases. Labels carry credential file paths, operations and
 * reasons, never a lease's credential.
 */
import { MetricsRegistry, type Counter, type Gauge } from "./metrics.ts";

/** Why a lease was generated: the `reason` label and a log field. */
export type GenerateReason = "start" | "options" | "max_ttl" | "short_grant" | "lost" | "renew_failed" | "retry";

/** A lease operation, as the `operation` label of the failure counter. */
export type LeaseOperation = "generate" | "renew" | "revoke" | "lookup" | "write";

export interface LeaseMetrics {
  registry: MetricsRegistry;
  /** Leases held: the current one of every DYNAMIC line plus replaced ones not yet revoked. */
  held: Gauge;
  /** Seconds until the current lease of each file expires; set at scrape time. */
  expiry: Gauge;
  /** Leases generated, by reason: `start`, `max_ttl`, `short_grant`, `lost`, `renew_failed`, `retry`. */
  generated: Counter;
  /** Successful renewals. */
  renewals: Counter;
  /** Leases replaced by a new one while the pod runs, by reason (the `generated` reasons except `start`). */
  replacements: Counter;
  /**
   * Revocations, by result: `revoked`, `gone` (the server no longer knew the lease), `expired`
   * (a replaced lease left to expire at the end of its grace period, without a request) or `failed`.
   */
  revocations: Counter;
  /** Failed operations, by operation. */
  failures: Counter;
}

/** Registers the lease metrics on `registry`. */
export function createLeaseMetrics(registry = new MetricsRegistry()): LeaseMetrics {
  return {
    registry,
    held: registry.gauge("scaivault_leases_held", "Dynamic leases held, replaced ones not yet revoked included"),
    expiry: registry.gauge("scaivault_lease_expiry_seconds", "Seconds until the current lease of the file expires", ["file"]),
    generated: registry.counter("scaivault_lease_generated_total", "Leases generated, by reason", ["reason"]),
    renewals: registry.counter("scaivault_lease_renewals_total", "Successful lease renewals"),
    replacements: registry.counter("scaivault_lease_replacements_total", "Leases replaced by a new lease while running, by reason", ["reason"]),
    revocations: registry.counter("scaivault_lease_revocations_total", "Lease revocations, by result", ["result"]),
    failures: registry.counter("scaivault_lease_failures_total", "Failed lease operations, by operation", ["operation"]),
  };
}
