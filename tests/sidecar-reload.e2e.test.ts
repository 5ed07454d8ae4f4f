/**
 * The sidecar's reload target in real process set-ups: missing, restarted with a new pid, and
 * owned by another user so that the signal is not permitted.
 */
import { afterAll, afterEach, beforeAll, expect, test } from "bun:test";
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { startDevServer, type DevServer } from "../src/dev/server.ts";
import { configureLogging } from "../src/log.ts";
import { metricValue, scrape, startApp, startSidecar, waitFor, type AppProcess, type SidecarProcess } from "./helpers/sidecar.ts";

const ROOT_TOKEN = `svt_root_${randomBytes(12).toString("hex")}`;
const NOBODY = 65534;

let dev: DevServer;
let work: string;
const running: Array<SidecarProcess | AppProcess> = [];
const captured: string[] = [];

beforeAll(async () => {
  configureLogging({ level: "error" });
  work = mkdtempSync(join(tmpdir(), "sidecar-reload-"));
  dev = await startDevServer({ port: 0, rootToken: ROOT_TOKEN, rateLimits: false });
});

afterEach(async () => {
  for (const process of running.splice(0)) {
    if ("healthUrl" in process) {
      await process.stop("SIGKILL");
      captured.push(process.stderr());
    } else {
      await process.stop();
    }
  }
});

afterAll(async () => {
  await dev.stop();
  rmSync(work, { recursive: true, force: true });
});

async function put(path: string, rev: number): Promise<void> {
  const response = await fetch(`${dev.url}/v1/secrets/${path}`, {
    method: "PUT",
    headers: { authorization: `Bearer ${ROOT_TOKEN}`, "content-type": "application/json" },
    body: JSON.stringify({ data: { rev: String(rev), password: `SECRETVALUE-${randomBytes(6).toString("hex")}` } }),
  });
  expect(response.status).toBe(200);
}

function revisionOnDisk(file: string): number {
  return existsSync(file) ? Number(JSON.parse(readFileSync(file, "utf8")).rev) : -1;
}

function scenario(name: string): { dir: string; out: string; file: string; app: string } {
  const dir = join(work, name);
  const out = join(dir, "out");
  mkdirSync(out, { recursive: true });
  return { dir, out, file: join(out, "db.json"), app: `svapp${randomBytes(3).toString("hex")}` };
}

function env(out: string, path: string, extra: Record<string, string>): Record<string, string> {
  return { SCAIVAULT_URL: dev.url, SCAIVAULT_TOKEN: ROOT_TOKEN, OUTPUT_DIRS: out, WATCH_PATHS: `${path} -> db.json`, START_JITTER: "0s", REFRESH_INTERVAL: "1h", ...extra };
}

async function track<T extends SidecarProcess | AppProcess>(process: Promise<T>): Promise<T> {
  const started = await process;
  running.push(started);
  return started;
}

// ---------------------------------------------------------------------------------------------

test("sidecar warns when the reload target is missing and still writes files", async () => {
  const { out, file, app } = scenario("missing");
  await put("rl/missing", 1);
  const sidecar = await track(startSidecar(env(out, "rl/missing", { RELOAD_TARGET: app, RELOAD_TARGET_WAIT: "1s" })));

  const warning = await sidecar.waitForLog("the start-up warning", (line) => String(line.msg).startsWith("Reload target not found"));
  expect(warning.level).toBe("warn");
  expect(warning.target).toBe(app);
  await sidecar.waitForLog("the subscription", (line) => line.msg === "Created event subscription");

  await put("rl/missing", 2);
  await waitFor("revision 2 on disk", () => revisionOnDisk(file) === 2);
  await sidecar.waitForLog("the missing-target warning", (line) => String(line.msg).startsWith("Reload target not running") && line.level === "warn");

  const metrics = await scrape(sidecar);
  captured.push(metrics);
  // One at the first sync, which wrote the file, and one for revision 2.
  expect(metricValue(metrics, "scaivault_sidecar_signals_total", { result: "not_found" })).toBe(2);
  expect(metricValue(metrics, "scaivault_sidecar_reload_target_up")).toBe(0);
}, 60_000);

test("sidecar signals the new process after the target restarts", async () => {
  const { dir, out, file, app } = scenario("restart");
  await put("rl/restart", 1);
  const first = await track(startApp(dir, app, join(dir, "first.log"), [file]));
  const sidecar = await track(startSidecar(env(out, "rl/restart", { RELOAD_TARGET: app })));
  await sidecar.waitForLog("the target", (line) => line.msg === "Reload target found");
  await sidecar.waitForLog("the subscription", (line) => line.msg === "Created event subscription");
  await sidecar.waitForLog("the first sync", (line) => line.msg === "First sync complete: ready");

  // The first sync wrote the file the app did not have yet: that is one signal.
  await waitFor("the first signal", () => first.signals().length === 1);
  await put("rl/restart", 2);
  await waitFor("the second signal", () => first.signals().length === 2);

  await first.stop();
  running.splice(running.indexOf(first), 1);
  const second = await track(startApp(dir, app, join(dir, "second.log"), [file]));
  expect(second.pid).not.toBe(first.pid);

  await put("rl/restart", 3);
  await waitFor("the signal at the new process", () => second.signals().length === 1);
  expect(revisionOnDisk(file)).toBe(3);
  expect(first.signals().length).toBe(2);
  expect(sidecar.lines.filter((line) => line.msg === "Sent reload signal").map((line) => line.pid)).toEqual([first.pid, first.pid, second.pid]);
}, 60_000);

const canSwitchUser = process.getuid?.() === 0 && existsSync("/usr/bin/setpriv");

test.skipIf(!canSwitchUser)("sidecar reports a target it may not signal", async () => {
  const { dir, out, file, app } = scenario("denied");
  // mkdtemp makes the work directory 0700, but user 65534 must reach the output directory inside it.
  chmodSync(work, 0o755);
  chmodSync(dir, 0o755);
  chownSync(out, NOBODY, NOBODY);
  const home = join(dir, "home");
  mkdirSync(home);
  chownSync(home, NOBODY, NOBODY);
  await put("rl/denied", 1);

  // The application runs as root, the sidecar as user 65534: signals are not permitted.
  const target = await track(startApp(dir, app, join(dir, "app.log"), [file]));
  const sidecar = await track(
    startSidecar(env(out, "rl/denied", { RELOAD_TARGET: app, HOME: home }), {
      wrapper: ["/usr/bin/setpriv", `--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups"],
    }),
  );

  const warning = await sidecar.waitForLog("the permission warning", (line) => String(line.msg).startsWith("Reload target cannot be signalled"));
  expect(warning.level).toBe("warn");
  expect(warning.pids).toEqual([target.pid]);
  await sidecar.waitForLog("the first sync", (line) => line.msg === "First sync complete: ready");
  await sidecar.waitForLog("the subscription", (line) => line.msg === "Created event subscription");

  await put("rl/denied", 2);
  await waitFor("revision 2 on disk", () => revisionOnDisk(file) === 2);
  await waitFor("the denied signal in the metrics", async () => metricValue(await scrape(sidecar), "scaivault_sidecar_signals_total", { result: "denied" }) === 2);
  expect(target.signals()).toEqual([]);
}, 60_000);

test("sidecar reload logs and metrics hold no secret value or token", () => {
  const text = captured.join("\n");
  expect(text.length).toBeGreaterThan(1_000);
  expect(text).not.toContain("SECRETVALUE");
  expect(text).not.toContain(ROOT_TOKEN);
});
