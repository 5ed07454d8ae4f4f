/**
 * The files of WATCH_PATHS and, per secret path, the last version written to them. Applying a read
 * writes the files of every secret whose version changed, and records the secrets that could not
 * be read or rendered. Their last files stay.
 */
import { existsSync } from "node:fs";
import type { ReadResult } from "./client.ts";
import type { SidecarConfig } from "./config.ts";
import type { Secret } from "./contract.ts";
import { resolveTargets, writeTarget, type FileTarget } from "./deliver.ts";
import { AgentError } from "./errors.ts";
import { errorFields, getLogger } from "./log.ts";
import type { SidecarMetrics } from "./sidecar-metrics.ts";

const log = getLogger("sidecar");

/** Result of applying one read to the files. */
export interface ApplyResult {
  /** True when a file that had to change could not be written. */
  writeFailed: boolean;
  changedPaths: string[];
  changedFiles: string[];
  /** Paths the read gave no usable secret for, with the reason (`deleted`, `forbidden`, `render`, ...). */
  unavailable: Array<{ path: string; kind: string }>;
  /** Version written, per changed path. */
  versions: Record<string, number>;
}

/** Watched files and their versions; see the module comment. */
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
    for (const path of this.paths) this.#state.set(path, {});
  }

  /** Writes the files of every path of `paths` whose secret in `read` has a new version. */
  async apply(paths: string[], read: ReadResult): Promise<ApplyResult> {
    const result: ApplyResult = { writeFailed: false, changedPaths: [], changedFiles: [], unavailable: [], versions: {} };

    for (const path of paths) {
      const secret = read.secrets.get(path);
      if (!secret) {
        result.unavailable.push({ path, kind: this.#markUnavailable(path, read.errors.get(path)) });
        continue;
      }

      const written = await this.#writePath(path, secret);
      if (written.writeFailed) result.writeFailed = true;
      if (written.unavailable) result.unavailable.push({ path, kind: written.unavailable });
      if (written.files.length) {
        result.changedPaths.push(path);
        result.changedFiles.push(...written.files);
        result.versions[path] = secret.version;
      }
    }
    return result;
  }

  /** Paths whose last read gave no usable secret, with the reason. */
  unavailable(): Array<{ path: string; kind: string }> {
    return [...this.#state.entries()]
      .filter(([, state]) => state.unavailable !== undefined)
      .map(([path, state]) => ({ path, kind: state.unavailable! }));
  }

  /** Watched files that no refresh wrote or confirmed and that do not exist on disk. */
  missingFiles(): string[] {
    return this.files.filter((file) => !this.#confirmed.has(file) && !existsSync(file));
  }

  // -------------------------------------------------------------------------------------------

  /**
   * Writes every file of `path` unless its version is already written. A version whose content
   * cannot be rendered (a selected field is missing) is reported once and not tried again.
   */
  async #writePath(path: string, secret: Secret): Promise<{ files: string[]; writeFailed: boolean; unavailable?: string }> {
    const { metrics, config } = this.#deps;
    const state = this.#state.get(path)!;
    const result: { files: string[]; writeFailed: boolean; unavailable?: string } = { files: [], writeFailed: false };

    if (state.renderFailedVersion === secret.version) return { ...result, unavailable: "render" };

    // NOTE: change is detected by version only. A file altered on disk by someone else stays so
    // until its secret's next version or a sidecar restart.
    if (state.version !== secret.version) {
      for (const target of this.#targets.get(path)!) {
        try {
          const write = await writeTarget(target, secret.data, path, config.output);
          this.#confirmed.add(target.file);
          if (write.changed) result.files.push(target.file);
        } catch (error) {
          // A missing field is a problem of the secret, not of the disk: keep the file and report it.
          let kind = "write";
          if (error instanceof AgentError) kind = error.code === "not_found" ? "render" : error.code;
          if (kind === "render") result.unavailable = kind;
          else result.writeFailed = true;
          metrics.errors.inc({ kind });
          log.error("Cannot update file: keeping the last one", { path, file: target.file, version: secret.version, ...errorFields(error) });
        }
      }

      if (result.unavailable) {
        state.renderFailedVersion = secret.version;
        state.unavailable = result.unavailable;
        metrics.secretUnavailable.set({ path }, 1);
      }
      if (result.writeFailed || result.unavailable) return result;

      state.version = secret.version;
      metrics.secretVersion.set({ path }, secret.version);
      if (result.files.length) metrics.changes.inc({ path });
    }

    if (state.unavailable !== undefined) {
      log.info("Secret is current again", { path, version: secret.version, was: state.unavailable });
      state.unavailable = undefined;
      metrics.secretUnavailable.remove({ path });
    }

    const now = Date.now();
    state.lastSuccessAt = now;
    metrics.lastSuccess.set({ path }, now / 1000);
    return result;
  }

  /** Records that `path` could not be read; returns the kind. The last file stays. */
  #markUnavailable(path: string, error: AgentError | undefined): string {
    const { metrics } = this.#deps;
    const state = this.#state.get(path)!;
    const kind = error?.serverCode === "secret_not_found" ? "deleted" : (error?.code ?? "not_found");

    if (state.unavailable !== kind) {
      const files = this.#targets.get(path)!.map((target) => target.file);
      const message = kind === "deleted" ? "Secret not found in ScaiVault (deleted?): keeping its last file" : "Cannot read secret: keeping its last file";
      log.warn(message, { path, files, ...(error ? errorFields(error) : {}) });
    }

    state.unavailable = kind;
    state.renderFailedVersion = undefined;
    // Forget the version: a secret created again starts at version 1, which may equal the old one.
    state.version = undefined;
    metrics.secretUnavailable.set({ path }, 1);
    metrics.errors.inc({ kind: error?.code ?? "not_found" });
    return kind;
  }
}

// ---------------------------------------------------------------------------------------------

interface PathState {
  /** Last version whose files were all written; undefined before the first read and while unavailable. */
  version?: number;
  lastSuccessAt?: number;
  /** Reason the last read gave no usable secret (`deleted`, `forbidden`, `render`, ...), or undefined. */
  unavailable?: string;
  /** Version whose content could not be rendered into its files. */
  renderFailedVersion?: number;
}
