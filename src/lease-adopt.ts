/**
 * Adoption of recorded leases at start: a restarted sidecar, or the sidecar after `init`, takes
 * over the lease recorded for a DYNAMIC line instead of generating a second one. A recorded lease
 * is adopted when its file still contains its credential, it has not expired, and the server
 * still has it.
 */
import type { ScaiVaultClient } from "./client.ts";
import { AgentError } from "./errors.ts";
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
 * Result of checking a recorded lease: `adopted`; `gone` (expired, or unknown to the server);
 * `foreign`: the server refuses to show it to this identity (401, 403), so it is not ours to
 * renew or revoke and is left to expire.
 */
export type AdoptResult = "adopted" | "gone" | "foreign";

/**
 * Checks that `record` is still alive and updates its expiry from the server. When the look-up
 * fails for a passing reason (unreachable, 5xx, rate limited), the lease is adopted as recorded
 * and the failure counted.
 *
 * @throws the look-up's error when `signal` aborted.
 */
export async function adoptLease(
  record: LeaseRecord,
  options: { client: ScaiVaultClient; signal: AbortSignal; metrics: LeaseMetrics },
): Promise<AdoptResult> {
  const fields = { leaseId: record.leaseId, file: record.file, generatedBy: record.generatedBy };

  if (record.expiresAt <= Date.now()) {
    log.info("Recorded lease has expired: generating a new one", fields);
    return "gone";
  }

  try {
    const found = await lookupLease(options.client, record.leaseId, { signal: options.signal });
    if (!found) {
      log.info("Recorded lease is gone on the server: generating a new one", fields);
      return "gone";
    }
    record.expiresAt = found.expiresAt;
    record.maxExpiresAt = found.maxExpiresAt ?? record.maxExpiresAt;
    record.renewable = found.renewable;
  } catch (error) {
    if (options.signal.aborted) throw error;
    options.metrics.failures.inc({ operation: "lookup" });
    if (error instanceof AgentError && (error.status === 401 || error.status === 403)) {
      log.warn("Recorded lease is not visible to this identity: leaving it to expire, generating a new one", { ...fields, ...errorFields(error) });
      return "foreign";
    }
    log.warn("Cannot look up recorded lease: adopting it as recorded", { ...fields, ...errorFields(error) });
  }

  log.info("Adopted recorded lease", { ...fields, expiresInSeconds: Math.round((record.expiresAt - Date.now()) / 1000) });
  return "adopted";
}

/**
 * Sorts the recorded leases that no line adopted. One of a configured line (same engine, role and
 * file) is to be revoked: at once, or, when it was replaced, at the end of its recorded grace
 * period. Any other (no configured line, or `claimed` as not ours) is left alone, logged, and kept
 * in the state file until it expires.
 */
export function settleRecords(
  records: LeaseRecord[],
  claimed: Set<string>,
  lines: Array<{ engine: string; role: string; file: string }>,
): { retire: Array<{ record: LeaseRecord; at: number }>; keep: LeaseRecord[] } {
  const now = Date.now();
  const retire: Array<{ record: LeaseRecord; at: number }> = [];
  const keep: LeaseRecord[] = [];

  for (const record of records) {
    if (claimed.has(record.leaseId)) {
      keep.push(record);
      continue;
    }

    const configured = lines.some((line) => line.file === record.file && line.engine === record.engine && line.role === record.role);
    if (configured) {
      retire.push({ record, at: record.state === "retiring" ? (record.revokeAt ?? now) : now });
      continue;
    }
    if (record.expiresAt <= now) continue;

    log.warn("Recorded lease matches no DYNAMIC line: leaving it to expire at its TTL", {
      leaseId: record.leaseId,
      engine: record.engine,
      role: record.role,
      file: record.file,
      expiresAt: new Date(record.expiresAt).toISOString(),
    });
    keep.push(record);
  }
  return { retire, keep };
}
