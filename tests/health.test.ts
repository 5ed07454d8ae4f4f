import { expect, test } from "bun:test";
import { AgentError } from "../src/errors.ts";
import { createHealthApp, startHealthServer } from "../src/health.ts";
import { configureLogging } from "../src/log.ts";
import { MetricsRegistry, METRICS_CONTENT_TYPE } from "../src/metrics.ts";

configureLogging({ level: "silent" });

function app(ready: boolean, alive = true) {
  const metrics = new MetricsRegistry();
  metrics.counter("test_total", "A counter").inc();
  return createHealthApp({ metrics, alive: () => alive, readiness: () => ({ ready, details: { synced: ready, stalenessSeconds: 3 } }) });
}

test("health reports liveness", async () => {
  expect((await app(false).request("/healthz")).status).toBe(200);
  expect((await app(true, false).request("/healthz")).status).toBe(503);
});

test("health readiness returns 503 until ready, with its details", async () => {
  const notReady = await app(false).request("/readyz");
  expect(notReady.status).toBe(503);
  expect(await notReady.json()).toEqual({ status: "not_ready", synced: false, stalenessSeconds: 3 });

  const ready = await app(true).request("/readyz");
  expect(ready.status).toBe(200);
  expect(await ready.json()).toEqual({ status: "ready", synced: true, stalenessSeconds: 3 });
});

test("health serves metrics in the text format", async () => {
  const response = await app(true).request("/metrics");
  expect(response.headers.get("content-type")).toBe(METRICS_CONTENT_TYPE);
  expect(await response.text()).toContain("test_total 1");
  expect((await app(true).request("/other")).status).toBe(404);
});

test("health server reports a port in use as a config error", async () => {
  const occupied = await startHealthServer(app(true), { hostname: "127.0.0.1", port: 0 });
  try {
    const error = await startHealthServer(app(true), { hostname: "127.0.0.1", port: occupied.port }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(AgentError);
    expect((error as AgentError).code).toBe("config");
    expect((error as AgentError).message).toContain(`Cannot listen on HEALTH_ADDR 127.0.0.1:${occupied.port}`);
  } finally {
    await occupied.stop();
  }
});
