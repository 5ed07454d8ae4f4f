/**
 * Measures dynamic leases against the dev server on 127.0.0.1 (in process, rate limits on):
 *
 * 1. `login [runs]` (default 20): time from spawning the sidecar with one DYNAMIC line of the
 *    `postgresql` plugin to the first successful login with the credentials it wrote, against a
 *    throwaway PostgreSQL cluster (tests/helpers/postgres.ts). Runs the compiled binary when
 *    dist/scaivault-agent exists, and `bun mod.ts`.
 * 2. `pods [pods] [ttl] [max_ttl] [minutes]` (defaults 100, 2m, 6m, 12): that many lease managers
 *    in this process, one DYNAMIC line each, all with one token of one identity, against the
 *    `static` plugin. Pods start at times spread uniformly over one `max_ttl`, as in a Deployment
 *    whose pods have mixed ages. The minutes after the first `max_ttl` are the steady state. It
 *    counts lease operations per minute by route (the dev server's counts), 429 responses, and
 *    the spacing of renewals per lease.
 *
 *   bun bench/leases.ts login 20
 *   bun bench/leases.ts pods 100 2m 6m 12
 */
import { execSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { staticTokenSource } from "../src/auth.ts";
import { ScaiVaultClient } from "../src/client.ts";
import { dynamicStore } from "../src/dev/dynamic.ts";
import { startDevServer } from "../src/dev/server.ts";
import { parseDuration } from "../src/duration.ts";
import { LeaseManager } from "../src/leases.ts";
import { configureLogging } from "../src/log.ts";
import { parseDynamicMappings } from "../src/mapping.ts";
import { postgresUnavailable, readAsUser, startPostgres } from "../tests/helpers/postgres.ts";

const ROOT = resolve(import.meta.dirname, "..");
const BINARY = join(ROOT, "dist/scaivault-agent");
const [mode = "login", ...args] = process.argv.slice(2);

configureLogging({ level: "error" });
const work = mkdtempSync(join(existsSync("/dev/shm") ? "/dev/shm" : tmpdir(), "bench-leases-"));

try {
  console.log(`machine: ${sh("nproc")} cores; ${sh("free -h").split("\n")[1]}`);
  if (mode === "login") await measureLogin(Number(args[0] ?? 20));
  else if (mode === "pods") await measurePods(Number(args[0] ?? 100), args[1] ?? "2m", args[2] ?? "6m", Number(args[3] ?? 12));
  else throw new Error(`Unknown mode "${mode}": use login or pods`);
} finally {
  rmSync(work, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------

async function measureLogin(runs: number): Promise<void> {
  const unavailable = postgresUnavailable();
  if (unavailable) throw new Error(`Cannot measure logins: ${unavailable}`);

  const cluster = await startPostgres();
  const server = await startDevServer({
    port: 0,
    config: {
      engines: {
        "postgres-prod": {
          plugin: "postgresql",
          connection_url: cluster.url,
          roles: { readonly: { default_ttl: "1h", creation_statements: ['GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}"'] } },
        },
      },
    },
  });

  const commands: Array<[string, string[]]> = [["bun mod.ts", [process.execPath, join(ROOT, "mod.ts")]]];
  if (existsSync(BINARY)) commands.unshift(["compiled binary", [BINARY]]);

  try {
    console.log(`\n| command | runs | median ms | p90 ms | max ms |\n|---|---|---|---|---|`);
    for (const [label, command] of commands) {
      const times: number[] = [];
      for (let run = 0; run < runs; run++) times.push(await loginOnce(command, server.url, server.rootToken, cluster, run));
      console.log(`| ${label} | ${runs} | ${percentile(times, 0.5).toFixed(0)} | ${percentile(times, 0.9).toFixed(0)} | ${Math.max(...times).toFixed(0)} |`);
    }
  } finally {
    await server.stop();
    await cluster.stop();
  }
}

/** Spawns one sidecar, polls until its credentials log in, and returns the milliseconds from spawn to login. */
async function loginOnce(command: string[], url: string, token: string, cluster: Awaited<ReturnType<typeof startPostgres>>, run: number): Promise<number> {
  const dir = join(work, `login-${run}-${Math.random().toString(36).slice(2)}`);
  const file = join(dir, "db.json");
  const started = performance.now();
  const child = spawn(command[0]!, command.slice(1).concat("sidecar"), {
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      SCAIVAULT_URL: url,
      SCAIVAULT_TOKEN: token,
      OUTPUT_DIRS: dir,
      DYNAMIC: "engine=postgres-prod role=readonly ttl=1h -> db.json",
      EVENTS: "false",
      HEALTH_ADDR: "off",
      LOG_LEVEL: "error",
    },
    stdio: "ignore",
  });
  const exited = new Promise((done) => child.on("exit", done));

  let elapsed = NaN;
  for (const deadline = started + 30_000; performance.now() < deadline; await sleep(2)) {
    if (!existsSync(file)) continue;
    try {
      const credential = JSON.parse(readFileSync(file, "utf8"));
      await readAsUser(cluster, credential.username, credential.password);
      elapsed = performance.now() - started;
      break;
    } catch {
      // Not written completely yet, or the role is not visible yet: poll again.
    }
  }

  child.kill("SIGTERM");
  await exited;
  if (Number.isNaN(elapsed)) throw new Error(`Run ${run}: no usable login within 30 s`);
  return elapsed;
}

async function measurePods(pods: number, ttl: string, maxTtl: string, minutes: number): Promise<void> {
  const ttlMs = parseDuration(ttl, "ttl");
  const maxTtlMs = parseDuration(maxTtl, "max_ttl");
  const server = await startDevServer({
    port: 0,
    config: { engines: { db: { plugin: "static", max_ttl: maxTtl, roles: { app: { default_ttl: ttl } } } } },
  });
  const token = server.state.tokens.issue("sa:bench", "service_account").token;
  // Renewal times per lease: a generate starts a new list for its pod.
  const renewTimes: number[][] = [];
  const current: Array<number[] | undefined> = Array.from({ length: pods });
  const statuses = new Map<string, number>();
  const managers: LeaseManager[] = [];
  const timers: Array<ReturnType<typeof setTimeout>> = [];
  const started = Date.now();

  for (let pod = 0; pod < pods; pod++) {
    const client = new ScaiVaultClient({
      baseUrl: server.url,
      tokens: staticTokenSource(token),
      onRequest: (record) => {
        const key = `${record.route} ${record.status}`;
        statuses.set(key, (statuses.get(key) ?? 0) + 1);
        if (record.route === "dynamic.generate" && record.status === 200) renewTimes.push((current[pod] = []));
        if (record.route === "leases.renew" && record.status === 200) current[pod]?.push(Date.now());
      },
    });
    const output = { layout: { dirs: [join(work, `pod-${pod}`)], prefix: "" }, fileMode: 0o600 };
    const manager = new LeaseManager({ client, mappings: parseDynamicMappings("engine=db role=app -> db.json"), output, owner: "sidecar" });
    managers.push(manager);
    timers.push(setTimeout(() => void manager.start().catch((error) => console.error(`pod ${pod}: ${(error as Error).message}`)), (pod / pods) * maxTtlMs));
  }

  const perMinute: Array<Record<string, number>> = [];
  let previous = server.state.stats.snapshot();
  for (let minute = 1; minute <= minutes; minute++) {
    await sleep(60_000);
    const current = server.state.stats.snapshot();
    perMinute.push(Object.fromEntries(Object.entries(current).map(([key, value]) => [key, value - (previous[key] ?? 0)])));
    previous = current;
  }

  // Every pod stops at once, as when the Deployment is deleted: each revokes its leases within 8 s, the sidecar's bound.
  for (const timer of timers) clearTimeout(timer);
  const stopStarted = Date.now();
  const summaries = await Promise.all(managers.map((manager) => manager.stop(8_000)));
  const stopSeconds = (Date.now() - stopStarted) / 1000;
  const leftActive = dynamicStore(server.state).list().length;
  await server.stop();

  const routes = ["POST /v1/dynamic/engines/{engine}/creds/{role}", "POST /v1/dynamic/leases/{id}/renew", "POST /v1/dynamic/leases/{id}/revoke"];
  console.log(`\n${pods} pods, ttl ${ttl}, max_ttl ${maxTtl}, starts spread over ${maxTtl}, ${minutes} minutes`);
  console.log("\n| minute | generate | renew | revoke | lease bucket (renew + revoke) |\n|---|---|---|---|---|");
  perMinute.forEach((counts, index) => {
    const [generate, renew, revoke] = routes.map((route) => counts[route] ?? 0);
    console.log(`| ${index + 1} | ${generate} | ${renew} | ${revoke} | ${renew! + revoke!} |`);
  });

  const steady = perMinute.slice(Math.ceil(maxTtlMs / 60_000));
  const leaseOps = steady.map((counts) => (counts[routes[1]!] ?? 0) + (counts[routes[2]!] ?? 0));
  console.log(`\nsteady state (minutes after the first max_ttl): lease bucket mean ${mean(leaseOps).toFixed(1)}/min, max ${Math.max(...leaseOps)}/min`);
  console.log(`responses by route and status: ${JSON.stringify(Object.fromEntries([...statuses.entries()].sort()))}`);

  const gaps = renewTimes.flatMap((times) => times.slice(1).map((time, index) => (time - times[index]!) / ttlMs));
  console.log(`renewal spacing as a fraction of ttl: median ${percentile(gaps, 0.5).toFixed(3)}, min ${Math.min(...gaps).toFixed(3)}, max ${Math.max(...gaps).toFixed(3)} (${gaps.length} gaps)`);
  const revoked = summaries.reduce((sum, summary) => sum + summary.revoked.length, 0);
  const failed = summaries.reduce((sum, summary) => sum + summary.failed.length, 0);
  console.log(`all pods stopped at once: ${revoked} leases revoked, ${failed} not revoked (left to expire at their TTL), ${leftActive} active on the server after ${stopSeconds.toFixed(1)} s`);
  console.log(`elapsed ${((Date.now() - started) / 60_000).toFixed(1)} min`);
}

function percentile(values: number[], fraction: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))] ?? NaN;
}

function mean(values: number[]): number {
  return values.reduce((sum, value) => sum + value, 0) / Math.max(1, values.length);
}

function sh(command: string): string {
  return execSync(command, { encoding: "utf8" }).trim();
}

function sleep(ms: number): Promise<void> {
  return new Promise((done) => setTimeout(done, ms));
}
