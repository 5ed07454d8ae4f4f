/**
 * The exclusive hold on a pod's lease state file. Node has no flock, so the holder creates
 * `<state file>.lock` with O_EXCL and writes its pid, its process start time (field 22 of
 * /proc/PID/stat) and the kernel boot id into it. A second process on the same directory finds
 * the lock, checks whether that process still runs (same pid, same start time, same boot), and
 * fails naming the file and the pid when it does. A lock left by a process that ended (kill -9,
 * a restarted container whose pid 1 is another process) is stale and taken over.
 */
import { closeSync, mkdirSync, openSync, readFileSync, unlinkSync, writeSync } from "node:fs";
import { dirname } from "node:path";
import { randomUUID } from "node:crypto";
import { AgentError } from "./errors.ts";
import { getLogger } from "./log.ts";

const log = getLogger("leases");

/** Content of the lock file. */
export interface LockOwner {
  /** Random id of this holder, so that release removes only its own lock. */
  holder: string;
  pid: number;
  /** Start time of the process in clock ticks since boot; undefined without /proc. */
  startTime?: string;
  bootId?: string;
  owner: string;
}

/** An acquired lock; `release()` removes the file when it is still ours. */
export interface LeaseLock {
  path: string;
  owner: LockOwner;
  release(): void;
}

/**
 * Takes the lock `path` for `owner` ("init" or "sidecar").
 *
 * @throws AgentError `lease` when a live process owns it, `write` when it cannot be created.
 */
export function acquireLeaseLock(path: string, owner: string): LeaseLock {
  const me: LockOwner = { holder: randomUUID(), pid: process.pid, startTime: processStartTime(process.pid), bootId: bootId(), owner };

  for (let attempt = 1; attempt <= 3; attempt += 1) {
    let fd: number;
    try {
      // NOTE: the output directory's mode is set by the file writer; here it only has to exist.
      mkdirSync(dirname(path), { recursive: true });
      fd = openSync(path, "wx", 0o600);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") {
        throw new AgentError("write", `Cannot create the lease lock file "${path}": ${(error as NodeJS.ErrnoException).code ?? "error"}; check that the output directory is writable`, { cause: error });
      }

      const other = readOwner(path);
      if (other && isAlive(other)) {
        throw new AgentError(
          "lease",
          `The lease state file "${path.replace(/\.lock$/, "")}" is held by another live process (pid ${other.pid}, ${other.owner}); run one sidecar per output directory, or stop the other one`,
        );
      }
      log.warn("Taking over a stale lease lock", { file: path, pid: other?.pid, owner: other?.owner });
      try {
        unlinkSync(path);
      } catch {
        // Another process removed it first; the next attempt decides.
      }
      continue;
    }

    try {
      writeSync(fd, JSON.stringify(me) + "\n");
    } finally {
      closeSync(fd);
    }
    log.debug("Took the lease lock", { file: path, pid: me.pid });
    return { path, owner: me, release: () => release(path, me) };
  }
  throw new AgentError("lease", `Cannot take the lease lock "${path}": another process keeps creating it; run one sidecar per output directory`);
}

// ---------------------------------------------------------------------------------------------

function release(path: string, me: LockOwner): void {
  if (readOwner(path)?.holder !== me.holder) return;
  try {
    unlinkSync(path);
  } catch {
    // Already gone.
  }
}

function readOwner(path: string): LockOwner | undefined {
  try {
    const parsed = JSON.parse(readFileSync(path, "utf8")) as LockOwner;
    return typeof parsed.pid === "number" ? parsed : undefined;
  } catch {
    // An empty or half-written lock: its creator died between open and write, or is writing now.
    return undefined;
  }
}

/** True when the process of `other` still runs: same boot, same pid, same start time. */
function isAlive(other: LockOwner): boolean {
  const boot = bootId();
  if (other.bootId && boot && other.bootId !== boot) return false;

  const startTime = processStartTime(other.pid);
  if (other.startTime !== undefined && startTime !== undefined) return other.startTime === startTime;

  // Without /proc: only whether the pid exists.
  try {
    process.kill(other.pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Field 22 of /proc/PID/stat, read after the last ")" because the command name may hold spaces. */
function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

function bootId(): string | undefined {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return undefined;
  }
}
