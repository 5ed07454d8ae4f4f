/**
 * The lease state file: which leases this pod holds, for which file, until when. `init` writes it
 * so that the pod's sidecar adopts its leases, and a restarted sidecar reads it to adopt its own
 * instead of leaking them. It is `.scaivault-leases.json` in the first output directory, with
 * mode 0600, written atomically. It contains ids, paths, times and a SHA-256 of each credential
 * file, never a credential:
 *
 *   {"version": 1, "leases": [{"leaseId": "lease_01J...", "engine": "postgres-prod", "role": "readonly",
 *     "file": "/run/secrets/db.json", "fileSha256": "9f2c...", "state": "active",
 *     "issuedAt": "...", "grantedAt": "...", "expiresAt": "...", "maxExpiresAt": "...",
 *     "durationSeconds": 7200, "incrementSeconds": 7200, "renewable": true, "generatedBy": "init",
 *     "render": {"format": "json", "encoding": "utf8", "mode": 416}}]}
 *
 * A retiring lease also has `revokeAt`, the end of its grace period. One process at a time holds
 * the file, through `<file>.lock` (see lease-lock.ts).
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import * as v from "valibot";
import type { OutputConfig } from "./config.ts";
import { outputDirs, readIfExists, writeFileAtomic } from "./files.ts";
import { acquireLeaseLock, type LeaseLock } from "./lease-lock.ts";
import { errorFields, getLogger } from "./log.ts";

const log = getLogger("leases");

/** Name of the state file inside the first output directory. */
export const LEASE_STATE_FILE = ".scaivault-leases.json";

/** Mode of the state file: it names the credential files and leases of the pod. */
export const LEASE_STATE_MODE = 0o600;

/** One lease of the pod. Times are epoch milliseconds on this machine's clock. */
export interface LeaseRecord {
  leaseId: string;
  engine: string;
  role: string;
  /** Absolute path of the credential file. */
  file: string;
  /** SHA-256 (hex) of the bytes written to `file`, to tell whether the file still contains this lease's credential. */
  fileSha256: string;
  /** `active` while its file contains the credential, `retiring` once replaced or no longer configured, to be revoked. */
  state: "active" | "retiring";
  issuedAt: number;
  /** Time of the response to the last generate or renew. */
  grantedAt: number;
  expiresAt: number;
  maxExpiresAt?: number;
  /** Milliseconds of the last grant. */
  durationMs: number;
  /** Milliseconds asked for on each renewal. */
  incrementMs: number;
  renewable: boolean;
  generatedBy: "init" | "sidecar";
  /** For a retiring lease: when to revoke it (the end of its grace period). */
  revokeAt?: number;
  /** The line options its file was rendered with; undefined in files of older versions. */
  render?: RenderOptions;
}

/** The options of a DYNAMIC line that shape its file. */
export interface RenderOptions {
  format: string;
  field?: string;
  encoding: string;
  mode: number;
}

/** Reads and writes the state file. Writes happen one after another, in call order. */
export class LeaseStore {
  readonly path: string;
  readonly #output: OutputConfig;
  #tail: Promise<void> = Promise.resolve();
  #lock: LeaseLock | undefined;

  constructor(output: OutputConfig, fileName = LEASE_STATE_FILE) {
    const dir = outputDirs(output.layout)[0];
    if (dir === undefined) throw new Error("No output directory is configured; set OUTPUT_DIRS");
    this.path = join(dir, fileName);
    this.#output = output;
  }

  /** Path of the lock file that makes one process the holder of the state file. */
  get lockPath(): string {
    return `${this.path}.lock`;
  }

  /**
   * Takes the exclusive hold on the state file for `owner`; a second call keeps the first hold.
   *
   * @throws AgentError `lease` naming the file and the pid when another live process owns it.
   */
  lock(owner: string): void {
    this.#lock ??= acquireLeaseLock(this.lockPath, owner);
  }

  /** Gives the hold back. */
  unlock(): void {
    this.#lock?.release();
    this.#lock = undefined;
  }

  /**
   * Returns the recorded leases; none when the file does not exist. A file or entry that cannot
   * be read is logged and skipped: its leases cannot be adopted and expire at their TTL.
   */
  async load(): Promise<LeaseRecord[]> {
    let current;
    try {
      current = await readIfExists(this.path);
    } catch (error) {
      log.error("Cannot read the lease state file: its leases expire at their TTL", { file: this.path, ...errorFields(error) });
      return [];
    }
    if (!current) return [];

    let parsed: unknown;
    try {
      parsed = JSON.parse(current.bytes.toString("utf8"));
    } catch {
      log.error("Lease state file is not valid JSON: its leases expire at their TTL", { file: this.path });
      return [];
    }

    const entries = Array.isArray((parsed as { leases?: unknown })?.leases) ? (parsed as { leases: unknown[] }).leases : [];
    const records: LeaseRecord[] = [];
    for (const [index, entry] of entries.entries()) {
      const result = v.safeParse(RecordSchema, entry);
      if (result.success) records.push(fromDisk(result.output));
      else log.warn("Skipping an invalid entry of the lease state file", { file: this.path, index, problem: result.issues[0]?.message });
    }
    return records;
  }

  /**
   * Replaces the file's content with `records`, atomically with mode 0600.
   *
   * @throws AgentError `write` when the file cannot be written.
   */
  save(records: LeaseRecord[]): Promise<void> {
    const bytes = new TextEncoder().encode(JSON.stringify({ version: 1, leases: records.map(toDisk) }, null, 2) + "\n");
    const write = this.#tail.then(async () => {
      await writeFileAtomic(this.path, bytes, { mode: LEASE_STATE_MODE, layout: this.#output.layout });
    });
    this.#tail = write.catch(() => {});
    return write;
  }
}

/** Returns the SHA-256 of `bytes` in hex. */
export function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

// ---------------------------------------------------------------------------------------------

const Time = v.pipe(v.string(), v.check((text) => !Number.isNaN(Date.parse(text)), "not an ISO-8601 time"));

const RecordSchema = v.object({
  leaseId: v.pipe(v.string(), v.minLength(1)),
  engine: v.string(),
  role: v.string(),
  file: v.string(),
  fileSha256: v.string(),
  state: v.picklist(["active", "retiring"]),
  issuedAt: Time,
  grantedAt: Time,
  expiresAt: Time,
  maxExpiresAt: v.optional(Time),
  durationSeconds: v.number(),
  incrementSeconds: v.number(),
  renewable: v.boolean(),
  generatedBy: v.picklist(["init", "sidecar"]),
  revokeAt: v.optional(Time),
  render: v.optional(v.object({ format: v.string(), field: v.optional(v.string()), encoding: v.string(), mode: v.number() })),
});

type DiskRecord = v.InferOutput<typeof RecordSchema>;

function toDisk(record: LeaseRecord): DiskRecord {
  return {
    leaseId: record.leaseId,
    engine: record.engine,
    role: record.role,
    file: record.file,
    fileSha256: record.fileSha256,
    state: record.state,
    issuedAt: new Date(record.issuedAt).toISOString(),
    grantedAt: new Date(record.grantedAt).toISOString(),
    expiresAt: new Date(record.expiresAt).toISOString(),
    ...(record.maxExpiresAt === undefined ? {} : { maxExpiresAt: new Date(record.maxExpiresAt).toISOString() }),
    durationSeconds: record.durationMs / 1000,
    incrementSeconds: record.incrementMs / 1000,
    renewable: record.renewable,
    generatedBy: record.generatedBy,
    ...(record.revokeAt === undefined ? {} : { revokeAt: new Date(record.revokeAt).toISOString() }),
    ...(record.render === undefined ? {} : { render: record.render }),
  };
}

function fromDisk(record: DiskRecord): LeaseRecord {
  return {
    leaseId: record.leaseId,
    engine: record.engine,
    role: record.role,
    file: record.file,
    fileSha256: record.fileSha256,
    state: record.state,
    issuedAt: Date.parse(record.issuedAt),
    grantedAt: Date.parse(record.grantedAt),
    expiresAt: Date.parse(record.expiresAt),
    maxExpiresAt: record.maxExpiresAt === undefined ? undefined : Date.parse(record.maxExpiresAt),
    durationMs: record.durationSeconds * 1000,
    incrementMs: record.incrementSeconds * 1000,
    renewable: record.renewable,
    generatedBy: record.generatedBy,
    revokeAt: record.revokeAt === undefined ? undefined : Date.parse(record.revokeAt),
    render: record.render,
  };
}
