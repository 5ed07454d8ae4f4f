/**
 * Measures the compiled sidecar against the dev server (its own process, rate limits off) on
 * 127.0.0.1:
 * 1. rotation latency from a PUT to the reload signal arriving at tests/fixtures/reload-app.ts,
 *    through events and through polling;
 * 2. CPU (from /proc/<pid>/stat) and resident memory (/proc/<pid>/status) of a sidecar watching
 *    10 and then 1000 paths, and the requests it sends per minute (the dev server's counts);
 * 3. for comparison, the resident memory of two tiny compiled Bun programs (BENCH_ONLY=floor runs
 *    only this part).
 *
 * Run `bun run build` first, then `bun bench/sidecar.ts [idle seconds] [event rotations] [poll rotations]`
 * (defaults 180, 200, 20). The binary is copied first, so a rebuild during the run changes nothing.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const ROOT = resolve(import.meta.dirname, "..");
const SOURCE_BINARY = process.env.BENCH_BINARY ?? join(ROOT, "dist/scaivault-agent");
const IDLE_SECONDS = Number(process.argv[2] ?? 180);
const EVENT_ROTATIONS = Number(process.argv[3] ?? 200);
const POLL_ROTATIONS = Number(process.argv[4] ?? 20);
const POLL_INTERVAL_MS = 5_000;
const IDLE_INTERVAL = "60s";
const ROOT_TOKEN = "svt_bench_root_token_0123456789";
const CLOCK_TICKS = 100;

/** Programs that show the resident memory of the Bun runtime itself, without the agent. */
const FLOOR_PROGRAMS: Record<string, string> = {
  "`setInterval` only": "setInterval(() => {}, 1000);\n",
  "serves one HTTP request to itself, then idles": [
    'const server = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response("ok") });',
    "await fetch(`http://127.0.0.1:${server.port}/`).then((response) => response.text());",
    "setInterval(() => {}, 1000);",
  ].join("\n"),
};

if (!existsSync(SOURCE_BINARY)) throw new Error(`${SOURCE_BINARY} is missing: run \`bun run build\` first`);

const work = mkdtempSync(join(existsSync("/dev/shm") ? "/dev/shm" : tmpdir(), "bench-sidecar-"));
const binary = join(work, "scaivault-agent");
copyFileSync(SOURCE_BINARY, binary);

const seed: Record<string, Record<string, unknown>> = {};
for (let index = 0; index < 1000; index++) seed[`bench/app/secret-${index}`] = { username: `user-${index}`, password: `password-${index}` };
for (const name of ["db", "api", "cfg"]) seed[`bench/latency/${name}`] = { rev: "0", password: "initial" };
writeFileSync(join(work, "seed.json"), JSON.stringify(seed));

const children: ChildProcess[] = [];
const dev = await startDevServer();

try {
  console.log(`machine: ${await sh("nproc")} cores; ${(await sh("free -h")).split("\n")[1]}`);
  console.log(`binary: ${(statSync(binary).size / 1024 / 1024).toFixed(1)} MiB\n`);

  console.log("| floor program (compiled with Bun) | RSS MiB |\n|---|---|");
  for (const [label, source] of Object.entries(FLOOR_PROGRAMS)) console.log(`| ${label} | ${(await floorRss(source)).toFixed(1)} |`);
  console.log();
  if (process.env.BENCH_ONLY !== "floor") await measureSidecar();
} finally {
  for (const child of children) child.kill("SIGKILL");
  dev.process.kill("SIGTERM");
  rmSync(work, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------

/** Measures rotation latency and idle cost, printing two tables. */
async function measureSidecar(): Promise<void> {
  const events = await measureLatency("events", EVENT_ROTATIONS, { REFRESH_INTERVAL: "5m" });
  const polling = await measureLatency("polling", POLL_ROTATIONS, { REFRESH_INTERVAL: `${POLL_INTERVAL_MS}ms`, EVENTS: "false" });
  console.log("| path | rotations | median ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|");
  for (const [label, samples] of [["events", events], ["polling (5 s interval, 10 % jitter)", polling]] as const) {
    console.log(`| ${label} | ${samples.length} | ${quantile(samples, 0.5).toFixed(1)} | ${quantile(samples, 0.9).toFixed(1)} | ${quantile(samples, 0.99).toFixed(1)} | ${Math.max(...samples).toFixed(1)} |`);
  }
  console.log();

  console.log(`| watched paths | seconds | avg CPU millicores | RSS at end MiB | peak RSS MiB | anon RSS MiB | requests/min | batch reads per refresh |`);
  console.log("|---|---|---|---|---|---|---|---|");
  for (const count of [10, 1000]) {
    const result = await measureIdle(count);
    console.log(
      `| ${count} | ${result.seconds} | ${result.millicores.toFixed(2)} | ${result.rssMiB.toFixed(1)} | ${result.peakMiB.toFixed(1)} | ${result.anonMiB.toFixed(1)} | ${result.perMinute.toFixed(1)} | ${result.batchPerRefresh.toFixed(1)} |`,
    );
    console.log(`|   | requests by route per minute: ${JSON.stringify(result.byRoute)} |`);
  }
}

/** Compiles `source`, runs it for 5 seconds and returns its VmRSS in MiB. */
async function floorRss(source: string): Promise<number> {
  const file = join(work, `floor-${Math.random().toString(36).slice(2)}`);
  writeFileSync(`${file}.ts`, source);
  await new Promise((done) => spawn(process.execPath, ["build", `${file}.ts`, "--compile", "--outfile", file], { stdio: "ignore" }).on("close", done));

  const child = spawn(file, [], { stdio: "ignore" });
  children.push(child);
  await sleep(5_000);
  const rss = status(child.pid!).VmRSS ?? 0;
  child.kill("SIGKILL");
  return rss / 1024;
}

/** Rotates the latency secrets one at a time and returns the PUT-to-signal delays in milliseconds. */
async function measureLatency(label: string, rotations: number, env: Record<string, string>): Promise<number[]> {
  const out = join(work, `latency-${label}`);
  mkdirSync(out);
  const appName = `svbench${label.slice(0, 4)}`;
  const files = ["db", "api", "cfg"].map((name) => join(out, `${name}.json`));
  const watch = ["db", "api", "cfg"].map((name) => `bench/latency/${name} -> ${name}.json`).join("\n");

  const sidecar = startSidecar({ ...env, WATCH_PATHS: watch, OUTPUT_DIRS: out, RELOAD_TARGET: appName });
  await waitFor(() => files.every((file) => existsSync(file)), 20_000);
  await sleep(1_000);

  const log = join(out, "app.log");
  symlinkSync(process.execPath, join(out, appName));
  const app = spawn(join(out, appName), ["run", join(ROOT, "tests/fixtures/reload-app.ts"), log, "SIGHUP", ...files], {
    env: { PATH: process.env.PATH, RELOAD_APP_IDLE: "1" },
    stdio: "ignore",
  });
  children.push(app);
  await waitFor(() => existsSync(log), 10_000);

  const samples: number[] = [];
  for (let rotation = 1; rotation <= rotations; rotation++) {
    const before = signalCount(log);
    const path = `bench/latency/${["db", "api", "cfg"][rotation % 3]}`;
    if (label === "polling") await sleep(Math.random() * POLL_INTERVAL_MS);

    const sentAt = performance.timeOrigin + performance.now();
    await api("PUT", `/v1/secrets/${path}`, { data: { rev: String(rotation), password: `rotated-${rotation}` } });
    await waitFor(() => signalCount(log) > before, POLL_INTERVAL_MS * 3, 1);

    const signal = signals(log).at(-1)!;
    samples.push(signal.received - sentAt);
    if (label === "events") await sleep(20);
  }

  app.kill("SIGTERM");
  sidecar.kill("SIGTERM");
  return samples;
}

/** Runs a sidecar on `count` paths for IDLE_SECONDS and reads its CPU, memory and requests. */
async function measureIdle(count: number) {
  const out = join(work, `idle-${count}`);
  mkdirSync(out);
  const watch = Object.keys(seed).slice(0, count).map((path, index) => `${path} -> s${index}.json`).join("\n");
  const sidecar = startSidecar({ WATCH_PATHS: watch, OUTPUT_DIRS: out, REFRESH_INTERVAL: IDLE_INTERVAL });
  const pid = sidecar.pid!;

  // Measure from just after the first sync, so that start-up is not averaged in.
  await waitFor(() => existsSync(join(out, `s${count - 1}.json`)), 30_000);
  await sleep(2_000);
  await api("DELETE", "/v1/dev/stats");
  const startTicks = cpuTicks(pid);
  const started = performance.now();

  let peakKb = 0;
  while (performance.now() - started < IDLE_SECONDS * 1000) {
    peakKb = Math.max(peakKb, status(pid).VmRSS ?? 0);
    await sleep(1_000);
  }

  const seconds = (performance.now() - started) / 1000;
  const cpuSeconds = (cpuTicks(pid) - startTicks) / CLOCK_TICKS;
  const memory = status(pid);
  const requests = ((await api("GET", "/v1/dev/stats")) as { requests: Record<string, number> }).requests;
  const metrics = await (await fetch(`${sidecar.healthUrl}/metrics`)).text().catch(() => "");
  sidecar.kill("SIGTERM");

  const total = Object.entries(requests).filter(([route]) => !route.includes("/v1/dev/")).reduce((sum, [, value]) => sum + value, 0);
  const refreshes = [...metrics.matchAll(/^scaivault_sidecar_refreshes_total\{result="ok",trigger="(?:interval|start)"\} (\d+)/gm)].reduce((sum, match) => sum + Number(match[1]), 0);
  const batches = requests["POST /v1/secrets/batch"] ?? 0;
  const byRoute = Object.fromEntries(
    Object.entries(requests)
      .filter(([route]) => !route.includes("/v1/dev/"))
      .map(([route, value]) => [route, Number(((value * 60) / seconds).toFixed(2))]),
  );

  return {
    seconds: Math.round(seconds),
    millicores: (cpuSeconds / seconds) * 1000,
    rssMiB: (memory.VmRSS ?? 0) / 1024,
    peakMiB: Math.max(peakKb, memory.VmHWM ?? 0) / 1024,
    anonMiB: (memory.RssAnon ?? 0) / 1024,
    perMinute: (total * 60) / seconds,
    // Interval refreshes in the window; the start refresh was before it.
    batchPerRefresh: batches / Math.max(1, refreshes - 1),
    byRoute,
  };
}

function startSidecar(env: Record<string, string>): ChildProcess & { healthUrl: string } {
  const port = 20_000 + Math.floor(Math.random() * 20_000);
  const child = spawn(binary, ["sidecar"], {
    env: {
      PATH: process.env.PATH,
      SCAIVAULT_URL: dev.url,
      SCAIVAULT_TOKEN: ROOT_TOKEN,
      START_JITTER: "0s",
      HEALTH_ADDR: `127.0.0.1:${port}`,
      LOG_LEVEL: "warn",
      LOG_FORMAT: "json",
      ...env,
    },
    stdio: ["ignore", "ignore", "inherit"],
  });
  children.push(child);
  return Object.assign(child, { healthUrl: `http://127.0.0.1:${port}` });
}

async function startDevServer(): Promise<{ url: string; process: ChildProcess }> {
  const child = spawn(binary, ["dev", "--port", "0", "--seed", join(work, "seed.json"), "--rate-limits", "off", "--log-level", "error"], {
    env: { PATH: process.env.PATH, SCAIVAULT_DEV_ROOT_TOKEN: ROOT_TOKEN },
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(child);

  const url = await new Promise<string>((done, fail) => {
    let text = "";
    child.stdout!.on("data", (chunk: Buffer) => {
      text += chunk.toString();
      const match = /listening on (\S+)/.exec(text);
      if (match) done(match[1]!);
    });
    child.on("exit", () => fail(new Error("dev server exited")));
  });
  return { url, process: child };
}

async function api(method: string, path: string, body?: unknown): Promise<unknown> {
  const response = await fetch(`${dev.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${ROOT_TOKEN}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status}`);
  return text ? JSON.parse(text) : undefined;
}

function signals(log: string): Array<{ received: number }> {
  return readFileSync(log, "utf8")
    .split("\n")
    .filter((line) => line.includes('"event":"signal"'))
    .map((line) => JSON.parse(line));
}

function signalCount(log: string): number {
  return (readFileSync(log, "utf8").match(/"event":"signal"/g) ?? []).length;
}

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command name.
  return Number(fields[11]) + Number(fields[12]);
}

function status(pid: number): Record<string, number> {
  const values: Record<string, number> = {};
  for (const line of readFileSync(`/proc/${pid}/status`, "utf8").split("\n")) {
    const match = /^(\w+):\s+(\d+) kB$/.exec(line);
    if (match) values[match[1]!] = Number(match[2]);
  }
  return values;
}

function quantile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

async function waitFor(check: () => boolean, timeoutMs: number, everyMs = 20): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`Timed out after ${timeoutMs} ms`);
    await sleep(everyMs);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((done) => setTimeout(done, ms));
}

async function sh(command: string): Promise<string> {
  return new Promise((done) => {
    let text = "";
    const child = spawn("sh", ["-c", command], { stdio: ["ignore", "pipe", "ignore"] });
    child.stdout.on("data", (chunk: Buffer) => (text += chunk.toString()));
    child.on("close", () => done(text.trim()));
  });
}
