/**
 * The sidecar's refresh in process, against the dev server on 127.0.0.1 and real files: change
 * detection by content, incomplete refreshes, bad data and failing writes.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { loadSidecarConfig } from "../src/config.ts";
import { connect } from "../src/connect.ts";
import { startDevServer, type DevServer } from "../src/dev/server.ts";
import { configureLogging } from "../src/log.ts";
import { Reloader } from "../src/reload.ts";
import { Sidecar } from "../src/sidecar.ts";
import { createSidecarMetrics } from "../src/sidecar-metrics.ts";
import { metricValue } from "./helpers/sidecar.ts";

const ROOT_TOKEN = `svt_root_${randomBytes(12).toString("hex")}`;
const SECRET_MARK = `SECRETVALUE${randomBytes(4).toString("hex")}`;
let dev: DevServer;
let throttled: DevServer;
let work: string;
const logs: string[] = [];

beforeAll(async () => {
  configureLogging({ level: "debug", format: "json", write: (line) => logs.push(line) });
  work = mkdtempSync(join(tmpdir(), "sidecar-refresh-"));
  dev = await startDevServer({ port: 0, rootToken: ROOT_TOKEN, rateLimits: false });
  const seed = Object.fromEntries(Array.from({ length: 12 }, (_, index) => [`many/s${index}`, { v: String(index) }]));
  throttled = await startDevServer({ port: 0, rootToken: ROOT_TOKEN, rateLimits: { read: 5 }, seed });
});

afterAll(async () => {
  await dev.stop();
  await throttled.stop();
  rmSync(work, { recursive: true, force: true });
  configureLogging({ level: "silent" });
});

function sidecarFor(name: string, watch: string, extra: Record<string, string> = {}, server = dev): { sidecar: Sidecar; out: string; metrics: ReturnType<typeof createSidecarMetrics> } {
  const out = join(work, name);
  mkdirSync(out, { recursive: true });
  const env = { SCAIVAULT_URL: server.url, SCAIVAULT_TOKEN: ROOT_TOKEN, OUTPUT_DIRS: out, WATCH_PATHS: watch, HEALTH_ADDR: "off", ...extra };
  const config = loadSidecarConfig({}, env);
  const metrics = createSidecarMetrics();
  const client = connect(config.connection);
  const sidecar = new Sidecar({ config, client, metrics, reloader: new Reloader({ signal: "SIGHUP" }) });
  return { sidecar, out, metrics };
}

async function put(path: string, data: Record<string, unknown>): Promise<number> {
  const response = await fetch(`${dev.url}/v1/secrets/${path}`, {
    method: "PUT",
    headers: { authorization: `Bearer ${ROOT_TOKEN}`, "content-type": "application/json" },
    body: JSON.stringify({ data, secret_type: "json" }),
  });
  expect(response.ok).toBe(true);
  return Number(((await response.json()) as { version: number }).version);
}

async function remove(path: string): Promise<void> {
  const response = await fetch(`${dev.url}/v1/secrets/${path}`, { method: "DELETE", headers: { authorization: `Bearer ${ROOT_TOKEN}` } });
  expect(response.ok).toBe(true);
}

test("sidecar delivers a secret deleted and created again between two reads", async () => {
  for (const trigger of ["event", "interval"] as const) {
    const path = `again/${trigger}`;
    const { sidecar, out } = sidecarFor(`again-${trigger}`, `${path} -> db.json`);
    await put(path, { rev: "old", password: `${SECRET_MARK}-a` });
    expect((await sidecar.refresh(undefined, "start")).ok).toBe(true);

    await remove(path);
    expect(await put(path, { rev: "new", password: `${SECRET_MARK}-b` })).toBe(1);
    const outcome = await sidecar.refresh(trigger === "event" ? [path] : undefined, trigger);

    expect(outcome.changedPaths).toEqual([path]);
    expect(JSON.parse(readFileSync(join(out, "db.json"), "utf8")).rev).toBe("new");
  }
});

test("sidecar corrects a file edited on disk at the next full refresh", async () => {
  const { sidecar, out } = sidecarFor("edited", "edited/db -> db.json");
  await put("edited/db", { rev: "1", password: `${SECRET_MARK}-c` });
  await sidecar.refresh(undefined, "start");
  const file = join(out, "db.json");
  const good = readFileSync(file, "utf8");

  writeFileSync(file, "tampered");
  expect((await sidecar.refresh(["edited/db"], "event")).changedFiles).toEqual([]);
  expect((await sidecar.refresh(undefined, "interval")).changedFiles).toEqual([file]);
  expect(readFileSync(file, "utf8")).toBe(good);
});

test("sidecar counts a throttled batch as incomplete and reads the pending paths again", async () => {
  const paths = Array.from({ length: 12 }, (_, index) => `many/s${index}`);
  const watch = paths.map((path, index) => `${path} -> s${index}.json`).join("\n");
  const { sidecar, metrics } = sidecarFor("throttled", watch, { RETRY_MAX_ATTEMPTS: "1" }, throttled);
  const before = logs.length;

  const first = await sidecar.refresh(undefined, "start");
  expect(first.ok).toBe(false);
  expect(first.pending.length).toBe(7);
  expect(first.pending.every((issue) => issue.kind === "rate_limited")).toBe(true);
  expect(sidecar.isReady).toBe(false);
  expect(sidecar.readiness().details.lastSync).toBeNull();
  expect(sidecar.readiness().details.pendingCount).toBe(7);
  expect(metricValue(metrics.registry.render(), "scaivault_sidecar_refreshes_total", { trigger: "start", result: "incomplete" })).toBe(1);
  // One aggregated warning, not one per path.
  expect(logs.slice(before).filter((line) => line.includes("rate_limited") && line.includes('"level":"warn"')).length).toBeLessThanOrEqual(2);

  // Five reads a minute: each retry reads only what is still pending, five at a time.
  throttled.state.limiter.reset();
  const second = await sidecar.refresh(first.pending.map((issue) => issue.path), "retry");
  expect(second.pending.length).toBe(2);
  expect(sidecar.isReady).toBe(false);
  throttled.state.limiter.reset();
  expect((await sidecar.refresh(second.pending.map((issue) => issue.path), "retry")).ok).toBe(true);
  expect(sidecar.isReady).toBe(true);
  expect(sidecar.readiness().details.pendingCount).toBe(0);
});

test("sidecar settles data it cannot render", async () => {
  const { sidecar, out, metrics } = sidecarFor("baddata", "bad/env -> app.env format=env\nbad/b64 -> key.bin field=key encoding=base64");
  await put("bad/env", { user: "app", pass: `${SECRET_MARK}-d` });
  await put("bad/b64", { key: Buffer.from("hello").toString("base64") });
  expect((await sidecar.refresh(undefined, "start")).ok).toBe(true);
  const envBefore = readFileSync(join(out, "app.env"), "utf8");
  const binBefore = readFileSync(join(out, "key.bin"));

  await put("bad/env", { path: "/evil", user: "app" });
  await put("bad/b64", { key: "***not base64***" });
  for (let index = 0; index < 3; index++) {
    const outcome = await sidecar.refresh(undefined, "interval");
    expect(outcome.ok).toBe(true);
    expect(outcome.unavailable.map((issue) => issue.kind)).toEqual(["render", "render"]);
  }

  expect(readFileSync(join(out, "app.env"), "utf8")).toBe(envBefore);
  expect(readFileSync(join(out, "key.bin"))).toEqual(binBefore);
  expect(metricValue(metrics.registry.render(), "scaivault_sidecar_errors_total", { kind: "render" })).toBe(2);
  expect(sidecar.readiness().details.unavailableCount).toBe(2);
  expect(sidecar.readiness().ready).toBe(true);
});

test("sidecar is not complete while a file cannot be written", async () => {
  const { sidecar, out } = sidecarFor("nowrite", "nowrite/db -> db.json\nnowrite/ok -> ok.json", { READY_MAX_STALENESS: "1s" });
  await put("nowrite/db", { rev: "1" });
  await put("nowrite/ok", { rev: "1" });
  expect((await sidecar.refresh(undefined, "start")).ok).toBe(true);
  const lastSync = sidecar.readiness().details.lastSync;

  rmSync(join(out, "db.json"));
  mkdirSync(join(out, "db.json"));
  await Bun.sleep(1_200);
  const outcome = await sidecar.refresh(undefined, "interval");

  expect(outcome.ok).toBe(false);
  expect(outcome.pending).toEqual([{ path: "nowrite/db", kind: "write" }]);
  expect(sidecar.readiness().details.lastSync).toBe(lastSync);
  expect(sidecar.readiness().ready).toBe(false);

  rmSync(join(out, "db.json"), { recursive: true });
  expect((await sidecar.refresh(["nowrite/db"], "retry")).ok).toBe(true);
  expect(sidecar.readiness().ready).toBe(true);
});

test("sidecar refresh logs hold no secret value or token", () => {
  const text = logs.join("\n");
  expect(text).not.toContain(SECRET_MARK);
  expect(text).not.toContain(ROOT_TOKEN);
});
