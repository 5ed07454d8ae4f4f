/**
 * Helpers for sidecar scenarios: the sidecar as a real child process with its log lines, the
 * reload test application (tests/fixtures/reload-app.ts) under a process name of its own, and
 * small readers for /metrics and /readyz.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync, symlinkSync, existsSync } from "node:fs";
import { join } from "node:path";
import { baseEnv, MOD, ROOT } from "./cli.ts";

export const RELOAD_APP = join(ROOT, "tests/fixtures/reload-app.ts");

/** Waits until `check` returns a value other than undefined, null or false; throws naming `what` after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => T | Promise<T>, timeoutMs = 20_000, everyMs = 50): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== null && value !== false) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    await Bun.sleep(everyMs);
  }
}

export interface SidecarProcess {
  child: ChildProcess;
  /** Parsed JSON log lines so far. */
  lines: Array<Record<string, unknown>>;
  /** Raw standard error so far. */
  stderr(): string;
  /** `http://127.0.0.1:port` of the health server, once it listens. */
  healthUrl: string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Waits for a log line matching `predicate`. */
  waitForLog(what: string, predicate: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** Sends `signal` (SIGTERM by default) and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Starts `mod.ts sidecar` with `env` (over PATH, HOME and LOG_FORMAT=json) and waits until its
 * health server listens. `wrapper` runs it under another program, such as setpriv.
 */
export async function startSidecar(env: Record<string, string | undefined>, options: { wrapper?: string[] } = {}): Promise<SidecarProcess> {
  const command = [...(options.wrapper ?? []), process.execPath, MOD, "sidecar"];
  const child = spawn(command[0]!, command.slice(1), {
    env: baseEnv({ HEALTH_ADDR: "127.0.0.1:0", LOG_LEVEL: "debug", ...env }),
    stdio: ["ignore", "pipe", "pipe"],
  });

  let raw = "";
  let pending = "";
  const lines: Array<Record<string, unknown>> = [];
  child.stderr!.on("data", (chunk: Buffer) => {
    raw += chunk.toString();
    pending += chunk.toString();
    const parts = pending.split("\n");
    pending = parts.pop()!;
    for (const part of parts) {
      if (part.trim() === "") continue;
      try {
        lines.push(JSON.parse(part));
      } catch {
        lines.push({ raw: part });
      }
    }
  });
  child.stdout!.on("data", (chunk: Buffer) => (raw += chunk.toString()));

  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on("exit", (code, signal) => resolve({ code, signal }));
  });
  let done = false;
  void exited.then(() => (done = true));

  const waitForLog = (what: string, predicate: (line: Record<string, unknown>) => boolean, timeoutMs = 20_000) =>
    waitFor(
      what,
      () => {
        const found = lines.find(predicate);
        if (!found && done) throw new Error(`Sidecar exited while waiting for ${what}:\n${raw}`);
        return found;
      },
      timeoutMs,
    );

  const listening = await waitForLog("the health server", (line) => line.msg === "Health server listening");
  return {
    child,
    lines,
    stderr: () => raw,
    healthUrl: String(listening.url),
    exited,
    waitForLog,
    async stop(signal = "SIGTERM") {
      if (!done) child.kill(signal);
      const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
  };
}

/** Reads one sample of `name` with exactly `labels` from a /metrics text, or undefined. */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const labelText = Object.entries(labels).sort(([a], [b]) => a.localeCompare(b)).map(([key, value]) => `${key}="${value}"`).join(",");
  const prefix = labelText ? `${name}{${labelText}} ` : `${name} `;
  const line = text.split("\n").find((entry) => entry.startsWith(prefix));
  return line === undefined ? undefined : Number(line.slice(prefix.length));
}

/** Fetches /metrics of a sidecar. */
export async function scrape(sidecar: SidecarProcess): Promise<string> {
  return (await fetch(`${sidecar.healthUrl}/metrics`)).text();
}

/** Fetches /readyz of a sidecar: its status and body. */
export async function readyz(sidecar: SidecarProcess): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`${sidecar.healthUrl}/readyz`);
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

export interface AppProcess {
  child: ChildProcess;
  pid: number;
  /** Log entries written so far. */
  entries(): Array<Record<string, unknown>>;
  /** Signal entries so far. */
  signals(): Array<{ n: number; time: number; files: Record<string, string | null> }>;
  /** Stops the app with SIGTERM and returns its summary line. */
  stop(): Promise<Record<string, unknown>>;
}

/**
 * Starts the reload test application under the process name `name` (a symlink to the runtime in
 * `dir`, so that both its comm and its argv[0] carry the name), watching `files`.
 */
export async function startApp(dir: string, name: string, logFile: string, files: string[], signal = "SIGHUP", spawnOptions: { uid?: number; gid?: number } = {}): Promise<AppProcess> {
  const executable = join(dir, name);
  if (!existsSync(executable)) symlinkSync(process.execPath, executable);

  const child = spawn(executable, ["run", RELOAD_APP, logFile, signal, ...files], {
    env: baseEnv(),
    stdio: ["ignore", "ignore", "inherit"],
    ...spawnOptions,
  });
  const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));

  const entries = (): Array<Record<string, unknown>> => {
    if (!existsSync(logFile)) return [];
    return readFileSync(logFile, "utf8")
      .split("\n")
      .filter((line) => line.trim() !== "")
      .map((line) => JSON.parse(line) as Record<string, unknown>)
      .filter((entry) => entry.pid === child.pid);
  };

  await waitFor(`app ${name} to start`, () => entries().some((entry) => entry.event === "start"));
  return {
    child,
    pid: child.pid!,
    entries,
    signals: () => entries().filter((entry) => entry.event === "signal") as never,
    async stop() {
      child.kill("SIGTERM");
      await exited;
      return entries().find((entry) => entry.event === "summary") ?? {};
    },
  };
}
