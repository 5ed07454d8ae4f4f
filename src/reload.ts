/**
 * Finding the application's process by name and sending it the reload signal. The application's
 * process is visible to the sidecar only when the pod shares one process namespace
 * (`shareProcessNamespace: true`), and may be signalled only when both run as the same user or the
 * sidecar has CAP_KILL.
 *
 * Matching rule: a process matches `RELOAD_TARGET` when its `/proc/<pid>/comm` equals the name,
 * or when the last path segment of its `argv[0]` (`/proc/<pid>/cmdline`) equals the name. The
 * kernel truncates `comm` to 15 bytes, so a name longer than that must equal the last path segment
 * of `argv[0]`, and the process's `comm` must equal the name's first 15 bytes; a `comm` prefix alone
 * would match unrelated programs. Zombies and the sidecar itself never match. When a matching process has a matching
 * parent (nginx or gunicorn workers under their master), only the topmost one is signalled.
 * The process is looked up again for every signal, so a restarted application is found.
 */
import { constants } from "node:os";
import { readdir, readFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { AgentError } from "./errors.ts";
import { getLogger } from "./log.ts";
import { sleep } from "./retry.ts";

const log = getLogger("reload");

/** Longest `comm` the kernel keeps (TASK_COMM_LEN 16, less the terminating NUL). */
export const COMM_MAX_LENGTH = 15;

/** Outcome of one reload request. */
export type ReloadResult = "sent" | "no_target" | "not_found" | "denied" | "failed";

/** Result of a look-up: the state of the target and the pids that a signal would go to. */
export interface TargetStatus {
  state: "none" | "found" | "not_found" | "denied";
  pids: number[];
}

export interface ReloaderOptions {
  /** Process name to signal; undefined means files change and no process is signalled. */
  target?: string;
  /** Signal name such as `SIGHUP`, already checked with `parseSignalName`. */
  signal: NodeJS.Signals;
  /** @default "/proc" */
  procRoot?: string;
  /** @default process.kill */
  kill?: (pid: number, signal: NodeJS.Signals | 0) => void;
  /** Pid that never matches. @default process.pid */
  selfPid?: number;
  /** Called after every reload request, for metrics. */
  onResult?: (result: ReloadResult) => void;
  /** Called after every look-up, for metrics. */
  onStatus?: (status: TargetStatus) => void;
}

/**
 * Signals an application may be asked to reload (or restart) with. KILL and STOP cannot be
 * handled, and SEGV, CONT, CHLD and the like mean something else to every program.
 */
export const RELOAD_SIGNALS: readonly NodeJS.Signals[] = ["SIGHUP", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGTERM", "SIGQUIT", "SIGWINCH", "SIGALRM"];

/**
 * Parses a signal name: `SIGHUP`, `HUP` or `hup` all give `SIGHUP`.
 *
 * @throws AgentError `config` naming the value and the allowed signals when it is not one of `RELOAD_SIGNALS`.
 */
export function parseSignalName(value: string, variable = "RELOAD_SIGNAL"): NodeJS.Signals {
  const upper = value.trim().toUpperCase();
  const name = upper.startsWith("SIG") ? upper : `SIG${upper}`;
  const allowed = RELOAD_SIGNALS.join(", ");
  if (!Object.hasOwn(constants.signals, name)) {
    throw new AgentError("config", `Invalid ${variable}: "${value}" is not a signal name. Use one of ${allowed}`);
  }
  if (!RELOAD_SIGNALS.includes(name as NodeJS.Signals)) {
    throw new AgentError("config", `Invalid ${variable}: "${value}" cannot be used to reload an application. Use one of ${allowed}`);
  }
  return name as NodeJS.Signals;
}

/** Sends the reload signal to the target process; see the module comment for how it is found. */
export class Reloader {
  readonly target: string | undefined;
  readonly signalName: NodeJS.Signals;
  readonly #procRoot: string;
  readonly #kill: (pid: number, signal: NodeJS.Signals | 0) => void;
  readonly #selfPid: number;
  readonly #options: ReloaderOptions;

  constructor(options: ReloaderOptions) {
    this.target = options.target?.trim() || undefined;
    this.signalName = options.signal;
    this.#procRoot = options.procRoot ?? "/proc";
    this.#kill = options.kill ?? ((pid, signal) => process.kill(pid, signal));
    this.#selfPid = options.selfPid ?? process.pid;
    this.#options = options;
  }

  /** Returns the pids that a signal would go to now: the topmost matching processes. */
  async findTargets(): Promise<number[]> {
    if (this.target === undefined) return [];

    const processes = await this.#scan();
    const matching = new Map(processes.filter((entry) => this.#matches(entry)).map((entry) => [entry.pid, entry]));
    return [...matching.values()].filter((entry) => !matching.has(entry.ppid)).map((entry) => entry.pid).sort((a, b) => a - b);
  }

  /** Looks the target up and tests with signal 0 whether it may be signalled. */
  async check(): Promise<TargetStatus> {
    if (this.target === undefined) return this.#report({ state: "none", pids: [] });

    const pids = await this.findTargets();
    if (pids.length === 0) return this.#report({ state: "not_found", pids });

    for (const pid of pids) {
      try {
        this.#kill(pid, 0);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "EPERM") return this.#report({ state: "denied", pids });
      }
    }
    return this.#report({ state: "found", pids });
  }

  /**
   * Checks the target at start and logs the outcome: found, not permitted (a warning at once),
   * or not found. A native sidecar starts before the application, so a missing target is looked
   * for again every `everyMs` and only reported as a warning after `graceMs`.
   */
  async watchStartup(signal: AbortSignal, options: { graceMs?: number; everyMs?: number } = {}): Promise<TargetStatus> {
    const graceMs = options.graceMs ?? 60_000;
    const everyMs = options.everyMs ?? 2_000;
    const started = Date.now();

    if (this.target === undefined) {
      log.info("No RELOAD_TARGET set: files are updated, no process is signalled");
      return this.check();
    }

    for (;;) {
      const status = await this.check();
      if (status.state === "found") {
        log.info("Reload target found", { target: this.target, pids: status.pids, signal: this.signalName });
        return status;
      }
      if (status.state === "denied") {
        log.warn(
          "Reload target cannot be signalled: it runs as another user. Run the sidecar with the same runAsUser as the application, or add the KILL capability",
          { target: this.target, pids: status.pids, signal: this.signalName },
        );
        return status;
      }
      if (Date.now() - started >= graceMs || signal.aborted) {
        log.warn(
          "Reload target not found: no visible process has this name. Set shareProcessNamespace: true on the pod and set RELOAD_TARGET to the process name (comm or the basename of argv[0])",
          { target: this.target, waitedMs: Date.now() - started, visible: await this.#visibleNames() },
        );
        return status;
      }

      try {
        await sleep(everyMs, signal);
      } catch {
        return status;
      }
    }
  }

  /**
   * Sends the reload signal to the target, looked up afresh. Never throws: a missing or
   * forbidden target is logged and returned as the result. With `missingExpected` (the first
   * sync, before the application may have started) a missing target is logged at info level.
   */
  async signal(reason: string, options: { missingExpected?: boolean } = {}): Promise<ReloadResult> {
    const result = await this.#send(reason, options.missingExpected ?? false);
    this.#options.onResult?.(result);
    return result;
  }

  async #send(reason: string, missingExpected: boolean): Promise<ReloadResult> {
    if (this.target === undefined) return "no_target";

    let pids: number[];
    try {
      pids = await this.findTargets();
    } catch (error) {
      log.error("Cannot look up the reload target", { target: this.target, reason, error: (error as Error).message });
      return "failed";
    }

    if (pids.length === 0) {
      const fields = { target: this.target, reason };
      if (missingExpected) log.info("Reload target not running yet: files are written, no signal sent", fields);
      else log.warn("Reload target not running: files are updated, no signal sent", fields);
      return "not_found";
    }

    let result: ReloadResult = "sent";
    for (const pid of pids) {
      try {
        this.#kill(pid, this.signalName);
        log.info("Sent reload signal", { target: this.target, pid, signal: this.signalName, reason });
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        log.error("Cannot send reload signal", { target: this.target, pid, signal: this.signalName, reason, error: code ?? (error as Error).message });
        if (code === "EPERM") result = "denied";
        else if (code === "ESRCH") result = "not_found";
        else result = "failed";
      }
    }
    return result;
  }

  #matches(entry: ProcessEntry): boolean {
    const target = this.target!;
    if (entry.pid === this.#selfPid || entry.state === "Z") return false;
    const argvMatches = entry.argv0 !== "" && basename(entry.argv0) === target;
    // A longer name than comm holds: the truncated comm only narrows, the full argv[0] decides.
    if (Buffer.byteLength(target) > COMM_MAX_LENGTH) return entry.comm === truncateComm(target) && argvMatches;
    return entry.comm === target || argvMatches;
  }

  #report(status: TargetStatus): TargetStatus {
    this.#options.onStatus?.(status);
    return status;
  }

  async #scan(): Promise<ProcessEntry[]> {
    const names = await readdir(this.#procRoot);
    const entries = await Promise.all(names.filter((name) => /^\d+$/.test(name)).map((name) => this.#read(Number(name))));
    return entries.filter((entry): entry is ProcessEntry => entry !== undefined);
  }

  async #read(pid: number): Promise<ProcessEntry | undefined> {
    const dir = join(this.#procRoot, String(pid));
    try {
      const [comm, cmdline, stat] = await Promise.all([
        readFile(join(dir, "comm"), "utf8"),
        readFile(join(dir, "cmdline")),
        readFile(join(dir, "stat"), "utf8"),
      ]);

      // comm may itself contain ")" and spaces, so the fields after it are found from the last ")".
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const end = cmdline.indexOf(0);
      return {
        pid,
        comm: comm.replace(/\n$/, ""),
        argv0: cmdline.subarray(0, end === -1 ? cmdline.length : end).toString("utf8"),
        state: fields[0] ?? "",
        ppid: Number(fields[1] ?? 0),
      };
    } catch {
      // The process exited while we looked, or its files are hidden from us (hidepid).
      return undefined;
    }
  }

  async #visibleNames(): Promise<string[]> {
    // Only comm names: a command line may carry a credential, comm is just the program name.
    const processes = await this.#scan().catch(() => []);
    const names = [...new Set(processes.filter((entry) => entry.pid !== this.#selfPid).map((entry) => entry.comm))].sort();
    return names.slice(0, 20);
  }
}

// ---------------------------------------------------------------------------------------------

interface ProcessEntry {
  pid: number;
  comm: string;
  argv0: string;
  /** One-letter state from `/proc/<pid>/stat`: R, S, D, Z, ... */
  state: string;
  ppid: number;
}

/** Returns `name` as the kernel keeps it in `comm`: its first 15 bytes. */
function truncateComm(name: string): string {
  return Buffer.from(name).subarray(0, COMM_MAX_LENGTH).toString("utf8");
}
