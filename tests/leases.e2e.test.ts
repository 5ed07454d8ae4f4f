/**
 * Dynamic database credentials end to end: a throwaway PostgreSQL cluster, the real dev server
 * with the `postgresql` plugin on 127.0.0.1, and `init` and `sidecar` as real child processes
 * that receive real signals. Skipped, with the reason printed, when PostgreSQL is not installed.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { dynamicStore } from "../src/dev/dynamic.ts";
import { startDevServer, type DevServer } from "../src/dev/server.ts";
import { configureLogging } from "../src/log.ts";
import { LEASE_STATE_FILE } from "../src/lease-store.ts";
import { runCli } from "./helpers/cli.ts";
import { generatedRoles, postgresUnavailable, readAsUser, startPostgres, type PostgresCluster } from "./helpers/postgres.ts";
import { metricValue, readyz, scrape, startApp, startSidecar, waitFor, type AppProcess, type SidecarProcess } from "./helpers/sidecar.ts";

const GENERATE_ROUTE = "POST /v1/dynamic/engines/{engine}/creds/{role}";
const GRANT = 'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}"';

const unavailable = postgresUnavailable();
if (unavailable) console.log(`Skipping dynamic lease end-to-end tests: ${unavailable}`);

describe.skipIf(unavailable !== undefined)("dynamic leases end to end", () => {
  let cluster: PostgresCluster;
  let server: DevServer;
  let scratch: string;
  let caseNumber = 0;
  const outputs: string[] = [];
  const sensitive: string[] = [];
  const running: SidecarProcess[] = [];
  const apps: AppProcess[] = [];

  beforeAll(async () => {
    configureLogging({ level: "warn" });
    cluster = await startPostgres();
    server = await startDevServer({
      port: 0,
      rateLimits: false,
      config: {
        engines: {
          "postgres-prod": {
            plugin: "postgresql",
            connection_url: cluster.url,
            max_ttl: "24h",
            roles: {
              readonly: { default_ttl: "1h", creation_statements: [GRANT] },
              capped: { default_ttl: "3s", max_ttl: "5s", creation_statements: [GRANT] },
            },
          },
        },
      },
    });
    scratch = mkdtempSync(join(tmpdir(), "leases-e2e-"));
    sensitive.push(server.rootToken, new URL(cluster.url).password);
  }, 120_000);

  // A failed test leaves its processes running; stop them before the next test injects faults.
  afterEach(async () => {
    await Promise.all(running.splice(0).map((process) => stop(process)));
    await Promise.all(apps.splice(0).map((app) => app.stop()));
    server.state.faults.clear();
  });

  afterAll(async () => {
    await server?.stop();
    await cluster?.stop();
    rmSync(scratch, { recursive: true, force: true });
  });

  function caseDir(): string {
    const dir = join(scratch, `case-${++caseNumber}`);
    mkdirSync(dir, { recursive: true });
    return dir;
  }

  function env(dir: string, dynamic: string, extra: Record<string, string> = {}): Record<string, string> {
    return {
      SCAIVAULT_URL: server.url,
      SCAIVAULT_TOKEN: server.rootToken,
      OUTPUT_DIRS: dir,
      DYNAMIC: dynamic,
      EVENTS: "false",
      LEASE_REVOKE_GRACE: "500ms",
      ...extra,
    };
  }

  async function sidecar(dir: string, dynamic: string, extra: Record<string, string> = {}): Promise<SidecarProcess> {
    const process = await startSidecar(env(dir, dynamic, extra));
    running.push(process);
    await process.waitForLog("the leases", (line) => line.msg === "Leases ready" || line.level === "error");
    return process;
  }

  async function stop(process: SidecarProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (running.includes(process)) running.splice(running.indexOf(process), 1);
    const result = await process.stop(signal);
    outputs.push(process.stderr());
    return result;
  }

  /** Starts the reload test application after the sidecar wrote its files, as a native sidecar's pod would. */
  async function app(dir: string, name: string, file: string): Promise<AppProcess> {
    const started = await startApp(dir, name, join(dir, "app.log"), [file]);
    apps.push(started);
    return started;
  }

  function credential(file: string): { username: string; password: string } {
    const data = JSON.parse(readFileSync(file, "utf8"));
    sensitive.push(data.password);
    return data;
  }

  function activeLeases(): string[] {
    return dynamicStore(server.state).list().map((lease) => lease.leaseId);
  }

  function logged(process: SidecarProcess, message: string): Array<Record<string, unknown>> {
    return process.lines.filter((line) => line.msg === message);
  }

  test("sidecar login works until SIGTERM", async () => {
    const dir = caseDir();
    // The guide's line, with its absolute target placed under the case directory.
    const process = await sidecar(dir, "engine=postgres-prod role=readonly ttl=2h -> /run/secrets/db.json", {
      OUTPUT_DIRS: "/run/secrets",
      OUTPUT_PREFIX: dir,
    });
    const file = join(dir, "run/secrets/db.json");
    const { username, password } = credential(file);

    expect(await readAsUser(cluster, username, password)).toBe(2);
    expect(await generatedRoles(cluster.sql)).toContain(username);

    const exit = await stop(process);
    expect(exit.code).toBe(0);
    expect(await generatedRoles(cluster.sql)).not.toContain(username);
    await expect(readAsUser(cluster, username, password)).rejects.toThrow(/password authentication failed|does not exist/);
    expect(JSON.parse(readFileSync(join(dir, "run/secrets", LEASE_STATE_FILE), "utf8")).leases).toEqual([]);
  }, 60_000);

  test("renewal keeps user, file, no signal", async () => {
    const dir = caseDir();
    const file = join(dir, "db.json");
    const process = await sidecar(dir, "engine=postgres-prod role=readonly ttl=3s -> db.json", { RELOAD_TARGET: "dbapp-renew" });
    const application = await app(dir, "dbapp-renew", file);
    const { username, password } = credential(file);
    const before = statSync(file);
    const validBefore = (await cluster.sql`SELECT rolvaliduntil FROM pg_roles WHERE rolname = ${username}`)[0]!.rolvaliduntil;

    await waitFor("two renewals", () => logged(process, "Renewed lease").length >= 2, 15_000);

    const after = statSync(file);
    expect(after.mtimeMs).toBe(before.mtimeMs);
    expect(after.ino).toBe(before.ino);
    expect(credential(file).username).toBe(username);
    expect(application.signals()).toHaveLength(0);
    const validAfter = (await cluster.sql`SELECT rolvaliduntil FROM pg_roles WHERE rolname = ${username}`)[0]!.rolvaliduntil;
    expect(new Date(validAfter).getTime()).toBeGreaterThan(new Date(validBefore).getTime());
    expect(await readAsUser(cluster, username, password)).toBe(2);
    expect(metricValue(await scrape(process), "scaivault_lease_renewals_total")).toBeGreaterThanOrEqual(2);

    await stop(process);
  }, 60_000);

  test("max_ttl swaps user with one signal", async () => {
    const dir = caseDir();
    const file = join(dir, "db.json");
    const process = await sidecar(dir, "engine=postgres-prod role=capped -> db.json", { RELOAD_TARGET: "dbapp-max" });
    const application = await app(dir, "dbapp-max", file);
    const first = credential(file);
    const before = statSync(file);

    const replaced = await process.waitForLog("the replacement", (line) => line.msg === "Replaced lease: new credential written", 15_000);
    await waitFor("the old lease's revocation", () => logged(process, "Revoked lease").some((line) => line.leaseId === replaced.previousLeaseId), 10_000);

    const second = credential(file);
    expect(second.username).not.toBe(first.username);
    expect(statSync(file).ino).not.toBe(before.ino);
    expect(await readAsUser(cluster, second.username, second.password)).toBe(2);
    expect(await generatedRoles(cluster.sql)).not.toContain(first.username);
    await expect(readAsUser(cluster, first.username, first.password)).rejects.toThrow();

    await waitFor("the reload signal", () => application.signals().length > 0, 10_000);
    const signals = application.signals();
    expect(signals).toHaveLength(1);
    expect(String(signals[0]!.files[file])).toContain(second.username);

    await stop(process);
  }, 60_000);

  test("restart adopts, SIGTERM revokes all", async () => {
    const dir = caseDir();
    const lines = "engine=postgres-prod role=readonly -> a.json\nengine=postgres-prod role=readonly -> b.json";
    const first = await sidecar(dir, lines);
    const users = [credential(join(dir, "a.json")).username, credential(join(dir, "b.json")).username];
    const generated = server.state.stats.count(GENERATE_ROUTE);

    // kill -9: nothing is revoked, the state file stays for the next start.
    await stop(first, "SIGKILL");
    const second = await sidecar(dir, lines);

    expect(logged(second, "Adopted recorded lease")).toHaveLength(2);
    expect(server.state.stats.count(GENERATE_ROUTE)).toBe(generated);
    expect([credential(join(dir, "a.json")).username, credential(join(dir, "b.json")).username]).toEqual(users);
    expect(metricValue(await scrape(second), "scaivault_leases_held")).toBe(2);

    expect((await stop(second)).code).toBe(0);
    const roles = await generatedRoles(cluster.sql);
    for (const user of users) expect(roles).not.toContain(user);
  }, 60_000);

  test("sidecar adopts init lease, no second", async () => {
    const dir = caseDir();
    const line = "engine=postgres-prod role=readonly ttl=1h -> db.json";
    const generated = server.state.stats.count(GENERATE_ROUTE);
    const leasesBefore = activeLeases().length;

    const init = await runCli(["init"], env(dir, line));
    outputs.push(init.stderr);
    expect(init.code).toBe(0);
    const { username, password } = credential(join(dir, "db.json"));
    const recorded = JSON.parse(readFileSync(join(dir, LEASE_STATE_FILE), "utf8")).leases;
    expect(recorded).toHaveLength(1);
    expect(recorded[0].generatedBy).toBe("init");
    expect(statSync(join(dir, LEASE_STATE_FILE)).mode & 0o777).toBe(0o600);

    const process = await sidecar(dir, line);
    expect(logged(process, "Adopted recorded lease")[0]).toMatchObject({ leaseId: recorded[0].leaseId, generatedBy: "init" });
    expect(server.state.stats.count(GENERATE_ROUTE)).toBe(generated + 1);
    expect(activeLeases().length).toBe(leasesBefore + 1);
    expect(await readAsUser(cluster, username, password)).toBe(2);

    await stop(process);
    expect(await generatedRoles(cluster.sql)).not.toContain(username);
  }, 60_000);

  test("renewal errors are recovered before expiry", async () => {
    const dir = caseDir();
    const process = await sidecar(dir, "engine=postgres-prod role=readonly ttl=6s -> db.json", { RETRY_MAX_ATTEMPTS: "2" });
    const file = join(dir, "db.json");

    // The lease routes return 503 for the next 4 requests, so the first renewal and its retry fail.
    server.state.faults.add({ pathPrefix: "/v1/dynamic/leases", status: 503, code: "service_unavailable", count: 4, delayMs: 0 });
    await process.waitForLog("a failed renewal", (line) => line.msg === "Cannot renew lease, retrying", 15_000);
    await process.waitForLog("a recovery", (line) => line.msg === "Renewed lease" || line.msg === "Replaced lease: new credential written", 15_000);
    server.state.faults.clear();

    expect(logged(process, "Cannot generate a lease: the credential file is stale, retrying")).toHaveLength(0);
    const { username, password } = credential(file);
    expect(await readAsUser(cluster, username, password)).toBe(2);
    expect(metricValue(await scrape(process), "scaivault_lease_failures_total", { operation: "renew" })).toBeGreaterThanOrEqual(1);

    await stop(process);
  }, 60_000);

  test("100 start-stop cycles leave nothing", async () => {
    const dir = caseDir();
    const rolesBefore = await generatedRoles(cluster.sql);
    const leasesBefore = activeLeases().length;
    let lastUser = "";

    for (let cycle = 0; cycle < 100; cycle++) {
      const process = await sidecar(dir, "engine=postgres-prod role=readonly ttl=1h -> db.json", { LOG_LEVEL: "info" });
      const user = credential(join(dir, "db.json")).username;
      expect(user).not.toBe(lastUser);
      lastUser = user;
      const exit = await stop(process);
      expect(exit.code).toBe(0);
    }

    expect(await generatedRoles(cluster.sql)).toEqual(rolesBefore);
    expect(activeLeases().length).toBe(leasesBefore);
  }, 240_000);

  test("output holds no password or token", () => {
    const text = outputs.join("\n");
    expect(text).toContain("Generated lease: credential written");
    for (const value of sensitive) expect(text).not.toContain(value);
  });
});

/** Sidecar and init processes with the dev server's `static` plugin: no PostgreSQL needed. */
describe("dynamic leases as processes", () => {
  let server: DevServer;
  let scratch: string;
  let caseNumber = 0;
  const outputs: string[] = [];
  const running: SidecarProcess[] = [];

  beforeAll(async () => {
    configureLogging({ level: "warn" });
    server = await startDevServer({
      port: 0,
      rateLimits: false,
      config: { engines: { db: { plugin: "static", max_ttl: "1h", data: { host: "db.example", port: 5432 }, roles: { writer: { default_ttl: "1h" } } } } },
    });
    scratch = mkdtempSync(join(tmpdir(), "leases-proc-"));
  });

  afterEach(async () => {
    for (const process of running.splice(0)) outputs.push((await process.stop(), process.stderr()));
  });

  afterAll(async () => {
    await server?.stop();
    rmSync(scratch, { recursive: true, force: true });
  });

  function env(dir: string, extra: Record<string, string> = {}): Record<string, string> {
    return { SCAIVAULT_URL: server.url, SCAIVAULT_TOKEN: server.rootToken, OUTPUT_DIRS: dir, DYNAMIC: "engine=db role=writer -> db.json", EVENTS: "false", ...extra };
  }

  function caseDir(): string {
    const dir = join(scratch, `case-${++caseNumber}`);
    mkdirSync(dir, { recursive: true });
    return dir;
  }

  async function sidecar(dir: string, extra: Record<string, string> = {}): Promise<SidecarProcess> {
    const started = await startSidecar(env(dir, extra));
    running.push(started);
    return started;
  }

  test("DYNAMIC-only sidecar becomes ready", async () => {
    const dir = caseDir();
    const process = await sidecar(dir, { START_JITTER: "30s" });
    const ready = await waitFor("/readyz 200", async () => {
      const result = await readyz(process);
      return result.status === 200 ? result : undefined;
    });
    expect(ready.body).toMatchObject({ leasesReady: true });
    expect(process.lines.some((line) => String(line.msg).startsWith("Files exist already"))).toBe(false);
  }, 60_000);

  test("second sidecar on directory fails", async () => {
    const dir = caseDir();
    const first = await sidecar(dir);
    await first.waitForLog("the leases", (line) => line.msg === "Leases ready");
    const leaseId = JSON.parse(readFileSync(join(dir, LEASE_STATE_FILE), "utf8")).leases[0].leaseId;

    const second = await sidecar(dir);
    const exit = await second.exited;
    expect(exit.code).toBe(9);
    expect(second.stderr()).toContain(`pid ${first.child.pid}`);
    expect(second.stderr()).toContain(LEASE_STATE_FILE);
    expect(dynamicStore(server.state).list().map((lease) => lease.leaseId)).toContain(leaseId);
    expect(JSON.parse(readFileSync(join(dir, LEASE_STATE_FILE), "utf8")).leases[0].leaseId).toBe(leaseId);
  }, 60_000);

  test("SIGTERM during generate revokes lease", async () => {
    const dir = caseDir();
    const before = dynamicStore(server.state).list().length;
    server.state.faults.add({ method: "POST", pathPrefix: "/v1/dynamic/engines/db/creds", count: 1, delayMs: 1500 });
    const process = await sidecar(dir);
    await process.waitForLog("the leases starting", (line) => line.msg === "Starting leases");
    await Bun.sleep(300);

    running.splice(running.indexOf(process), 1);
    const exit = await process.stop();
    outputs.push(process.stderr());
    server.state.faults.clear();
    expect(exit.signal).toBeNull();
    expect(dynamicStore(server.state).list().length).toBe(before);
  }, 60_000);

  test("init fails without state file", async () => {
    const dir = caseDir();
    mkdirSync(join(dir, LEASE_STATE_FILE));
    const before = dynamicStore(server.state).list().length;

    const result = await runCli(["init"], env(dir));
    outputs.push(result.stderr);
    expect(result.code).toBe(9);
    expect(existsSync(join(dir, "db.json"))).toBe(false);
    expect(dynamicStore(server.state).list().length).toBe(before);
  }, 60_000);

  test("state file rejected as target", async () => {
    const dir = caseDir();
    const result = await runCli(["init"], env(dir, { DYNAMIC: `engine=db role=writer -> ${LEASE_STATE_FILE}` }));
    outputs.push(result.stderr);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain("lease state file");
  }, 60_000);

  test("process output has no token", () => {
    expect(outputs.length).toBeGreaterThan(0);
    for (const output of outputs) expect(output).not.toContain(server.rootToken);
  });
});
