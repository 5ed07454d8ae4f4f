/**
 * LeaseManager in process against the real dev server (static plugin) on 127.0.0.1, with real
 * files in a temporary output directory. Leases last a few seconds so that renewals, maximum
 * lifetimes and expiries happen within a test.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { staticTokenSource } from "../src/auth.ts";
import { ScaiVaultClient } from "../src/client.ts";
import type { OutputConfig } from "../src/config.ts";
import { dynamicStore } from "../src/dev/dynamic.ts";
import { startDevServer, type DevServer } from "../src/dev/server.ts";
import { AgentError } from "../src/errors.ts";
import { createLeaseMetrics } from "../src/lease-metrics.ts";
import { LEASE_STATE_FILE, LeaseStore } from "../src/lease-store.ts";
import { atMaxLifetime, isShortGrant, nextActionAt, safetyMarginMs } from "../src/lease-timing.ts";
import { LeaseManager, type LeaseManagerOptions } from "../src/leases.ts";
import { configureLogging } from "../src/log.ts";
import { parseDynamicMappings } from "../src/mapping.ts";

const logs: string[] = [];
const metricTexts: string[] = [];
const secrets: string[] = [];
const managers: LeaseManager[] = [];
let server: DevServer;
let scratch: string;
let caseNumber = 0;

beforeAll(async () => {
  configureLogging({ level: "debug", format: "json", write: (line) => logs.push(line) });
  server = await startDevServer({
    port: 0,
    rateLimits: false,
    config: {
      engines: {
        db: {
          plugin: "static",
          max_ttl: "1h",
          data: { host: "db.example", port: 5432 },
          roles: {
            reader: { default_ttl: "3s" },
            capped: { default_ttl: "2s", max_ttl: "4s" },
            writer: { default_ttl: "1h" },
          },
        },
      },
    },
  });
  secrets.push(server.rootToken);
  scratch = mkdtempSync(join(tmpdir(), "leases-"));
});

afterEach(async () => {
  metricTexts.push(...managers.map((leases) => leases.metrics.registry.render()));
  await Promise.all(managers.splice(0).map((leases) => leases.stop(5000)));
});

afterAll(async () => {
  await server?.stop();
  rmSync(scratch, { recursive: true, force: true });
});

function outputDir(): { dir: string; output: OutputConfig } {
  const dir = join(scratch, `case-${++caseNumber}`);
  return { dir, output: { layout: { dirs: [dir], prefix: "" }, fileMode: 0o640 } };
}

function client(): ScaiVaultClient {
  return new ScaiVaultClient({ baseUrl: server.url, tokens: staticTokenSource(server.rootToken), maxAttempts: 2, backoff: { baseMs: 50, maxMs: 200 } });
}

function manager(lines: string, output: OutputConfig, extra: Partial<LeaseManagerOptions> = {}): LeaseManager {
  const created = new LeaseManager({
    client: client(),
    mappings: parseDynamicMappings(lines),
    output,
    owner: "sidecar",
    revokeGraceMs: 200,
    changeWindowMs: 100,
    ...extra,
  });
  managers.push(created);
  return created;
}

/** Releases the lock as a crash would, so that a second manager in this process can take the state file. */
function crash(leases: LeaseManager): void {
  leases.store.unlock();
}

function activeLeases(): string[] {
  return dynamicStore(server.state).list().map((lease) => lease.leaseId);
}

function readCredential(file: string): Record<string, unknown> {
  const data = JSON.parse(readFileSync(file, "utf8"));
  secrets.push(String(data.password));
  return data;
}

describe("lease timing", () => {
  test("nextActionAt stays within 2/3 plus or minus 5 percent", () => {
    const grant = { grantedAt: 1000, durationMs: 60_000 };
    expect(nextActionAt(grant, () => 0)).toBeCloseTo(1000 + 60_000 * (2 / 3 - 0.05));
    expect(nextActionAt(grant, () => 0.5)).toBeCloseTo(1000 + 40_000);
    expect(nextActionAt(grant, () => 0.999999)).toBeLessThan(1000 + 60_000 * (2 / 3 + 0.05));
  });

  test("isShortGrant allows whole-second rounding", () => {
    expect(isShortGrant(7199_000, 7200_000)).toBe(false);
    expect(isShortGrant(3600_000, 7200_000)).toBe(true);
    expect(isShortGrant(2000, 2000)).toBe(false);
    expect(isShortGrant(1000, 2000)).toBe(true);
  });

  test("atMaxLifetime at the maximum expiry or when not renewable", () => {
    expect(atMaxLifetime({ grantedAt: 0, durationMs: 1, expiresAt: 10_000, maxExpiresAt: 10_500, renewable: true })).toBe(true);
    expect(atMaxLifetime({ grantedAt: 0, durationMs: 1, expiresAt: 10_000, maxExpiresAt: 20_000, renewable: true })).toBe(false);
    expect(atMaxLifetime({ grantedAt: 0, durationMs: 1, expiresAt: 10_000, renewable: false })).toBe(true);
  });

  test("safetyMarginMs is 15 percent up to five minutes", () => {
    expect(safetyMarginMs(6000)).toBe(900);
    expect(safetyMarginMs(2 * 3_600_000)).toBe(300_000);
  });
});

describe("LeaseManager", () => {
  test("start writes file and records lease", async () => {
    const { dir, output } = outputDir();
    const leases = manager("engine=db role=writer -> creds/db.json", output);

    const written = await leases.start();
    expect(written).toEqual([join(dir, "creds/db.json")]);
    expect(leases.ready).toBe(true);

    const credential = readCredential(join(dir, "creds/db.json"));
    expect(credential.username).toStartWith("v_writer_");
    expect(statSync(join(dir, "creds/db.json")).mode & 0o777).toBe(0o640);

    const stateFile = join(dir, LEASE_STATE_FILE);
    expect(statSync(stateFile).mode & 0o777).toBe(0o600);
    const state = readFileSync(stateFile, "utf8");
    expect(state).not.toContain(String(credential.password));
    const recorded = JSON.parse(state).leases;
    expect(recorded).toHaveLength(1);
    expect(recorded[0]).toMatchObject({ engine: "db", role: "writer", file: join(dir, "creds/db.json"), state: "active", generatedBy: "sidecar" });
    expect(activeLeases()).toContain(recorded[0].leaseId);
  });

  test("renewal changes neither file nor credential", async () => {
    const { dir, output } = outputDir();
    const changes: string[][] = [];
    const leases = manager("engine=db role=reader ttl=3s -> db.json", output, { onCredentialsChanged: (files) => void changes.push(files) });
    await leases.start();
    const file = join(dir, "db.json");
    const before = statSync(file);
    const content = readFileSync(file, "utf8");
    const leaseId = leases.leases()[0]!.leaseId;

    await Bun.sleep(4500);

    expect(leases.metrics.renewals.get()).toBeGreaterThanOrEqual(2);
    expect(leases.leases()[0]!.leaseId).toBe(leaseId);
    expect(activeLeases()).toContain(leaseId);
    expect(readFileSync(file, "utf8")).toBe(content);
    expect(statSync(file).mtimeMs).toBe(before.mtimeMs);
    expect(statSync(file).ino).toBe(before.ino);
    expect(changes).toEqual([]);
  }, 20_000);

  test("max_ttl replaces lease, reloads once", async () => {
    const { dir, output } = outputDir();
    const changes: string[][] = [];
    const leases = manager("engine=db role=capped -> db.json", output, { onCredentialsChanged: (files) => void changes.push(files) });
    await leases.start();
    const file = join(dir, "db.json");
    const first = readCredential(file);
    const firstLease = leases.leases()[0]!.leaseId;

    // Max 4 s: renewals at about 1.3 s and 2.7 s, the second one capped, the replacement at about 3.5 s.
    const deadline = Date.now() + 8000;
    while (changes.length === 0 && Date.now() < deadline) await Bun.sleep(100);
    await Bun.sleep(400);

    expect(changes).toEqual([[file]]);
    const second = readCredential(file);
    expect(second.username).not.toBe(first.username);
    expect(leases.leases().map((lease) => lease.leaseId)).not.toContain(firstLease);
    expect(activeLeases()).not.toContain(firstLease);
    expect(leases.metrics.replacements.get({ reason: "max_ttl" })).toBe(1);
    expect(leases.metrics.revocations.get({ result: "revoked" })).toBe(1);
  }, 20_000);

  test("renewal failures recover before expiry", async () => {
    const { output } = outputDir();
    const leases = manager("engine=db role=reader ttl=9s -> db.json", output);
    await leases.start();
    const first = leases.leases()[0]!;

    // The lease routes fail for a while: 4 requests, at 2 attempts per renewal call.
    server.state.faults.add({ pathPrefix: "/v1/dynamic/leases", status: 503, code: "service_unavailable", count: 4, delayMs: 0 });
    const deadline = Date.now() + 12_000;
    while (leases.metrics.renewals.get() + leases.metrics.replacements.get({ reason: "renew_failed" }) === 0 && Date.now() < deadline) {
      expect(leases.ready).toBe(true);
      await Bun.sleep(100);
    }
    server.state.faults.clear();

    expect(leases.metrics.failures.get({ operation: "renew" })).toBeGreaterThanOrEqual(1);
    expect(logs.some((line) => line.includes("Cannot renew lease") && line.includes(first.leaseId))).toBe(true);
    expect(leases.metrics.renewals.get() + leases.metrics.replacements.get({ reason: "renew_failed" })).toBeGreaterThanOrEqual(1);
    expect(leases.ready).toBe(true);
    expect(first.expiresAt).toBeGreaterThan(Date.now() - 1000);
    expect(activeLeases()).toContain(leases.leases()[0]!.leaseId);
  }, 20_000);

  test("lost lease is replaced", async () => {
    const { dir, output } = outputDir();
    const changes: string[][] = [];
    const leases = manager("engine=db role=reader ttl=3s -> db.json", output, { onCredentialsChanged: (files) => void changes.push(files) });
    await leases.start();
    const leaseId = leases.leases()[0]!.leaseId;
    await dynamicStore(server.state).revoke(leaseId, { id: "root", type: "root", tokenExpiresAt: null });

    await Bun.sleep(2600);
    expect(leases.metrics.replacements.get({ reason: "lost" })).toBe(1);
    expect(changes).toEqual([[join(dir, "db.json")]]);
    expect(activeLeases()).toContain(leases.leases()[0]!.leaseId);
  }, 20_000);

  test("stop revokes every lease", async () => {
    const { dir, output } = outputDir();
    const leases = manager("engine=db role=writer -> a.json\nengine=db role=reader -> b.json", output);
    await leases.start();
    const ids = leases.leases().map((lease) => lease.leaseId);
    expect(ids).toHaveLength(2);

    const summary = await leases.stop();
    expect(summary.revoked.sort()).toEqual([...ids].sort());
    expect(summary.failed).toEqual([]);
    for (const id of ids) expect(activeLeases()).not.toContain(id);
    expect(JSON.parse(readFileSync(join(dir, LEASE_STATE_FILE), "utf8")).leases).toEqual([]);
  });

  test("stop counts 404 as revoked", async () => {
    const { output } = outputDir();
    const leases = manager("engine=db role=writer -> a.json", output);
    await leases.start();
    const leaseId = leases.leases()[0]!.leaseId;
    await dynamicStore(server.state).revoke(leaseId, { id: "root", type: "root", tokenExpiresAt: null });

    const summary = await leases.stop();
    expect(summary).toEqual({ revoked: [leaseId], failed: [] });
    expect(leases.metrics.revocations.get({ result: "gone" })).toBe(1);
  });

  test("restart adopts recorded leases and generates none", async () => {
    const { dir, output } = outputDir();
    const first = manager("engine=db role=writer -> a.json", output);
    await first.start();
    crash(first);
    const leaseId = first.leases()[0]!.leaseId;
    const content = readFileSync(join(dir, "a.json"), "utf8");

    const generatesBefore = server.state.stats.count("POST /v1/dynamic/engines/{engine}/creds/{role}");
    const second = manager("engine=db role=writer -> a.json", output);
    expect(await second.start()).toEqual([]);

    expect(second.leases()[0]!.leaseId).toBe(leaseId);
    expect(server.state.stats.count("POST /v1/dynamic/engines/{engine}/creds/{role}")).toBe(generatesBefore);
    expect(readFileSync(join(dir, "a.json"), "utf8")).toBe(content);
  });

  test("restart replaces lease of changed file", async () => {
    const { dir, output } = outputDir();
    const first = manager("engine=db role=writer -> a.json", output);
    await first.start();
    crash(first);
    const leaseId = first.leases()[0]!.leaseId;
    writeFileSync(join(dir, "a.json"), "{}\n");

    const second = manager("engine=db role=writer -> a.json", output);
    expect(await second.start()).toEqual([join(dir, "a.json")]);
    expect(second.leases()[0]!.leaseId).not.toBe(leaseId);

    await Bun.sleep(300);
    expect(activeLeases()).not.toContain(leaseId);
    expect(second.leases().map((lease) => lease.leaseId)).not.toContain(leaseId);
  });

  test("restart after crash adopts the written lease", async () => {
    const { dir, output } = outputDir();
    const first = manager("engine=db role=writer -> a.json", output);
    await first.start();
    crash(first);
    const written = first.leases()[0]!;

    // A crash after recording a second lease but before writing its file leaves two active records.
    const root = { id: "root", type: "root" as const, tokenExpiresAt: null };
    const unwritten = await dynamicStore(server.state).generate("db", "writer", undefined, root);
    const stateFile = join(dir, LEASE_STATE_FILE);
    const state = JSON.parse(readFileSync(stateFile, "utf8"));
    state.leases.push({ ...state.leases[0], leaseId: unwritten.lease_id, fileSha256: "0".repeat(64) });
    writeFileSync(stateFile, JSON.stringify(state));

    const second = manager("engine=db role=writer -> a.json", output);
    expect(await second.start()).toEqual([]);
    expect(second.leases()[0]!.leaseId).toBe(written.leaseId);

    await Bun.sleep(300);
    expect(activeLeases()).not.toContain(unwritten.lease_id);
    expect(activeLeases()).toContain(written.leaseId);
  });

  test("restart leaves unconfigured leases", async () => {
    const { dir, output } = outputDir();
    const first = manager("engine=db role=writer -> a.json\nengine=db role=writer -> b.json", output);
    await first.start();
    crash(first);
    const other = first.leases().find((lease) => lease.file === join(dir, "b.json"))!.leaseId;

    // An entry written into the file by hand, for no configured line, is not revoked either.
    const root = { id: "root", type: "root" as const, tokenExpiresAt: null };
    const planted = await dynamicStore(server.state).generate("db", "writer", undefined, root);
    const stateFile = join(dir, LEASE_STATE_FILE);
    const state = JSON.parse(readFileSync(stateFile, "utf8"));
    state.leases.push({ ...state.leases[1], leaseId: planted.lease_id, file: join(dir, "elsewhere.json") });
    writeFileSync(stateFile, JSON.stringify(state));

    const second = manager("engine=db role=writer -> a.json", output);
    await second.start();
    await Bun.sleep(300);
    expect(activeLeases()).toContain(other);
    expect(activeLeases()).toContain(planted.lease_id);
    expect(second.leases().map((lease) => lease.leaseId)).not.toContain(other);
    expect(logs.filter((line) => line.includes("matches no DYNAMIC line")).join("\n")).toContain(other);
    const kept = JSON.parse(readFileSync(stateFile, "utf8")).leases.map((lease: { leaseId: string }) => lease.leaseId);
    expect(kept).toContain(planted.lease_id);

    await second.stop();
    expect(activeLeases()).toContain(planted.lease_id);
    await dynamicStore(server.state).revoke(planted.lease_id, root);
    await dynamicStore(server.state).revoke(other, root);
  });

  test("sidecar adopts the init lease", async () => {
    const { output } = outputDir();
    const init = manager("engine=db role=writer -> a.json", output, { owner: "init", renew: false });
    await init.start();
    const leaseId = init.leases()[0]!.leaseId;
    managers.splice(managers.indexOf(init), 1);

    const sidecar = manager("engine=db role=writer -> a.json", output);
    expect(await sidecar.start()).toEqual([]);
    expect(sidecar.leases()[0]).toMatchObject({ leaseId, generatedBy: "init" });
  });

  test("second state file holder fails", async () => {
    const { dir, output } = outputDir();
    const first = manager("engine=db role=writer -> a.json", output);
    await first.start();
    const leaseId = first.leases()[0]!.leaseId;

    const second = manager("engine=db role=writer -> a.json", output);
    const error = await second.start().then(() => undefined, (caught) => caught);
    expect(error).toBeInstanceOf(AgentError);
    expect((error as AgentError).code).toBe("lease");
    expect((error as AgentError).message).toContain(join(dir, LEASE_STATE_FILE));
    expect((error as AgentError).message).toContain(`pid ${process.pid}`);

    await second.stop();
    expect(activeLeases()).toContain(leaseId);
    expect(JSON.parse(readFileSync(join(dir, LEASE_STATE_FILE), "utf8")).leases.map((lease: { leaseId: string }) => lease.leaseId)).toEqual([leaseId]);
  });

  test("stale lock is taken over", async () => {
    const { dir, output } = outputDir();
    mkdirSync(dir, { recursive: true });
    // Our own pid, but another start time: the process that wrote it has ended.
    writeFileSync(join(dir, `${LEASE_STATE_FILE}.lock`), JSON.stringify({ holder: "x", pid: process.pid, startTime: "1", owner: "sidecar" }));
    const leases = manager("engine=db role=writer -> a.json", output);
    expect(await leases.start()).toEqual([join(dir, "a.json")]);
    await leases.stop();
    expect(existsSync(join(dir, `${LEASE_STATE_FILE}.lock`))).toBe(false);
  });

  test("stop revokes in-flight generate", async () => {
    const { dir, output } = outputDir();
    const before = activeLeases().length;
    server.state.faults.add({ method: "POST", pathPrefix: "/v1/dynamic/engines/db/creds", count: 1, delayMs: 800 });
    const leases = manager("engine=db role=writer -> a.json", output);
    const run = new AbortController();

    const started = leases.start(run.signal).then(() => undefined, (caught) => caught);
    await Bun.sleep(200);
    run.abort(new Error("SIGTERM"));
    const summary = await leases.stop(5000);
    expect(await started).toBeDefined();
    expect(summary.revoked).toHaveLength(1);
    expect(activeLeases().length).toBe(before);
    expect(existsSync(join(dir, "a.json"))).toBe(false);
  });

  test("late lease after stop revoked", async () => {
    const { output } = outputDir();
    const before = activeLeases().length;
    server.state.faults.add({ method: "POST", pathPrefix: "/v1/dynamic/engines/db/creds", count: 1, delayMs: 1500 });
    const leases = manager("engine=db role=writer -> a.json", output);
    const run = new AbortController();

    const started = leases.start(run.signal).then(() => undefined, (caught) => caught);
    await Bun.sleep(200);
    run.abort(new Error("SIGTERM"));
    await leases.stop(600);
    expect(await started).toBeDefined();

    const deadline = Date.now() + 5000;
    while (activeLeases().length > before && Date.now() < deadline) await Bun.sleep(50);
    expect(activeLeases().length).toBe(before);
  });

  test("adoption with other options regenerates", async () => {
    const { dir, output } = outputDir();
    const init = manager("engine=db role=writer ttl=1h -> db.json", output, { owner: "init", renew: false });
    await init.start();
    const initLease = init.leases()[0]!.leaseId;
    managers.splice(managers.indexOf(init), 1);

    const sidecar = manager("engine=db role=writer ttl=6s -> db.json format=env mode=0400", output);
    expect(await sidecar.start()).toEqual([join(dir, "db.json")]);
    const current = sidecar.leases()[0]!;
    expect(current.leaseId).not.toBe(initLease);
    expect(current.incrementMs).toBe(6000);
    expect(statSync(join(dir, "db.json")).mode & 0o777).toBe(0o400);
    expect(readFileSync(join(dir, "db.json"), "utf8")).toMatch(/^[A-Za-z_]+=/m);
    const warning = logs.find((line) => line.includes("other line options") && line.includes(initLease))!;
    expect(warning).toContain("format json -> env");
    expect(warning).toContain("mode 0640 -> 0400");

    await Bun.sleep(400);
    expect(activeLeases()).not.toContain(initLease);
  });

  test("adoption renews with line ttl", async () => {
    const { output } = outputDir();
    const init = manager("engine=db role=writer ttl=30m -> db.json", output, { owner: "init", renew: false });
    await init.start();
    const initLease = init.leases()[0]!.leaseId;
    managers.splice(managers.indexOf(init), 1);

    const sidecar = manager("engine=db role=writer ttl=6s -> db.json", output);
    expect(await sidecar.start()).toEqual([]);
    const deadline = Date.now() + 3000;
    while (sidecar.metrics.renewals.get() === 0 && Date.now() < deadline) await Bun.sleep(50);
    const lease = sidecar.leases()[0]!;
    expect(lease.leaseId).toBe(initLease);
    expect(lease.durationMs).toBeLessThanOrEqual(6000);
    expect(lease.incrementMs).toBe(6000);
  });

  test("restart keeps recorded revoke time", async () => {
    const { dir, output } = outputDir();
    const first = manager("engine=db role=writer -> a.json", output);
    await first.start();
    crash(first);

    const root = { id: "root", type: "root" as const, tokenExpiresAt: null };
    const replaced = await dynamicStore(server.state).generate("db", "writer", undefined, root);
    const stateFile = join(dir, LEASE_STATE_FILE);
    const state = JSON.parse(readFileSync(stateFile, "utf8"));
    const revokeAt = new Date(Date.now() + 1500).toISOString();
    state.leases.push({ ...state.leases[0], leaseId: replaced.lease_id, state: "retiring", revokeAt });
    writeFileSync(stateFile, JSON.stringify(state));

    const second = manager("engine=db role=writer -> a.json", output);
    await second.start();
    await Bun.sleep(500);
    expect(activeLeases()).toContain(replaced.lease_id);
    const deadline = Date.now() + 5000;
    while (activeLeases().includes(replaced.lease_id) && Date.now() < deadline) await Bun.sleep(50);
    expect(activeLeases()).not.toContain(replaced.lease_id);
  });

  test("lookup 403 leaves lease alone", async () => {
    const { dir, output } = outputDir();
    const first = manager("engine=db role=writer -> a.json", output);
    await first.start();
    crash(first);
    const leaseId = first.leases()[0]!.leaseId;

    server.state.faults.add({ method: "GET", pathPrefix: "/v1/dynamic/leases/", status: 403, code: "forbidden", count: 1, delayMs: 0 });
    const second = manager("engine=db role=writer -> a.json", output);
    expect(await second.start()).toEqual([join(dir, "a.json")]);
    expect(second.leases()[0]!.leaseId).not.toBe(leaseId);
    await second.stop();
    expect(activeLeases()).toContain(leaseId);
  });

  test("simultaneous replacements reload once", async () => {
    const { dir, output } = outputDir();
    const changes: string[][] = [];
    const leases = manager("engine=db role=capped -> a.json\nengine=db role=capped -> b.json", output, {
      onCredentialsChanged: (files) => void changes.push(files),
      changeWindowMs: 1000,
      revokeGraceMs: 4000,
      random: () => 0.5,
    });
    await leases.start();

    const deadline = Date.now() + 15_000;
    while (leases.metrics.replacements.get({ reason: "max_ttl" }) < 2 && Date.now() < deadline) await Bun.sleep(50);
    expect(leases.metrics.replacements.get({ reason: "max_ttl" })).toBe(2);
    await Bun.sleep(1300);
    expect(changes).toHaveLength(1);
    expect([...changes[0]!].sort()).toEqual([join(dir, "a.json"), join(dir, "b.json")]);
  }, 30_000);

  test("init fails on unwritable state file", async () => {
    const { dir, output } = outputDir();
    mkdirSync(join(dir, LEASE_STATE_FILE), { recursive: true });
    const before = activeLeases().length;
    const init = manager("engine=db role=writer -> a.json", output, { owner: "init", renew: false });

    const error = await init.start().then(() => undefined, (caught) => caught);
    expect(error).toBeInstanceOf(AgentError);
    expect((error as AgentError).code).toBe("lease");
    expect((error as AgentError).message).toContain(LEASE_STATE_FILE);
    await init.stop();
    expect(existsSync(join(dir, "a.json"))).toBe(false);
    expect(activeLeases().length).toBe(before);
  });

  test("unknown role fails start with the line", async () => {
    const { output } = outputDir();
    const leases = manager("engine=db role=nope -> a.json", output);
    let error: unknown;
    try {
      await leases.start();
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(AgentError);
    expect((error as AgentError).code).toBe("config");
    expect((error as AgentError).message).toContain("DYNAMIC line 1 (engine=db role=nope -> a.json)");
  });

  test("missing field revokes the new lease", async () => {
    const { output } = outputDir();
    const leases = manager("engine=db role=writer -> a.txt field=nope", output);
    const before = activeLeases();

    let error: unknown;
    try {
      await leases.start();
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(AgentError);
    expect((error as AgentError).code).toBe("not_found");
    expect((error as AgentError).message).toContain('field "nope" not found');

    const summary = await leases.stop();
    expect(summary.revoked).toHaveLength(1);
    expect(summary.failed).toEqual([]);
    expect(activeLeases()).toEqual(before);
  });

  test("unreachable server retried in background", async () => {
    const { dir, output } = outputDir();
    const changes: string[][] = [];
    server.state.faults.add({ pathPrefix: "/v1/dynamic/engines", status: 503, code: "service_unavailable", count: 2, delayMs: 0 });
    const leases = manager("engine=db role=writer -> a.json", output, { onCredentialsChanged: (files) => void changes.push(files) });

    expect(await leases.start()).toEqual([]);
    expect(leases.ready).toBe(false);
    const deadline = Date.now() + 5000;
    while (changes.length === 0 && Date.now() < deadline) await Bun.sleep(50);
    expect(leases.ready).toBe(true);
    expect(changes).toEqual([[join(dir, "a.json")]]);
    expect(leases.metrics.generated.get({ reason: "retry" })).toBe(1);
  }, 20_000);

  test("init fails when server unreachable", async () => {
    const { output } = outputDir();
    server.state.faults.add({ pathPrefix: "/v1/dynamic/engines", status: 503, code: "service_unavailable", count: 2, delayMs: 0 });
    const leases = manager("engine=db role=writer -> a.json", output, { owner: "init", renew: false });
    await expect(leases.start()).rejects.toThrow(/Cannot generate lease of DYNAMIC line 1/);
  });

  test("metrics show leases held and seconds to expiry", async () => {
    const { dir, output } = outputDir();
    const metrics = createLeaseMetrics();
    const leases = manager("engine=db role=writer -> a.json", output, { metrics });
    await leases.start();

    const text = metrics.registry.render();
    metricTexts.push(text);
    expect(text).toContain("scaivault_leases_held 1");
    expect(text).toMatch(new RegExp(`scaivault_lease_expiry_seconds\\{file="${join(dir, "a.json")}"\\} 3[0-9]{3}`));
    expect(text).toContain('scaivault_lease_generated_total{reason="start"} 1');
  });

  test("store ignores corrupt state file", async () => {
    const { output } = outputDir();
    const store = new LeaseStore(output);
    await manager("engine=db role=writer -> a.json", output).start();
    writeFileSync(store.path, "not json");

    expect(await store.load()).toEqual([]);
    expect(logs.some((line) => line.includes("Lease state file is not valid JSON"))).toBe(true);
  });
});

describe("lease logs", () => {
  test("logs and metrics hold no secrets", () => {
    const text = [...logs, ...metricTexts].join("\n");
    expect(text).toContain("Generated lease");
    for (const secret of secrets) expect(text).not.toContain(secret);
  });
});
