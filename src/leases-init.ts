/**
 * DYNAMIC for `init`: generate (or adopt) the lease of every line, write its file and record it
 * in the lease state file, then exit without revoking, so that the pod's sidecar adopts the
 * leases and keeps them alive. A pod without a sidecar keeps each credential until its lease
 * expires at its TTL. When a lease cannot be generated or recorded in the state file, init
 * revokes the leases it holds, removes the files it wrote for them, and fails with the lease exit
 * code. Files are written only after every lease was generated and recorded.
 * A sidecar with fewer DYNAMIC lines than init leaves init's extra leases to expire at their TTL.
 */
import type { ScaiVaultClient } from "./client.ts";
import type { InitConfig } from "./config.ts";
import { LeaseManager } from "./leases.ts";
import { errorFields, getLogger } from "./log.ts";

const log = getLogger("leases");

/** Upper bound of revoking the leases of a failed init. */
const REVOKE_ON_FAILURE_MS = 10_000;

/**
 * Delivers the leases of DYNAMIC for `runInit` (its `DynamicHook`).
 *
 * @returns the files written.
 * @throws AgentError naming the line whose lease could not be generated or written.
 */
export async function initDynamic(config: InitConfig, client: ScaiVaultClient, signal: AbortSignal): Promise<string[]> {
  const manager = new LeaseManager({ client, mappings: config.dynamic, output: config.output, owner: "init", renew: false });

  try {
    return await manager.start(signal);
  } catch (error) {
    log.error("Cannot deliver every lease: revoking the leases held", errorFields(error));
    const summary = await manager.stop(REVOKE_ON_FAILURE_MS);
    // A revoked credential left on disk would fail the application later, and more obscurely.
    await manager.removeWrittenFiles(summary.revoked).catch((cleanup) => log.warn("Cannot remove the credential files of revoked leases", errorFields(cleanup)));
    throw error;
  }
}
