/**
 * One renewal of a lease and the decision that follows it. The lease is renewed, perhaps for less
 * than requested. Or it must be replaced, because it is gone, at its maximum lifetime, or about to
 * expire while renewals fail. Or the renewal is tried again after a delay.
 */
import type { ScaiVaultClient } from "./client.ts";
import { AgentError } from "./errors.ts";
import { isLeaseNotFound, renewLease } from "./lease-api.ts";
import type { GenerateReason, LeaseMetrics } from "./lease-metrics.ts";
import type { LeaseRecord } from "./lease-store.ts";
import { isShortGrant, retryDelayMs, safetyMarginMs } from "./lease-timing.ts";
import { errorFields, getLogger } from "./log.ts";

const log = getLogger("leases");

/** Next step after a renewal attempt. */
export type RenewOutcome =
  | { action: "renewed"; short: boolean }
  | { action: "replace"; reason: GenerateReason }
  | { action: "retry"; delayMs: number }
  | { action: "stopped" };

/**
 * Renews `lease` in place, logging and counting the outcome. `attempt` is the number of this
 * attempt since the last success, for the backoff. The request gives up when only the safety
 * margin before expiry is left, so that a new lease can still be generated in time.
 */
export async function renewOnce(
  lease: LeaseRecord,
  attempt: number,
  options: { client: ScaiVaultClient; signal: AbortSignal; metrics: LeaseMetrics; random: () => number },
): Promise<RenewOutcome> {
  const fields = { leaseId: lease.leaseId, file: lease.file };
  const marginMs = safetyMarginMs(lease.durationMs);
  const budgetMs = Math.max(1000, lease.expiresAt - Date.now() - marginMs);

  let renewed;
  try {
    const signal = AbortSignal.any([options.signal, AbortSignal.timeout(budgetMs)]);
    renewed = await renewLease(options.client, lease.leaseId, lease.incrementMs, { signal });
  } catch (error) {
    if (options.signal.aborted) return { action: "stopped" };
    options.metrics.failures.inc({ operation: "renew" });

    if (isLeaseNotFound(error)) {
      log.warn("Lease is gone on the server: generating a new one", fields);
      return { action: "replace", reason: "lost" };
    }
    if (error instanceof AgentError && error.serverCode === "lease_not_renewable") {
      log.info("Lease reached its maximum lifetime: generating a new one", fields);
      return { action: "replace", reason: "max_ttl" };
    }

    const leftMs = lease.expiresAt - Date.now();
    if (leftMs <= marginMs) {
      log.warn("Cannot renew lease and it expires soon: generating a new one", { ...fields, attempt, expiresInMs: leftMs, ...errorFields(error) });
      return { action: "replace", reason: "renew_failed" };
    }

    const delayMs = Math.min(retryDelayMs(attempt, options.random), leftMs - marginMs);
    log.warn("Cannot renew lease, retrying", { ...fields, attempt, delayMs, expiresInMs: leftMs, ...errorFields(error) });
    return { action: "retry", delayMs };
  }

  const short = isShortGrant(renewed.durationMs, lease.incrementMs);
  lease.grantedAt = renewed.grantedAt;
  lease.durationMs = renewed.durationMs;
  lease.expiresAt = renewed.expiresAt;
  lease.maxExpiresAt = renewed.maxExpiresAt ?? lease.maxExpiresAt;
  lease.renewable = renewed.renewable && !short;

  options.metrics.renewals.inc();
  log.info(short ? "Renewed lease for less than requested: a new lease follows before it expires" : "Renewed lease", {
    ...fields,
    grantedSeconds: renewed.durationMs / 1000,
    expiresAt: new Date(renewed.expiresAt).toISOString(),
  });
  return { action: "renewed", short };
}
