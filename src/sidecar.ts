/**
 * The sidecar's refresh loop: read every watched secret in batches, render each, rewrite the files
 * whose bytes changed atomically, then send one reload signal for the whole refresh.
 *
 * State is kept in memory per file: a digest of the bytes last written. A full refresh (start,
 * interval) also compares every file with the disk, so files already current are not rewritten
 * and cause no signal, and files edited by others are corrected. A refresh that left paths not
 * current (throttled, unreachable, write failed) is incomplete: those paths keep their age, and
 * only they are read again soon, with backoff. Refreshes never overlap: a request made while one
 * runs waits for it, and requests made while one waits are merged into one.
 */
import type { ScaiVaultClient, ReadResult } from "./client.ts";
import type { SidecarConfig } from "./config.ts";
import { AgentError } from "./errors.ts";
import type { Readiness } from "./health.ts";
import { errorFields, getLogger } from "./log.ts";
import type { Reloader, ReloadResult } from "./reload.ts";
import { backoffDelay, sleep, withJitter } from "./retry.ts";
import type { SidecarMetrics } from "./sidecar-metrics.ts";
import { WatchedFiles, type ApplyResult, type PathIssue } from "./watched-files.ts";

const log = getLogger("sidecar");

/** Cause of a refresh, used as a metric label. */
export type RefreshTrigger = "start" | "interval" | "retry" | "event" | "resubscribed";

/** Result of one refresh. */
export interface RefreshOutcome {
  /** True when every refreshed path is settled: current, or unavailable for a lasting reason. */
  ok: boolean;
  changedPaths: string[];
  changedFiles: string[];
  /** Paths the server could not return (deleted, forbidden) or could not be rendered; their files stay. */
  unavailable: PathIssue[];
  /** Paths left not current by a transient failure (throttled, unreachable, write); retried soon. */
  pending: PathIssue[];
  /** Result of the reload request, when files changed. */
  reload?: ReloadResult;
}

export interface SidecarOptions {
  config: SidecarConfig;
  /** Client whose requests end when the sidecar stops. */
  client: ScaiVaultClient;
  reloader: Reloader;
  metrics: SidecarMetrics;
  /** Aborted at shutdown; failures after it are not reported as errors. */
  signal?: AbortSignal;
  /** @default Math.random */
  random?: () => number;
}

/** Keeps the files of WATCH_PATHS current; see the module comment. */
export class Sidecar {
  /** Sends the reload signal; other modules (dynamic leases) use it to request a reload too. */
  readonly reloader: Reloader;
  /** Unique watched secret paths, in the order of WATCH_PATHS. */
  readonly paths: string[];
  readonly #options: SidecarOptions;
  readonly #files: WatchedFiles;
  #ready = false;
  /** True once a refresh of every path started reading. */
  #readStarted = false;
  #pending: PendingRefresh | undefined;
  #tail: Promise<unknown> = Promise.resolve();

  /** @throws AgentError `config` when a target is outside the output directories. */
  constructor(options: SidecarOptions) {
    this.#options = options;
    this.reloader = options.reloader;

    this.#files = new WatchedFiles(options.config, options.metrics);
    this.paths = this.#files.paths;

    options.metrics.watchedPaths.set({}, this.paths.length);
    options.metrics.staleness.set({}, NaN);
    options.metrics.registry.onCollect(() => {
      const lastCompleteAt = this.#files.oldestSettledAt();
      if (lastCompleteAt !== undefined) options.metrics.staleness.set({}, (Date.now() - lastCompleteAt) / 1000);
    });
  }

  /** True after the first complete sync. */
  get isReady(): boolean {
    return this.#ready;
  }

  /** True once a refresh of every path started reading: changes made after its read may be missed without events. */
  get hasStartedReading(): boolean {
    return this.#readStarted;
  }

  /**
   * Refreshes `paths` (every watched path when undefined) and resolves when the files are
   * written and the reload was requested. Never rejects: failures are in the outcome.
   */
  refresh(paths: string[] | undefined, trigger: RefreshTrigger): Promise<RefreshOutcome> {
    const pending = this.#pending;
    if (pending) {
      if (paths === undefined) pending.paths = undefined;
      else for (const path of paths) pending.paths?.add(path);
      return pending.promise;
    }

    const next: PendingRefresh = {
      paths: paths === undefined ? undefined : new Set(paths),
      trigger,
      promise: Promise.resolve(undefined as never),
    };
    next.promise = this.#tail.then(() => {
      if (this.#pending === next) this.#pending = undefined;
      const chosen = next.paths === undefined ? this.paths : this.paths.filter((path) => next.paths!.has(path));
      return this.#refreshSafely(chosen, next.paths === undefined, next.trigger);
    });
    this.#pending = next;
    this.#tail = next.promise;
    return next.promise;
  }

  /**
   * Runs until `signal` aborts: an optional start-up delay, the first sync, then one refresh of
   * every path per interval with jitter. The paths an incomplete refresh left pending are read
   * again sooner, with backoff, and their files stay as they are meanwhile.
   */
  async run(signal: AbortSignal): Promise<void> {
    const { config } = this.#options;
    const random = this.#options.random ?? Math.random;

    if (!(await this.#startDelay(signal))) return;

    let failures = 0;
    let lastWarnAt = -Infinity;
    let next: { paths: string[] | undefined; trigger: RefreshTrigger } = { paths: undefined, trigger: "start" };
    while (!signal.aborted) {
      const outcome = await this.refresh(next.paths, next.trigger);
      if (signal.aborted) return;

      failures = outcome.ok ? 0 : failures + 1;
      const delayMs = outcome.ok
        ? withJitter(config.refreshIntervalMs, config.refreshJitter, random)
        : Math.min(config.refreshIntervalMs, Math.max(500, backoffDelay(failures, { baseMs: 2_000, maxMs: 60_000, random })));
      if (!outcome.ok) {
        // During a long outage one warning a minute is enough; the others go to debug.
        const fields = { attempt: failures, delayMs, paths: outcome.pending.length, kinds: countKinds(outcome.pending) };
        if (Date.now() - lastWarnAt >= 60_000) {
          lastWarnAt = Date.now();
          log.warn("Refresh incomplete, retrying the pending secrets", fields);
        } else log.debug("Refresh incomplete, retrying the pending secrets", fields);
      }
      next = outcome.ok ? { paths: undefined, trigger: "interval" } : { paths: outcome.pending.map((issue) => issue.path), trigger: "retry" };

      try {
        await sleep(delayMs, signal);
      } catch {
        return;
      }
    }
  }

  /** Readiness: ready after the first complete sync, with staleness and unavailable secrets. */
  readiness(): Readiness {
    const { config } = this.#options;
    const lastCompleteAt = this.#files.oldestSettledAt();
    const stalenessMs = lastCompleteAt === undefined ? undefined : Date.now() - lastCompleteAt;
    const tooStale = config.readyMaxStalenessMs !== undefined && stalenessMs !== undefined && stalenessMs > config.readyMaxStalenessMs;
    const unavailable = this.#files.unavailable();
    const pending = this.#files.pending();

    return {
      ready: this.#ready && !tooStale,
      details: {
        synced: this.#ready,
        lastSync: lastCompleteAt === undefined ? null : new Date(lastCompleteAt).toISOString(),
        stalenessSeconds: stalenessMs === undefined ? null : Math.round(stalenessMs / 1000),
        // One full refresh per interval is expected; stale means at least one was missed.
        stale: stalenessMs !== undefined && stalenessMs > 2 * config.refreshIntervalMs,
        paths: this.paths.length,
        unavailableCount: unavailable.length,
        unavailable: unavailable.slice(0, 20),
        pendingCount: pending.length,
        pending: pending.slice(0, 20),
      },
    };
  }

  // -------------------------------------------------------------------------------------------

  async #startDelay(signal: AbortSignal): Promise<boolean> {
    const { config } = this.#options;
    // A fresh pod has no files and must not wait. A restarted sidecar, or one after an init
    // container, spreads its first read so that many replicas do not read in the same second.
    // Only the watched files count: the lease state file and DYNAMIC files were just written at start.
    if (config.startJitterMs <= 0 || this.#files.files.length === 0 || this.#files.missingFiles().length > 0) return true;

    const delayMs = Math.floor((this.#options.random ?? Math.random)() * config.startJitterMs);
    log.info("Files exist already: waiting before the first read to spread start-up", { delayMs, startJitterMs: config.startJitterMs });
    try {
      await sleep(delayMs, signal);
      return true;
    } catch {
      return false;
    }
  }

  async #refreshSafely(paths: string[], all: boolean, trigger: RefreshTrigger): Promise<RefreshOutcome> {
    try {
      return await this.#refreshNow(paths, all, trigger);
    } catch (error) {
      log.error("Refresh failed unexpectedly", { trigger, ...errorFields(error), stack: (error as Error).stack });
      this.#options.metrics.errors.inc({ kind: "internal" });
      this.#options.metrics.refreshes.inc({ trigger, result: "error" });
      return { ok: false, changedPaths: [], changedFiles: [], unavailable: [], pending: this.#files.markPending(paths, "internal") };
    }
  }

  async #refreshNow(paths: string[], all: boolean, trigger: RefreshTrigger): Promise<RefreshOutcome> {
    const { metrics } = this.#options;
    const started = performance.now();
    const firstSync = !this.#ready;
    const outcome: RefreshOutcome = { ok: true, changedPaths: [], changedFiles: [], unavailable: [], pending: [] };
    if (all) this.#readStarted = true;

    let read: ReadResult;
    try {
      read = await this.#options.client.readSecrets(paths);
    } catch (error) {
      const kind = error instanceof AgentError ? error.code : "internal";
      outcome.pending = this.#files.markPending(paths, kind);
      metrics.refreshes.inc({ trigger, result: "error" });
      if (this.#options.signal?.aborted) return { ...outcome, ok: false };

      metrics.errors.inc({ kind });
      log.warn("Cannot read secrets: keeping the current files", { trigger, paths: paths.length, ...errorFields(error) });
      return { ...outcome, ok: false };
    }

    // A full refresh also compares every file with the disk, to correct files edited by others.
    const applied = await this.#files.apply(paths, read, { verifyDisk: all });
    outcome.ok = applied.pending.length === 0;
    outcome.changedPaths = applied.changedPaths;
    outcome.changedFiles = applied.changedFiles;
    outcome.unavailable = applied.unavailable;
    outcome.pending = applied.pending;
    logTransitions(applied, trigger);

    this.#markReadyOnce(started);

    if (outcome.changedFiles.length) {
      const reason = `${outcome.changedPaths.length} secret(s) changed`;
      // Before the first sync the application may not have started yet (a native sidecar starts first).
      outcome.reload = await this.reloader.signal(reason, { missingExpected: firstSync });
      log.info("Refreshed: files changed", {
        trigger,
        changed: outcome.changedPaths.length,
        files: outcome.changedFiles.slice(0, 100),
        versions: Object.fromEntries(Object.entries(applied.versions).slice(0, 100)),
        reload: outcome.reload,
        durationMs: Math.round(performance.now() - started),
      });
    } else {
      log.debug("Refreshed: no change", { trigger, paths: paths.length, durationMs: Math.round(performance.now() - started) });
    }

    metrics.refreshes.inc({ trigger, result: outcome.ok ? "ok" : "incomplete" });
    return outcome;
  }

  #markReadyOnce(started: number): void {
    if (this.#ready || this.#files.oldestSettledAt() === undefined) return;

    const missing = this.#files.missingFiles();
    if (missing.length) {
      log.warn("Not ready: some files were never written", { missing: missing.slice(0, 20), count: missing.length });
      return;
    }

    this.#ready = true;
    this.#options.metrics.ready.set({}, 1);
    log.info("First sync complete: ready", { paths: this.paths.length, files: this.#files.files.length, durationMs: Math.round(performance.now() - started) });
  }
}

// ---------------------------------------------------------------------------------------------

interface PendingRefresh {
  /** undefined: every watched path. */
  paths: Set<string> | undefined;
  trigger: RefreshTrigger;
  promise: Promise<RefreshOutcome>;
}

/** Counts issues by kind, for one log line instead of one per path. */
function countKinds(issues: PathIssue[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const issue of issues) counts[issue.kind] = (counts[issue.kind] ?? 0) + 1;
  return counts;
}

/** Logs the paths that became unavailable (one line per kind), became pending, or recovered. */
function logTransitions(applied: ApplyResult, trigger: RefreshTrigger): void {
  const byKind = new Map<string, string[]>();
  for (const issue of applied.newlyUnavailable) byKind.set(issue.kind, [...(byKind.get(issue.kind) ?? []), issue.path]);
  for (const [kind, paths] of byKind) {
    const message = kind === "deleted" ? "Secret not found in ScaiVault (deleted?): keeping its last file" : "Cannot deliver secret: keeping its last file";
    log.warn(message, { kind, count: paths.length, paths: paths.slice(0, 20), ...(paths.length === 1 ? { path: paths[0] } : {}) });
  }

  if (applied.pending.length) {
    log.warn("Some secrets are not current yet: keeping their files, retrying soon", {
      trigger,
      count: applied.pending.length,
      kinds: countKinds(applied.pending),
      paths: applied.pending.slice(0, 20).map((issue) => issue.path),
    });
  }

  if (applied.recovered.length) {
    const first = applied.recovered[0]!;
    log.info("Secret is current again", {
      count: applied.recovered.length,
      paths: applied.recovered.slice(0, 20).map((issue) => issue.path),
      ...(applied.recovered.length === 1 ? { path: first.path, was: first.kind } : { kinds: countKinds(applied.recovered) }),
    });
  }
}
