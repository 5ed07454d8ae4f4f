import { beforeAll, expect, test } from "bun:test";
import { configureLogging } from "../src/log.ts";
import { runStoppers } from "../src/shutdown.ts";

beforeAll(() => configureLogging({ level: "silent" }));

test("runStoppers runs steps in order and goes on after a failure", async () => {
  const order: string[] = [];
  await runStoppers(
    [
      { name: "events", stop: async () => void order.push("events") },
      { name: "broken", stop: async () => Promise.reject(new Error("boom")) },
      { name: "health", stop: async () => void order.push("health") },
    ],
    1_000,
  );
  expect(order).toEqual(["events", "health"]);
});

test("runStoppers stops waiting when the total time is up", async () => {
  const order: string[] = [];
  const started = Date.now();
  await runStoppers(
    [
      { name: "hangs", stop: () => new Promise<void>(() => {}) },
      { name: "skipped", stop: async () => void order.push("skipped") },
    ],
    200,
  );
  expect(Date.now() - started).toBeLessThan(5_000);
  expect(order).toEqual([]);
});
