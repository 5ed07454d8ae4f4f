/**
 * DYNAMIC in the sidecar: the lease manager with the sidecar's reload signal, metrics registry,
 * readiness and shutdown step. Leases start before the refresh loop; at shutdown (SIGTERM,
 * SIGINT, or a fatal error) the `leases` step revokes every lease first.
 */
import type { ScaiVaultClient } from "./client.ts";
import type { SidecarConfig } from "./config.ts";
import { createLeaseMetrics } from "./lease-metrics.ts";
import { LeaseManager } from "./leases.ts";
import type { MetricsRegistry } from "./metrics.ts";
import type { Reloader } from "./reload.ts";
import type { Stopper } from "./shutdown.ts";

/** Upper bound of revoking every lease at shutdown; it fits in the sidecar's whole shutdown budget. */
export const LEASE_STOP_TIMEOUT_MS = 8_000;

export interface SidecarLeases {
  manager: LeaseManager;
  /** Adopts or generates every lease, and requests one reload when files were written. */
  start(signal: AbortSignal): Promise<void>;
  /** The shutdown step that revokes every lease. */
  stopper: Stopper;
  /** Ready while every DYNAMIC line holds a lease that has not expired. */
  readiness(): { ready: boolean; details: Record<string, unknown> };
}

/**
 * Creates the sidecar's leases, or returns undefined when DYNAMIC has no lines.
 *
 * @param client a client not bound to the run signal, so revocations go out after SIGTERM.
 * @throws AgentError `config` when a DYNAMIC target is outside the output directories.
 */
export function createSidecarLeases(options: {
  config: SidecarConfig;
  client: ScaiVaultClient;
  reloader: Reloader;
  registry: MetricsRegistry;
}): SidecarLeases | undefined {
  const { config, reloader } = options;
  if (config.dynamic.length === 0) return undefined;

  const manager = new LeaseManager({
    client: options.client,
    mappings: config.dynamic,
    output: config.output,
    owner: "sidecar",
    revokeGraceMs: config.leaseRevokeGraceMs,
    stopTimeoutMs: LEASE_STOP_TIMEOUT_MS,
    metrics: createLeaseMetrics(options.registry),
    onCredentialsChanged: (files) => reloader.signal(`${files.length} lease credential(s) replaced`),
  });

  return {
    manager,
    async start(signal) {
      const written = await manager.start(signal);
      // A pod's first start writes before the application runs; a restart that could not adopt its lease needs the reload.
      if (written.length) await reloader.signal(`${written.length} lease credential(s) written at start`, { missingExpected: true });
    },
    stopper: {
      name: "leases",
      stop: async () => {
        await manager.stop(LEASE_STOP_TIMEOUT_MS);
      },
    },
    readiness() {
      const leases = manager.leases().filter((lease) => lease.state === "active");
      return { ready: manager.ready, details: { leases: leases.length, leasesReady: manager.ready } };
    },
  };
}
