/**
 * Adoption of recorded leases at start: a restarted sidecar, or the sidecar after `init`, takes
 * over the lease recorded for a DYNAMIC line instead of generating a second one. A recorded lease
 * is adopted when its file still contains its credential, it has not expired, and the server
 * still has it.
 */
import type { ScaiVaultClient } from "./client.ts";
import { readIfExists } from "./files.ts";
import { lookupLease } from "./lease-api.ts";
import type { LeaseMetrics } from "./lease-metrics.ts";
import { sha256Hex, type LeaseRecord } from "./lease-store.ts";
import { errorFields, getLogger } from "./log.ts";

const log = getLogger("leases");

/**
 * Returns the recorded active lease of `engine`/`role` for `file` whose credential the file
 * contains, or undefined. A crash between recording a new lease and writing its file leaves two
 * candidates, and the file's content decides between them.
 */
export async function findRecordedLease(records: LeaseRecord[], line: { engine: string; role: string; file: string }): Promise<LeaseRecord | undefined> {
  const candidates = records.filter(
    (entry) => entry.state === "active" && entry.file === line.file && entry.engine === line.engine && entry.role === line.role,
  );
  if (candidates.length === 0) return undefined;

  const current = await readIfExists(line.file).catch(() => undefined);
  const sha = current ? sha256Hex(current.bytes) : undefined;
  const match = candidates.find((entry) => entry.fileSha256 === sha);
  if (!match) log.info("Recorded lease does not match its file: generating a new one", { leaseIds: candidates.map((entry) => entry.leaseId), file: line.file });
  return match;
}

/**
 * Checks that `record` is still alive and updates its expiry from the server. When the look-up
 * fails for another reason than a 404, the lease is adopted as recorded and the failure counted.
 *
 * @returns true when the lease can be adopted.
 * @throws the look-up's error when `signal` aborted.
 */
export async function adoptLease(
  record: LeaseRecord,
  options: { client: ScaiVaultClient; signal: AbortSignal; metrics: LeaseMetrics },
): Promise<boolean> {
  const fields = { leaseId: record.leaseId, file: record.file, generatedBy: record.generatedBy };

  if (record.expiresAt <= Date.now()) {
    log.info("Recorded lease has expired: generating a new one", fields);
    return false;
  }

  try {
    const found = await lookupLease(options.client, record.leaseId, { signal: options.signal });
    if (!found) {
      log.info("Recorded lease is gone on the server: generating a new one", fields);
      return false;
    }
    record.expiresAt = found.expiresAt;
    record.maxExpiresAt = found.maxExpiresAt ?? record.maxExpiresAt;
    record.renewable = found.renewable;
  } catch (error) {
    if (options.signal.aborted) throw error;
    options.metrics.failures.inc({ operation: "lookup" });
    log.warn("Cannot look up recorded lease: adopting it as recorded", { ...fields, ...errorFields(error) });
  }

  log.info("Adopted recorded lease", { ...fields, expiresInSeconds: Math.round((record.expiresAt - Date.now()) / 1000) });
  return true;
}
