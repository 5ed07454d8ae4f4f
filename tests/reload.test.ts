import { afterAll, beforeAll, expect, test } from "bun:test";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { AgentError } from "../src/errors.ts";
import { configureLogging } from "../src/log.ts";
import { COMM_MAX_LENGTH, parseSignalName, Reloader, type ReloadResult } from "../src/reload.ts";
import { waitFor } from "./helpers/sidecar.ts";

let dir: string;
const children: ChildProcess[] = [];

beforeAll(() => {
  configureLogging({ level: "silent" });
  dir = mkdtempSync(join(tmpdir(), "reload-"));

  // Appends each SIGUSR1 to the log file and, with a third argument, starts one child like itself.
  writeFileSync(
    join(dir, "sleeper.ts"),
    `import { appendFileSync } from "node:fs";
import { spawn } from "node:child_process";
const [log, spawnChild] = process.argv.slice(2);
process.on("SIGUSR1", () => appendFileSync(log, "SIGUSR1 " + process.pid + "\\n"));
if (spawnChild) spawn(process.argv0, ["run", process.argv[1], log + ".child"], { stdio: "ignore" });
appendFileSync(log, "ready " + process.pid + "\\n");
setInterval(() => {}, 1000);
`,
  );
});

afterAll(() => {
  for (const child of children) child.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

/** Starts the sleeper as `name` (a symlink to the runtime), with `argv0` when given; waits until it runs. */
async function startSleeper(name: string, options: { argv0?: string; withChild?: boolean } = {}): Promise<{ pid: number; log: string }> {
  const executable = join(dir, name);
  if (!existsSync(executable)) symlinkSync(process.execPath, executable);
  const log = join(dir, `${name}-${randomBytes(3).toString("hex")}.log`);

  const child = spawn(executable, ["run", join(dir, "sleeper.ts"), log, ...(options.withChild ? ["1"] : [])], {
    argv0: options.argv0,
    stdio: "ignore",
  });
  children.push(child);
  await waitFor(`${name} to start`, () => existsSync(log) && readFileSync(log, "utf8").includes("ready"));
  if (options.withChild) await waitFor(`${name}'s child to start`, () => existsSync(`${log}.child`));
  return { pid: child.pid!, log };
}

function unique(prefix: string): string {
  return `${prefix}${randomBytes(3).toString("hex")}`;
}

test.each([
  ["SIGHUP", "SIGHUP"],
  ["hup", "SIGHUP"],
  ["USR1", "SIGUSR1"],
  [" sigusr2 ", "SIGUSR2"],
  ["SIGTERM", "SIGTERM"],
])("parseSignalName reads %p as %p", (input, expected) => {
  expect(parseSignalName(input)).toBe(expected as NodeJS.Signals);
});

test("parseSignalName rejects unknown names", () => {
  expect(() => parseSignalName("SIGBOGUS")).toThrow(AgentError);
  expect(() => parseSignalName("SIGBOGUS")).toThrow('Invalid RELOAD_SIGNAL: "SIGBOGUS" is not a signal name');
});

test("reloader finds the target by comm and signals it", async () => {
  const name = unique("rlcomm");
  const app = await startSleeper(name, { argv0: "something-else" });
  const results: ReloadResult[] = [];
  const reloader = new Reloader({ target: name, signal: "SIGUSR1", onResult: (result) => results.push(result) });

  expect(await reloader.findTargets()).toEqual([app.pid]);
  expect((await reloader.check()).state).toBe("found");
  expect(await reloader.signal("test")).toBe("sent");
  await waitFor("the signal", () => readFileSync(app.log, "utf8").includes(`SIGUSR1 ${app.pid}`));
  expect(results).toEqual(["sent"]);
});

test("reloader matches the basename of argv[0]", async () => {
  const name = unique("rlexec");
  const argvName = unique("billing");
  const app = await startSleeper(name, { argv0: `/opt/app/${argvName}` });

  expect(await new Reloader({ target: argvName, signal: "SIGUSR1" }).findTargets()).toEqual([app.pid]);
  expect(await new Reloader({ target: `/opt/app/${argvName}`, signal: "SIGUSR1" }).findTargets()).toEqual([]);
});

test("reloader matches names longer than the kernel's comm by the full argv[0]", async () => {
  // Both names share their first 15 bytes, so both processes have the same comm.
  const tag = unique("rl");
  const worker = `${tag}-service-worker`;
  const api = `${tag}-service-api`;
  expect(worker.length).toBeGreaterThan(COMM_MAX_LENGTH);
  const workerApp = await startSleeper(worker);
  const apiApp = await startSleeper(api);
  const renamed = await startSleeper(`${tag}-service-other`, { argv0: worker.slice(0, COMM_MAX_LENGTH) });

  expect(readFileSync(`/proc/${workerApp.pid}/comm`, "utf8").trim()).toBe(worker.slice(0, COMM_MAX_LENGTH));
  expect(readFileSync(`/proc/${apiApp.pid}/comm`, "utf8").trim()).toBe(worker.slice(0, COMM_MAX_LENGTH));
  expect(renamed.pid).toBeGreaterThan(0);
  expect(await new Reloader({ target: worker, signal: "SIGUSR1" }).findTargets()).toEqual([workerApp.pid]);
  expect(await new Reloader({ target: api, signal: "SIGUSR1" }).findTargets()).toEqual([apiApp.pid]);
});

test("parseSignalName rejects signals that cannot mean reload", () => {
  for (const value of ["KILL", "SIGSTOP", "segv", "CONT", "SIGCHLD"]) {
    expect(() => parseSignalName(value)).toThrow(`Invalid RELOAD_SIGNAL: "${value}" cannot be used to reload an application. Use one of SIGHUP, SIGUSR1`);
  }
  expect(parseSignalName("winch")).toBe("SIGWINCH");
});

test("reloader signals only the topmost of matching parent and child", async () => {
  const name = unique("rltree");
  const app = await startSleeper(name, { withChild: true });
  const reloader = new Reloader({ target: name, signal: "SIGUSR1" });

  expect(await reloader.findTargets()).toEqual([app.pid]);
  await reloader.signal("test");
  await waitFor("the parent's signal", () => readFileSync(app.log, "utf8").includes("SIGUSR1"));
  await Bun.sleep(200);
  expect(readFileSync(`${app.log}.child`, "utf8")).not.toContain("SIGUSR1");
});

test("reloader never matches its own process", async () => {
  const name = unique("rlself");
  const app = await startSleeper(name);
  const reloader = new Reloader({ target: name, signal: "SIGUSR1", selfPid: app.pid });

  expect(await reloader.findTargets()).toEqual([]);
  expect((await reloader.check()).state).toBe("not_found");
  expect(await reloader.signal("test")).toBe("not_found");
});

test("reloader without a target signals nobody", async () => {
  const reloader = new Reloader({ signal: "SIGHUP" });

  expect((await reloader.check()).state).toBe("none");
  expect(await reloader.signal("test")).toBe("no_target");
});

test("reloader reports denied when signal 0 is not permitted", async () => {
  const name = unique("rldeny");
  await startSleeper(name);
  const denied = Object.assign(new Error("not permitted"), { code: "EPERM" });
  const reloader = new Reloader({
    target: name,
    signal: "SIGUSR1",
    kill: () => {
      throw denied;
    },
  });

  expect((await reloader.check()).state).toBe("denied");
  expect(await reloader.signal("test")).toBe("denied");
});
