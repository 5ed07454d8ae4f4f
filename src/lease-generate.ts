/**
 * Generating the lease of one DYNAMIC line: the generate call, the record of the new lease, and
 * its credential rendered in the line's format (JSON, env, or one field). Nothing is written here.
 */
import type { ScaiVaultClient } from "./client.ts";
import { renderTarget, type FileTarget } from "./deliver.ts";
import { generateLease } from "./lease-api.ts";
import { sha256Hex, type LeaseRecord, type RenderOptions } from "./lease-store.ts";
import { getLogger } from "./log.ts";
import type { DynamicMapping } from "./mapping.ts";

const log = getLogger("leases");

/** A new lease and the bytes of its file. */
export interface GeneratedLease {
  record: LeaseRecord;
  bytes: Uint8Array;
}

/**
 * Generates a lease for `target`'s line and renders its credential.
 *
 * @param onUnusable receives the record of a lease whose credential cannot be rendered, so that
 * the caller revokes it.
 * @throws AgentError from the generate call, or `not_found` when the line's field is missing from the credential.
 */
export async function generateForLine(
  target: FileTarget<DynamicMapping>,
  owner: LeaseRecord["generatedBy"],
  options: { client: ScaiVaultClient; signal: AbortSignal },
  onUnusable: (record: LeaseRecord) => void,
): Promise<GeneratedLease> {
  const { mapping, file } = target;
  const lease = await generateLease(options.client, mapping.engine, mapping.role, mapping.ttlMs, { signal: options.signal });

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
    generatedBy: owner,
    render: renderOptionsOf(target),
  };
  if (mapping.ttlMs !== undefined && lease.durationMs < mapping.ttlMs) {
    log.info("The server granted a shorter TTL than requested; renewals request the granted TTL", { leaseId: record.leaseId, file, grantedSeconds: lease.durationMs / 1000 });
  }

  let bytes: Uint8Array;
  try {
    bytes = renderTarget(target, lease.data!, `${mapping.engine}/${mapping.role}`);
  } catch (error) {
    onUnusable(record);
    throw error;
  }

  record.fileSha256 = sha256Hex(bytes);
  return { record, bytes };
}

/** Returns the options of `target`'s line that shape its file, as the state file records them. */
export function renderOptionsOf(target: FileTarget<DynamicMapping>): RenderOptions {
  const { format, field, encoding } = target.mapping;
  return { format, ...(field === undefined ? {} : { field }), encoding, mode: target.mode };
}

/** Names the options in which `recorded` differs from `expected`, e.g. `["format json -> env", "mode 0644 -> 0400"]`. */
export function renderDifferences(recorded: RenderOptions, expected: RenderOptions): string[] {
  const differences: string[] = [];
  for (const key of ["format", "field", "encoding"] as const) {
    if (recorded[key] !== expected[key]) differences.push(`${key} ${recorded[key] ?? "(none)"} -> ${expected[key] ?? "(none)"}`);
  }
  if (recorded.mode !== expected.mode) differences.push(`mode 0${recorded.mode.toString(8)} -> 0${expected.mode.toString(8)}`);
  return differences;
}
