/**
 * The files of WATCH_PATHS and, per secret path, a digest of the bytes last written to each file.
 * Applying a read renders every secret and writes the files whose rendered bytes differ from what
 * was last written, so a secret deleted and created again at the same version is still delivered.
 * With `verifyDisk` (full refreshes) every file is compared with the disk as well, so a file
 * edited or removed by someone else is corrected within one interval.
 *
 * Each path ends a refresh in one of three states:
 * - current: its files hold the rendering of the secret just read;
 * - unavailable: ScaiVault reports that the secret cannot be delivered (deleted, forbidden) or its data
 *   cannot be rendered. The last files stay; the path is settled until the secret changes;
 * - pending: a transient failure (throttled, unreachable, disk write). The caller retries soon.
 * A path is settled when current or unavailable; the oldest settle time is the sync's age.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import type { ReadResult } from "./client.ts";
import type { SidecarConfig } from "./config.ts";
import type { Secret } from "./contract.ts";
import { renderTarget, resolveTargets, type FileTarget } from "./deliver.ts";
import { AgentError } from "./errors.ts";
import { writeFileAtomic } from "./files.ts";
import { errorFields, getLogger } from "./log.ts";
import type { SidecarMetrics } from "./sidecar-metrics.ts";

const log = getLogger("sidecar");

/** Kinds of unavailability that a retry cannot change until the secret itself changes. */
const SETTLED_KINDS = new Set(["deleted", "not_found", "forbidden", "config", "render"]);

/** A path and why it is not current. */
export interface PathIssue {
  path: string;
  kind: string;
}

/** Result of applying one read to the files. */
export interface ApplyResult {
  changedPaths: string[];
  changedFiles: string[];
  /** Settled paths with no usable secret: `deleted`, `forbidden`, `render`, ... */
  unavailable: PathIssue[];
  /** Paths left not current by a transient failure (`rate_limited`, `unreachable`, `write`, ...). */
  pending: PathIssue[];
  /** Paths that became unavailable with this read, for one aggregated log line per kind. */
  newlyUnavailable: PathIssue[];
  /** Paths that were unavailable or pending before and are current again. */
  recovered: PathIssue[];
  /** Version written, per changed path. */
  versions: Record<string, number>;
}

/** Watched files and their digests; see the module comment. */
export class WatchedFiles {
  /** Unique watched secret paths, in the order of WATCH_PATHS. */
  readonly paths: string[];
  /** Absolute paths of every watched file. */
  readonly files: string[];
  readonly #deps: { config: SidecarConfig; metrics: SidecarMetrics };
  readonly #targets = new Map<string, FileTarget[]>();
  readonly #state = new Map<string, PathState>();
  /** Files known to exist because a refresh wrote or confirmed them. */
  readonly #confirmed = new Set<string>();
  /** Time of the last apply, the settle time when no path is watched (a DYNAMIC-only sidecar). */
  #appliedAt: number | undefined;

  /** @throws AgentError `config` when a target is outside the output directories. */
  constructor(config: SidecarConfig, metrics: SidecarMetrics) {
    this.#deps = { config, metrics };

    for (const target of resolveTargets(config.watch, config.output, "WATCH_PATHS")) {
      const list = this.#targets.get(target.mapping.path) ?? [];
      list.push(target);
      this.#targets.set(target.mapping.path, list);
    }
    this.paths = [...this.#targets.keys()];
    this.files = [...this.#targets.values()].flat().map((target) => target.file);
    for (const path of this.paths) this.#state.set(path, { digests: new Map() });
  }

  /**
   * Writes the files of every path of `paths` whose rendered secret differs from what was last
   * written, or, with `verifyDisk`, from what is on disk.
   */
  async apply(paths: string[], read: ReadResult, options: { verifyDisk: boolean }): Promise<ApplyResult> {
    const result: ApplyResult = { changedPaths: [], changedFiles: [], unavailable: [], pending: [], newlyUnavailable: [], recovered: [], versions: {} };
    this.#appliedAt = Date.now();

    for (const path of paths) {
      const secret = read.secrets.get(path);
      if (secret) await this.#applySecret(path, secret, options.verifyDisk, result);
      else this.#applyError(path, read.errors.get(path), result);
    }
    return result;
  }

  /** Records that no read reached ScaiVault for `paths`; they stay pending with `kind`. */
  markPending(paths: string[], kind: string): PathIssue[] {
    for (const path of paths) this.#state.get(path)!.pending = kind;
    return paths.map((path) => ({ path, kind }));
  }

  /** Settled paths whose last read gave no usable secret, with the reason. */
  unavailable(): PathIssue[] {
    return this.#issues((state) => state.unavailable);
  }

  /** Paths whose last refresh failed transiently, with the reason. */
  pending(): PathIssue[] {
    return this.#issues((state) => state.pending);
  }

  /**
   * Oldest time at which a path was last settled, or undefined while any path never was. With no
   * watched path, the time of the last refresh: nothing to read means settled.
   */
  oldestSettledAt(): number | undefined {
    if (this.#state.size === 0) return this.#appliedAt;
    let oldest = Infinity;
    for (const state of this.#state.values()) {
      if (state.settledAt === undefined) return undefined;
      oldest = Math.min(oldest, state.settledAt);
    }
    return Number.isFinite(oldest) ? oldest : undefined;
  }

  /** Watched files that no refresh wrote or confirmed and that do not exist on disk. */
  missingFiles(): string[] {
    return this.files.filter((file) => !this.#confirmed.has(file) && !existsSync(file));
  }

  // -------------------------------------------------------------------------------------------

  async #applySecret(path: string, secret: Secret, verifyDisk: boolean, result: ApplyResult): Promise<void> {
    const { metrics, config } = this.#deps;
    const state = this.#state.get(path)!;
    const targets = this.#targets.get(path)!;

    // Every file of the path is rendered first: bad data writes none of them.
    let rendered: Array<{ target: FileTarget; bytes: Uint8Array; digest: string }>;
    try {
      rendered = targets.map((target) => {
        const bytes = renderTarget(target, secret.data, path);
        return { target, bytes, digest: createHash("sha256").update(bytes).digest("hex") };
      });
    } catch (error) {
      if (!(error instanceof AgentError) || (error.code !== "config" && error.code !== "not_found")) throw error;
      this.#renderFailed(path, secret, error, result);
      return;
    }

    const files: string[] = [];
    let failure: AgentError | undefined;
    for (const { target, bytes, digest } of rendered) {
      if (!verifyDisk && state.digests.get(target.file) === digest) continue;
      try {
        const write = await writeFileAtomic(target.file, bytes, { mode: target.mode, layout: config.output.layout });
        state.digests.set(target.file, digest);
        this.#confirmed.add(target.file);
        if (write.changed) files.push(target.file);
      } catch (error) {
        // The digest is not recorded, so the next refresh writes this file again.
        state.digests.delete(target.file);
        failure = error instanceof AgentError ? error : new AgentError("write", `Cannot write file "${target.file}": ${(error as Error).message}`, { cause: error });
        metrics.errors.inc({ kind: "write" });
        if (state.pending !== "write") log.error("Cannot update file: keeping the last one, retrying soon", { path, file: target.file, version: secret.version, ...errorFields(failure) });
      }
    }

    if (files.length) {
      result.changedPaths.push(path);
      result.changedFiles.push(...files);
      result.versions[path] = secret.version;
      metrics.changes.inc({ path });
    }
    if (failure) {
      state.pending = "write";
      result.pending.push({ path, kind: "write" });
      return;
    }

    const was = state.unavailable ?? state.pending;
    if (was !== undefined) result.recovered.push({ path, kind: was });
    state.unavailable = undefined;
    state.pending = undefined;
    state.renderFailure = undefined;
    state.version = secret.version;
    metrics.secretVersion.set({ path }, secret.version);
    metrics.secretUnavailable.remove({ path });
    this.#settle(path, state);
  }

  /** A secret whose data cannot be rendered: reported once per version and message, files kept. */
  #renderFailed(path: string, secret: Secret, error: AgentError, result: ApplyResult): void {
    const { metrics } = this.#deps;
    const state = this.#state.get(path)!;
    const key = `${secret.version}\n${error.message}`;

    if (state.renderFailure !== key) {
      state.renderFailure = key;
      metrics.errors.inc({ kind: "render" });
      log.error("Cannot render secret: keeping its last files until the secret changes", { path, version: secret.version, ...errorFields(error) });
    }
    this.#setUnavailable(path, "render", result);
  }

  /** Records why `path` could not be read. Settled kinds keep the last file; others are retried. */
  #applyError(path: string, error: AgentError | undefined, result: ApplyResult): void {
    const { metrics } = this.#deps;
    const state = this.#state.get(path)!;
    const kind = error?.serverCode === "secret_not_found" ? "deleted" : (error?.code ?? "not_found");
    metrics.errors.inc({ kind: error?.code ?? "not_found" });

    if (SETTLED_KINDS.has(kind)) {
      state.renderFailure = undefined;
      this.#setUnavailable(path, kind, result);
      return;
    }

    state.pending = kind;
    result.pending.push({ path, kind });
  }

  #setUnavailable(path: string, kind: string, result: ApplyResult): void {
    const state = this.#state.get(path)!;
    if (state.unavailable !== kind) result.newlyUnavailable.push({ path, kind });

    state.unavailable = kind;
    state.pending = undefined;
    this.#deps.metrics.secretUnavailable.set({ path }, 1);
    result.unavailable.push({ path, kind });
    this.#settle(path, state);
  }

  #settle(path: string, state: PathState): void {
    const now = Date.now();
    state.settledAt = now;
    if (state.unavailable === undefined) this.#deps.metrics.lastSuccess.set({ path }, now / 1000);
  }

  #issues(pick: (state: PathState) => string | undefined): PathIssue[] {
    const issues: PathIssue[] = [];
    for (const [path, state] of this.#state) {
      const kind = pick(state);
      if (kind !== undefined) issues.push({ path, kind });
    }
    return issues;
  }
}

// ---------------------------------------------------------------------------------------------

interface PathState {
  /** sha256 of the bytes last written or confirmed, per file; a file without one is written. */
  digests: Map<string, string>;
  /** Version whose files were all written; for metrics and logs only. */
  version?: number;
  /** Last time the path was current or settled as unavailable. */
  settledAt?: number;
  /** Settled reason the last read gave no usable secret (`deleted`, `forbidden`, `render`, ...). */
  unavailable?: string;
  /** Transient reason the path is not current (`rate_limited`, `unreachable`, `write`, ...). */
  pending?: string;
  /** Version and message of the render failure already reported. */
  renderFailure?: string;
}
