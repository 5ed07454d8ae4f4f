/**
 * The sidecar as a real child process against the dev server on 127.0.0.1, writing real files
 * and signalling a real application process (tests/fixtures/reload-app.ts).
 */
import { afterAll, afterEach, beforeAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer, Socket, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { startDevServer, type DevServer } from "../src/dev/server.ts";
import { configureLogging } from "../src/log.ts";
import { runCli } from "./helpers/cli.ts";
import { makeJwt, serviceAccountClaims } from "./helpers/jwt.ts";
import { metricValue, readyz, scrape, startApp, startSidecar, waitFor, type AppProcess, type SidecarProcess } from "./helpers/sidecar.ts";

const ROOT_TOKEN = `svt_root_${randomBytes(12).toString("hex")}`;
const SECRET_MARK = "SECRETVALUE";

let dev: DevServer;
let work: string;
const running: Array<SidecarProcess | AppProcess> = [];
/** Everything the sidecars printed or served, scanned for secrets at the end. */
const captured: string[] = [];
/** Every token handed to a sidecar. */
const tokens: string[] = [ROOT_TOKEN];

beforeAll(async () => {
  // The in-process dev server logs every request; only its errors matter here.
  configureLogging({ level: "error" });
  work = mkdtempSync(join(tmpdir(), "sidecar-e2e-"));
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
  await fetch(`${dev.url}/v1/dev/faults`, { method: "DELETE", headers: { authorization: `Bearer ${ROOT_TOKEN}` } });
});

afterAll(async () => {
  await dev.stop();
  rmSync(work, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------

async function api(method: string, path: string, body?: unknown, server: DevServer = dev): Promise<Record<string, unknown>> {
  const response = await fetch(`${server.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${ROOT_TOKEN}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? (JSON.parse(text) as Record<string, unknown>) : {};
}

/** Writes version `rev` of `path`, whose every value names the revision; returns the version. */
async function putRevision(path: string, rev: number, server: DevServer = dev): Promise<number> {
  const secret = `${SECRET_MARK}-${randomBytes(6).toString("hex")}`;
  const data = { rev: String(rev), password: secret, key: `k-${rev}-${secret}` };
  const response = await api("PUT", `/v1/secrets/${path}`, { data, secret_type: "json" }, server);
  return Number(response.version);
}

/** Revision written into a file: `.json` contains the data, `.key` the key field, `.env` REV='n'. */
function revisionOf(file: string, content: string | null): number {
  if (content === null) return -1;
  if (file.endsWith(".json")) return Number(JSON.parse(content).rev);
  if (file.endsWith(".env")) return Number(/^REV='(\d+)'$/m.exec(content)?.[1] ?? -1);
  return Number(/^k-(\d+)-/.exec(content)?.[1] ?? -1);
}

function scenario(name: string): { dir: string; out: string } {
  const dir = join(work, name);
  const out = join(dir, "out");
  mkdirSync(out, { recursive: true });
  return { dir, out };
}

function appName(): string {
  return `svapp${randomBytes(3).toString("hex")}`;
}

function sidecarEnv(out: string, watch: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    SCAIVAULT_URL: dev.url,
    SCAIVAULT_TOKEN: ROOT_TOKEN,
    OUTPUT_DIRS: out,
    WATCH_PATHS: watch,
    START_JITTER: "0s",
    ...extra,
  };
}

async function track<T extends SidecarProcess | AppProcess>(process: Promise<T>): Promise<T> {
  const started = await process;
  running.push(started);
  return started;
}

async function scrapeTracked(sidecar: SidecarProcess): Promise<string> {
  const text = await scrape(sidecar);
  captured.push(text);
  return text;
}

function changedRefreshes(sidecar: SidecarProcess): Array<Record<string, unknown>> {
  return sidecar.lines.filter((line) => line.msg === "Refreshed: files changed");
}

/**
 * Checks the rotation contract on the app's log: no missing, empty or partial read, one signal
 * per refresh that changed files, and at each signal every file at least at the version that
 * refresh wrote.
 */
function expectCompleteAndOneSignalPerRefresh(summary: Record<string, unknown>, app: AppProcess, refreshes: Array<Record<string, unknown>>, fileOf: Record<string, string>): void {
  expect(Number(summary.reads)).toBeGreaterThan(0);
  expect(summary.missing).toBe(0);
  expect(summary.empty).toBe(0);
  expect(summary.partial).toBe(0);

  const signals = app.signals();
  expect(signals.length).toBe(refreshes.length);
  expect(refreshes.every((refresh) => refresh.reload === "sent")).toBe(true);

  for (const [index, refresh] of refreshes.entries()) {
    const seen = signals[index]!.files;
    for (const content of Object.values(seen)) expect(content).not.toBeNull();
    for (const [path, version] of Object.entries(refresh.versions as Record<string, number>)) {
      const file = fileOf[path]!;
      expect(revisionOf(file, seen[file]!)).toBeGreaterThanOrEqual(version);
    }
  }
}

// ---------------------------------------------------------------------------------------------

test("sidecar rotations through polling: complete files, one signal per refresh", async () => {
  const { dir, out } = scenario("poll-rotations");
  const paths = ["pollrot/db", "pollrot/api", "pollrot/cfg"];
  const fileOf = { "pollrot/db": join(out, "db.json"), "pollrot/api": join(out, "api.key"), "pollrot/cfg": join(out, "cfg.env") };
  const version: Record<string, number> = {};
  for (const path of paths) version[path] = await putRevision(path, 1);

  const watch = ["pollrot/db -> db.json", "pollrot/api#key -> api.key", "pollrot/cfg -> cfg.env format=env"].join("\n");
  const name = appName();
  const sidecar = await track(startSidecar(sidecarEnv(out, watch, { EVENTS: "false", REFRESH_INTERVAL: "700ms", RELOAD_TARGET: name })));
  await sidecar.waitForLog("the first sync", (line) => line.msg === "First sync complete: ready");

  const app = await track(startApp(dir, name, join(dir, "app.log"), Object.values(fileOf)));
  const startedAt = changedRefreshes(sidecar).length;

  for (let round = 0; round < 8; round++) {
    // Rotate one, two or three secrets back to back, so that one refresh often finds several changed.
    for (const path of paths.slice(0, 1 + (round % 3))) {
      version[path] = await putRevision(path, version[path]! + 1);
    }
    await waitFor(`round ${round} at the app`, () => {
      const last = app.signals().at(-1);
      return last && paths.every((path) => revisionOf(fileOf[path as keyof typeof fileOf], last.files[fileOf[path as keyof typeof fileOf]]!) === version[path]);
    });
  }

  await Bun.sleep(1_500);
  const summary = await app.stop();
  expectCompleteAndOneSignalPerRefresh(summary, app, changedRefreshes(sidecar).slice(startedAt), fileOf);
  expect(app.signals().length).toBeGreaterThanOrEqual(8);
}, 90_000);

test("sidecar rotations through events: complete files, one signal per refresh", async () => {
  const { dir, out } = scenario("event-rotations");
  const paths = ["evrot/db", "evrot/api"];
  const fileOf = { "evrot/db": join(out, "db.json"), "evrot/api": join(out, "api.key") };
  const version: Record<string, number> = {};
  for (const path of paths) version[path] = await putRevision(path, 1);

  const name = appName();
  const sidecar = await track(startSidecar(sidecarEnv(out, "evrot/db -> db.json\nevrot/api#key -> api.key", { REFRESH_INTERVAL: "1h", RELOAD_TARGET: name })));
  await sidecar.waitForLog("the subscription", (line) => line.msg === "Created event subscription");
  await sidecar.waitForLog("the first sync", (line) => line.msg === "First sync complete: ready");

  const app = await track(startApp(dir, name, join(dir, "app.log"), Object.values(fileOf)));
  const startedAt = changedRefreshes(sidecar).length;

  for (let round = 0; round < 20; round++) {
    const path = paths[round % 2]!;
    version[path] = await putRevision(path, version[path]! + 1);
    await waitFor(`rotation ${round} at the app`, () => app.signals().length === round + 1);
  }

  await Bun.sleep(500);
  const summary = await app.stop();
  const refreshes = changedRefreshes(sidecar).slice(startedAt);
  expectCompleteAndOneSignalPerRefresh(summary, app, refreshes, fileOf);
  expect(refreshes.every((refresh) => refresh.trigger === "event")).toBe(true);
}, 90_000);

test("sidecar writes and signals nothing when files are current, also after a restart", async () => {
  const { dir, out } = scenario("unchanged");
  await putRevision("same/db", 1);
  await putRevision("same/api", 1);
  const watch = "same/db -> db.json\nsame/api#key -> api.key mode=0400";

  // The init container writes the files first, as in a pod.
  const init = await runCli(["init"], { SCAIVAULT_URL: dev.url, SCAIVAULT_TOKEN: ROOT_TOKEN, OUTPUT_DIRS: out, SECRETS: watch });
  captured.push(init.stderr);
  expect(init.code).toBe(0);
  const files = [join(out, "db.json"), join(out, "api.key")];
  const before = files.map((file) => statSync(file));

  const name = appName();
  const app = await track(startApp(dir, name, join(dir, "app.log"), files));

  for (const run of [1, 2]) {
    const sidecar = await track(startSidecar(sidecarEnv(out, watch, { REFRESH_INTERVAL: "300ms", RELOAD_TARGET: name, START_JITTER: run === 2 ? "500ms" : "0s" })));
    await sidecar.waitForLog("the first sync", (line) => line.msg === "First sync complete: ready");
    if (run === 2) expect(sidecar.lines.some((line) => String(line.msg).startsWith("Files exist already"))).toBe(true);
    await waitFor("three interval refreshes", async () => (metricValue(await scrapeTracked(sidecar), "scaivault_sidecar_refreshes_total", { trigger: "interval", result: "ok" }) ?? 0) >= 3);

    expect(changedRefreshes(sidecar)).toEqual([]);
    expect(metricValue(await scrapeTracked(sidecar), "scaivault_sidecar_signals_total", { result: "sent" })).toBeUndefined();
    expect((await sidecar.stop()).code).toBe(0);
    running.splice(running.indexOf(sidecar), 1);
    captured.push(sidecar.stderr());
  }

  const after = files.map((file) => statSync(file));
  for (const [index, stat] of after.entries()) {
    expect(stat.ino).toBe(before[index]!.ino);
    expect(stat.mtimeMs).toBe(before[index]!.mtimeMs);
  }
  expect(app.signals()).toEqual([]);
}, 90_000);

test("sidecar is ready only after the first complete sync", async () => {
  const { out } = scenario("readiness");
  await putRevision("ready/db", 1);
  await api("POST", "/v1/dev/faults", { method: "POST", path_prefix: "/v1/secrets/batch", delay_ms: 1_500, count: 1 });

  const sidecar = await track(startSidecar(sidecarEnv(out, "ready/db -> db.json", { REFRESH_INTERVAL: "1h", EVENTS: "false" })));
  const before = await readyz(sidecar);
  expect(before.status).toBe(503);
  expect(before.body.synced).toBe(false);

  await waitFor("readiness", async () => (await readyz(sidecar)).status === 200);
  expect(readFileSync(join(out, "db.json"), "utf8")).toContain('"rev": "1"');
  const stats = await api("GET", "/v1/dev/stats");
  expect((stats.requests as Record<string, number>)["GET /v1/secrets/{path}"]).toBeUndefined();
});

test("sidecar refreshes on an event long before the next poll", async () => {
  const { out } = scenario("event-refresh");
  await putRevision("evt/db", 1);
  const sidecar = await track(startSidecar(sidecarEnv(out, "evt/db -> db.json", { REFRESH_INTERVAL: "1h" })));
  await sidecar.waitForLog("the subscription", (line) => line.msg === "Created event subscription");
  await sidecar.waitForLog("the first sync", (line) => line.msg === "First sync complete: ready");

  await putRevision("evt/db", 2);
  await waitFor("the new version on disk", () => revisionOf("db.json", readFileSync(join(out, "db.json"), "utf8")) === 2);

  const metrics = await scrapeTracked(sidecar);
  expect(metricValue(metrics, "scaivault_sidecar_refreshes_total", { trigger: "event", result: "ok" })).toBe(1);
  expect(metricValue(metrics, "scaivault_sidecar_refreshes_total", { trigger: "interval", result: "ok" })).toBeUndefined();
  expect(metricValue(metrics, "scaivault_sidecar_events_total", { type: "secret.updated" })).toBe(1);
});

test("sidecar polls while subscription creation gets 429, then subscribes", async () => {
  const { out } = scenario("subscription-429");
  await putRevision("limited/db", 1);
  await api("POST", "/v1/dev/faults", { method: "POST", path_prefix: "/v1/subscriptions", status: 429, retry_after: 1, count: 1000 });

  const sidecar = await track(startSidecar(sidecarEnv(out, "limited/db -> db.json", { REFRESH_INTERVAL: "500ms" })));
  await sidecar.waitForLog("the 429", (line) => line.msg === "Cannot create event subscription yet: polling meanwhile" && line.code === "rate_limited");
  await sidecar.waitForLog("the first sync", (line) => line.msg === "First sync complete: ready");
  expect(metricValue(await scrapeTracked(sidecar), "scaivault_sidecar_subscription_state", { state: "backoff" })).toBe(1);

  await putRevision("limited/db", 2);
  await waitFor("the polled version on disk", () => revisionOf("db.json", readFileSync(join(out, "db.json"), "utf8")) === 2);
  expect(changedRefreshes(sidecar).at(-1)!.trigger).toBe("interval");

  // Once ScaiVault accepts creations again, the subscription comes up and catches up once.
  await fetch(`${dev.url}/v1/dev/faults`, { method: "DELETE", headers: { authorization: `Bearer ${ROOT_TOKEN}` } });
  await sidecar.waitForLog("the subscription", (line) => line.msg === "Created event subscription", 45_000);
  await waitFor("the catch-up refresh", async () => metricValue(await scrapeTracked(sidecar), "scaivault_sidecar_refreshes_total", { trigger: "resubscribed", result: "ok" }) === 1);
  expect(metricValue(await scrapeTracked(sidecar), "scaivault_sidecar_subscription_state", { state: "active" })).toBe(1);
}, 60_000);

test("sidecar renews expired and revoked tokens, re-reading the token file", async () => {
  const { out } = scenario("tokens");
  const shortLived = await startDevServer({ port: 0, rootToken: ROOT_TOKEN, rateLimits: false, tokenTtlSeconds: 3 });
  const onDisk = () => revisionOf("db.json", readFileSync(join(out, "db.json"), "utf8"));
  try {
    await putRevision("tok/db", 1, shortLived);
    const tokenFile = join(out, "..", "token");
    const firstJwt = makeJwt(serviceAccountClaims("billing", "billing", { exp: Math.floor(Date.now() / 1000) + 3 }));
    writeFileSync(tokenFile, firstJwt);
    tokens.push(firstJwt);

    const { SCAIVAULT_TOKEN: _static, ...env } = sidecarEnv(out, "tok/db -> db.json", { REFRESH_INTERVAL: "1h" });
    const sidecar = await track(startSidecar({ ...env, SCAIVAULT_URL: shortLived.url, SCAIVAULT_TOKEN_FILE: tokenFile }));
    await sidecar.waitForLog("the first sync", (line) => line.msg === "First sync complete: ready");

    // The kubelet rotates the projected token; then both the first JWT and the exchanged token expire.
    const secondJwt = makeJwt(serviceAccountClaims("billing", "billing"));
    writeFileSync(tokenFile, secondJwt);
    tokens.push(secondJwt);
    await Bun.sleep(3_500);

    await putRevision("tok/db", 2, shortLived);
    await waitFor("revision 2 after expiry", () => onDisk() === 2);
    // Renewed before expiry: no request was sent with an expired token.
    expect(await scrapeTracked(sidecar)).not.toContain('status="401"');

    // A revoked token gets 401 token_revoked: the sidecar exchanges again and goes on.
    await api("POST", "/v1/dev/tokens/revoke-all", {}, shortLived);
    await putRevision("tok/db", 3, shortLived);
    await waitFor("revision 3 after revocation", () => onDisk() === 3);
    await sidecar.waitForLog("the rejected token", (line) => line.msg === "Token rejected, fetching a fresh one" && line.serverCode === "token_revoked");

    await putRevision("tok/db", 4, shortLived);
    await waitFor("revision 4", () => onDisk() === 4);

    const stats = await api("GET", "/v1/dev/stats", undefined, shortLived);
    expect((stats.requests as Record<string, number>)["POST /v1/auth/exchange"]).toBeGreaterThanOrEqual(3);
    expect(sidecar.lines.filter((line) => line.msg === "Exchanged service-account token").length).toBeGreaterThanOrEqual(3);
    expect(sidecar.child.exitCode).toBeNull();
  } finally {
    await shortLived.stop();
  }
}, 60_000);

test("sidecar keeps files through an outage and reports staleness", async () => {
  const { dir, out } = scenario("outage");
  await putRevision("down/db", 1);
  const proxy = await startProxy(new URL(dev.url).port);
  const name = appName();
  try {
    const env = { ...sidecarEnv(out, "down/db -> db.json", { REFRESH_INTERVAL: "500ms", READY_MAX_STALENESS: "2s", RELOAD_TARGET: name }), SCAIVAULT_URL: proxy.url };
    const sidecar = await track(startSidecar(env));
    await sidecar.waitForLog("the first sync", (line) => line.msg === "First sync complete: ready");
    const file = join(out, "db.json");
    const app = await track(startApp(dir, name, join(dir, "app.log"), [file]));
    const original = readFileSync(file, "utf8");

    await proxy.close();
    await putRevision("down/db", 2);
    const notReady = await waitFor("readiness to fail on staleness", async () => {
      const result = await readyz(sidecar);
      return result.status === 503 ? result : undefined;
    });
    captured.push(JSON.stringify(notReady.body));
    expect(notReady.body.stale).toBe(true);
    expect(notReady.body.synced).toBe(true);
    expect(readFileSync(file, "utf8")).toBe(original);
    await waitFor("an unreachable error in the metrics", async () => (metricValue(await scrapeTracked(sidecar), "scaivault_sidecar_errors_total", { kind: "unreachable" }) ?? 0) > 0, 30_000);
    expect((await readyz(sidecar)).body.synced).toBe(true);
    expect(readFileSync(file, "utf8")).toBe(original);

    await proxy.open();
    await waitFor("the new version after the outage", () => revisionOf("db.json", readFileSync(file, "utf8")) === 2, 45_000);
    await waitFor("readiness again", async () => (await readyz(sidecar)).status === 200);
    await waitFor("the signal after the outage", () => app.signals().length === 1);

    const summary = await app.stop();
    expect(summary.missing).toBe(0);
    expect(summary.partial).toBe(0);
    expect(summary.empty).toBe(0);
    expect(app.signals().length).toBe(1);
  } finally {
    await proxy.close();
  }
}, 90_000);

test("sidecar keeps the last file of a deleted secret and reports it", async () => {
  const { out } = scenario("deleted");
  await putRevision("gone/db", 1);
  await putRevision("gone/db", 2);
  await putRevision("gone/other", 1);
  const sidecar = await track(startSidecar(sidecarEnv(out, "gone/db -> db.json\ngone/other -> other.json", { REFRESH_INTERVAL: "1h" })));
  await sidecar.waitForLog("the subscription", (line) => line.msg === "Created event subscription");
  await sidecar.waitForLog("the first sync", (line) => line.msg === "First sync complete: ready");
  const file = join(out, "db.json");
  const before = readFileSync(file, "utf8");

  await api("DELETE", "/v1/secrets/gone/db");
  await sidecar.waitForLog("the deletion warning", (line) => String(line.msg).startsWith("Secret not found in ScaiVault") && line.path === "gone/db");
  expect(readFileSync(file, "utf8")).toBe(before);

  const ready = await readyz(sidecar);
  captured.push(JSON.stringify(ready.body));
  expect(ready.status).toBe(200);
  expect(ready.body.unavailable).toEqual([{ path: "gone/db", kind: "deleted" }]);
  expect(metricValue(await scrapeTracked(sidecar), "scaivault_sidecar_secret_unavailable", { path: "gone/db" })).toBe(1);

  // Created again, the secret starts over at version 1, and the file follows.
  expect(await putRevision("gone/db", 7)).toBe(1);
  await waitFor("the re-created secret on disk", () => revisionOf("db.json", readFileSync(file, "utf8")) === 7);
  await sidecar.waitForLog("the recovery", (line) => line.msg === "Secret is current again" && line.path === "gone/db");
  expect((await readyz(sidecar)).body.unavailable).toEqual([]);
});

test("sidecar exits 0 on SIGTERM and SIGINT and deletes its subscription", async () => {
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    const { out } = scenario(`stop-${signal}`);
    await putRevision("stop/db", 1);
    const sidecar = await track(startSidecar(sidecarEnv(out, "stop/db -> db.json", { REFRESH_INTERVAL: "1h" })));
    const created = await sidecar.waitForLog("the subscription", (line) => line.msg === "Created event subscription");
    await sidecar.waitForLog("the first sync", (line) => line.msg === "First sync complete: ready");
    const listed = (await api("GET", "/v1/dev/stats")).subscriptions as Array<{ id: string }>;
    expect(listed.map((subscription) => subscription.id)).toContain(String(created.subscription));

    const exit = await sidecar.stop(signal);
    running.splice(running.indexOf(sidecar), 1);
    captured.push(sidecar.stderr());

    expect(exit.code).toBe(0);
    expect(sidecar.lines.some((line) => line.msg === "Deleted event subscription")).toBe(true);
    const after = (await api("GET", "/v1/dev/stats")).subscriptions as Array<{ id: string }>;
    expect(after.map((subscription) => subscription.id)).not.toContain(String(created.subscription));
  }
});

test("sidecar syncs before a slow subscription creation and deletes it when stopped meanwhile", async () => {
  const { out } = scenario("slow-create");
  await putRevision("slow/db", 1);
  const before = ((await api("GET", "/v1/dev/stats")).subscriptions as unknown[]).length;
  await api("POST", "/v1/dev/faults", { method: "POST", path_prefix: "/v1/subscriptions", delay_ms: 6_000, count: 1 });

  const sidecar = await track(startSidecar(sidecarEnv(out, "slow/db -> db.json", { REFRESH_INTERVAL: "1h" })));
  await sidecar.waitForLog("the first sync", (line) => line.msg === "First sync complete: ready", 5_000);
  expect(sidecar.lines.some((line) => line.msg === "Created event subscription")).toBe(false);

  const exit = await sidecar.stop("SIGTERM");
  running.splice(running.indexOf(sidecar), 1);
  captured.push(sidecar.stderr());
  expect(exit.code).toBe(0);
  expect(sidecar.lines.some((line) => line.msg === "Event subscription was created during shutdown: deleting it")).toBe(true);
  expect(((await api("GET", "/v1/dev/stats")).subscriptions as unknown[]).length).toBe(before);
}, 30_000);

test("sidecar logs and metrics hold no secret value or token", () => {
  const text = captured.join("\n");
  expect(text.length).toBeGreaterThan(10_000);
  expect(text).not.toContain(SECRET_MARK);
  for (const token of tokens) expect(text).not.toContain(token);
  // Exchanged tokens are `svt_...`, JWTs start with `eyJ`.
  expect(text).not.toMatch(/svt_[A-Za-z0-9_-]{8,}/);
  expect(text).not.toContain("eyJ");
});

// ---------------------------------------------------------------------------------------------

/** Starts a TCP relay to the dev server that can be closed (connections refused) and opened again on the same port. */
async function startProxy(targetPort: string): Promise<{ url: string; close(): Promise<void>; open(): Promise<void> }> {
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let port = 0;

  const open = () =>
    new Promise<void>((resolve) => {
      server = createServer((client) => {
        const upstream = new Socket();
        upstream.connect(Number(targetPort), "127.0.0.1");
        sockets.add(client);
        sockets.add(upstream);
        client.pipe(upstream).pipe(client);
        const drop = () => {
          client.destroy();
          upstream.destroy();
          sockets.delete(client);
          sockets.delete(upstream);
        };
        client.on("error", drop).on("close", drop);
        upstream.on("error", drop).on("close", drop);
      });
      server.listen(port, "127.0.0.1", () => {
        port = (server!.address() as { port: number }).port;
        resolve();
      });
    });

  const close = () =>
    new Promise<void>((resolve) => {
      for (const socket of sockets) socket.destroy();
      sockets.clear();
      if (!server?.listening) return resolve();
      server.close(() => resolve());
    });

  await open();
  return { url: `http://127.0.0.1:${port}`, close, open };
}
