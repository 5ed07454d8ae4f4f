import { afterAll, beforeAll, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { ScaiVaultClient } from "../src/client.ts";
import { staticTokenSource } from "../src/auth.ts";
import { startDevServer, type DevServer } from "../src/dev/server.ts";
import { EventWatcher, MAX_SUBSCRIPTION_PATHS, subscriptionGlobs } from "../src/events.ts";
import { configureLogging } from "../src/log.ts";
import type { SubscriptionState } from "../src/sidecar-metrics.ts";
import { waitFor } from "./helpers/sidecar.ts";

const ROOT_TOKEN = `svt_root_${randomBytes(12).toString("hex")}`;
let dev: DevServer;

beforeAll(async () => {
  configureLogging({ level: "silent" });
  dev = await startDevServer({ port: 0, rootToken: ROOT_TOKEN, rateLimits: false, seed: { "ev/a": { v: "1" }, "ev/b": { v: "1" }, "other/c": { v: "1" } } });
});

afterAll(async () => {
  await dev.stop();
});

function client(signal?: AbortSignal): ScaiVaultClient {
  return new ScaiVaultClient({ baseUrl: dev.url, tokens: staticTokenSource(ROOT_TOKEN), signal, backoff: { baseMs: 10, maxMs: 50 } });
}

function pendingEvents(id: string): number {
  return dev.state.subscriptions.list().find((subscription) => subscription.id === id)?.pending ?? -1;
}

test.each([
  [["a/b", "a/c"], 3, ["a/b", "a/c"]],
  [["a/b/x", "a/b/y", "a/c/z", "d"], 3, ["a/b/**", "a/c/**", "d"]],
  [["a/b/x", "a/c/y", "e/f/g", "h/i/j"], 2, ["**"]],
  [["a/b/x", "a/c/y", "e/f/g"], 2, ["a/**", "e/**"]],
])("subscriptionGlobs covers %p with at most %p globs", (paths, max, expected) => {
  expect(subscriptionGlobs(paths, max)).toEqual(expected);
});

test("subscriptionGlobs keeps 1000 paths under the limit", () => {
  const paths = Array.from({ length: 1000 }, (_, index) => `environments/production/app${index % 10}/secret${index}`);
  const globs = subscriptionGlobs(paths);

  expect(globs.length).toBeLessThanOrEqual(MAX_SUBSCRIPTION_PATHS);
  expect(globs).toContain("environments/production/app3/**");
});

test("events acknowledge only after the refresh succeeded", async () => {
  const controller = new AbortController();
  const seen: string[][] = [];
  let answer = false;
  const watcher = new EventWatcher({
    client: client(controller.signal),
    paths: ["ev/a", "ev/b"],
    onEvents: async (paths) => {
      seen.push(paths);
      return answer ? [] : paths;
    },
  });

  expect(await watcher.createOnce()).toBe(true);
  const id = watcher.subscriptionId!;
  const running = watcher.run(controller.signal);

  await client().putSecret("ev/a", { v: "2" });
  await waitFor("the event", () => seen.length >= 1);
  expect(seen[0]).toEqual(["ev/a"]);
  expect(pendingEvents(id)).toBe(1);

  // Unacknowledged events come back; once the refresh succeeds they are acknowledged.
  answer = true;
  await waitFor("the acknowledgement", () => pendingEvents(id) === 0, 10_000);
  expect(seen.length).toBeGreaterThanOrEqual(2);

  controller.abort();
  await running;
  await watcher.stop(client());
  expect(dev.state.subscriptions.get(id)).toBeUndefined();
});

test("events ignore and acknowledge paths outside the watched set", async () => {
  const controller = new AbortController();
  const seen: string[][] = [];
  // More paths than one subscription may carry: the subscription covers ev/**, which includes ev/b.
  const paths = ["ev/a", ...Array.from({ length: MAX_SUBSCRIPTION_PATHS }, (_, index) => `ev/x${index}`)];
  const watcher = new EventWatcher({
    client: client(controller.signal),
    paths,
    onEvents: async (changed) => {
      seen.push(changed);
      return [];
    },
  });
  await watcher.createOnce();
  const id = watcher.subscriptionId!;
  expect(dev.state.subscriptions.get(id)!.info.paths).toEqual(["ev/**"]);
  const running = watcher.run(controller.signal);

  await client().putSecret("ev/b", { v: "3" });
  await waitFor("the acknowledgement of the unwatched event", async () => {
    await Bun.sleep(50);
    return pendingEvents(id) === 0;
  });
  expect(seen).toEqual([]);

  await client().putSecret("ev/a", { v: "3" });
  await waitFor("the watched event", () => seen.length === 1);
  expect(seen[0]).toEqual(["ev/a"]);

  controller.abort();
  await running;
  await watcher.stop(client());
});

test("events create a new subscription when the old one is gone", async () => {
  const controller = new AbortController();
  const states: SubscriptionState[] = [];
  let gaps = 0;
  const watcher = new EventWatcher({
    client: client(controller.signal),
    paths: ["ev/b"],
    onEvents: async () => [],
    onGap: () => (gaps += 1),
    onState: (state) => states.push(state),
  });
  await watcher.createOnce();
  const first = watcher.subscriptionId!;
  const running = watcher.run(controller.signal);

  // The server drops the subscription (as after a restart): the waiting poll ends and the next gets 404.
  await Bun.sleep(100);
  dev.state.subscriptions.delete(first);
  await waitFor("a new subscription", () => watcher.subscriptionId !== undefined && watcher.subscriptionId !== first);
  expect(gaps).toBe(1);
  expect(states).toEqual(["creating", "active", "creating", "active"]);

  controller.abort();
  await running;
  await watcher.stop(client());
  expect(states.at(-1)).toBe("stopped");
});

async function addFault(fault: Record<string, unknown>): Promise<void> {
  const response = await fetch(`${dev.url}/v1/dev/faults`, {
    method: "POST",
    headers: { authorization: `Bearer ${ROOT_TOKEN}`, "content-type": "application/json" },
    body: JSON.stringify(fault),
  });
  expect(response.status).toBe(201);
}

test("events acknowledge the paths the refresh made current and keep the others", async () => {
  const controller = new AbortController();
  const watcher = new EventWatcher({
    client: client(controller.signal),
    paths: ["ev/a", "ev/b"],
    onEvents: async (paths) => paths.filter((path) => path === "ev/a"),
  });
  await watcher.createOnce();
  const id = watcher.subscriptionId!;

  await client().putSecret("ev/a", { v: "4" });
  await client().putSecret("ev/b", { v: "4" });
  const running = watcher.run(controller.signal);
  await waitFor("the acknowledgement of ev/b", () => dev.state.subscriptions.list().find((entry) => entry.id === id)?.pending === 1);
  await Bun.sleep(300);
  expect(pendingEvents(id)).toBe(1);

  controller.abort();
  await running;
  await watcher.stop(client());
});

test("events wait at least Retry-After before creating the subscription again", async () => {
  const controller = new AbortController();
  const times: Array<[SubscriptionState, number]> = [];
  await addFault({ method: "POST", path_prefix: "/v1/subscriptions", status: 429, retry_after: 3, count: 1 });
  const watcher = new EventWatcher({
    client: client(controller.signal),
    paths: ["ev/a"],
    onEvents: async () => [],
    onState: (state) => times.push([state, Date.now()]),
    random: () => 0,
  });
  const running = watcher.run(controller.signal);

  await waitFor("the subscription", () => watcher.subscriptionId !== undefined, 15_000);
  const backoffAt = times.find(([state]) => state === "backoff")![1];
  const activeAt = times.find(([state]) => state === "active")![1];
  expect(activeAt - backoffAt).toBeGreaterThanOrEqual(2_900);

  controller.abort();
  await running;
  await watcher.stop(client());
}, 20_000);

test("events delete a subscription whose creation completed during shutdown", async () => {
  const before = dev.state.subscriptions.list().length;
  const controller = new AbortController();
  await addFault({ method: "POST", path_prefix: "/v1/subscriptions", delay_ms: 1_500, count: 1 });
  const watcher = new EventWatcher({ client: client(controller.signal), createClient: client(), paths: ["ev/a"], onEvents: async () => [] });
  const running = watcher.run(controller.signal);

  await waitFor("the creation", () => watcher.state === "creating");
  await Bun.sleep(200);
  controller.abort();
  await running;
  expect(dev.state.subscriptions.list().length).toBe(before);

  await watcher.stop(client(), { lateCreateWaitMs: 10_000 });
  await Bun.sleep(2_000);
  expect(dev.state.subscriptions.list().length).toBe(before);
}, 20_000);
