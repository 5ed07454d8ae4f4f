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
      return answer;
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
      return true;
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
    onEvents: async () => true,
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
