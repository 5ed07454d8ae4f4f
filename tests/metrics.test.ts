import { expect, test } from "bun:test";
import { escapeLabelValue, MetricsRegistry, METRICS_CONTENT_TYPE } from "../src/metrics.ts";

test("metrics render counters and gauges in the text format", () => {
  const registry = new MetricsRegistry();
  const requests = registry.counter("app_requests_total", "Requests by route", ["route", "status"]);
  const up = registry.gauge("app_up", "1 while up");
  requests.inc({ status: "200", route: "b" });
  requests.inc({ route: "a", status: "200" }, 2);
  up.set({}, 1);

  expect(registry.render()).toBe(
    [
      "# HELP app_requests_total Requests by route",
      "# TYPE app_requests_total counter",
      'app_requests_total{route="a",status="200"} 2',
      'app_requests_total{route="b",status="200"} 1',
      "# HELP app_up 1 while up",
      "# TYPE app_up gauge",
      "app_up 1",
      "",
    ].join("\n"),
  );
  expect(METRICS_CONTENT_TYPE).toStartWith("text/plain; version=0.0.4");
});

test("metrics escape label values", () => {
  expect(escapeLabelValue('a\\b"c\nd')).toBe('a\\\\b\\"c\\nd');

  const registry = new MetricsRegistry();
  registry.gauge("odd", "Odd labels", ["path"]).set({ path: 'x"y\n' }, 1);
  expect(registry.render()).toContain('odd{path="x\\"y\\n"} 1');
});

test("metrics reject bad names, labels and decreasing counters", () => {
  const registry = new MetricsRegistry();
  expect(() => registry.counter("1bad", "x")).toThrow('Invalid metric name "1bad"');
  expect(() => registry.counter("ok_total", "x", ["__reserved"])).toThrow('Invalid label name "__reserved"');

  const counter = registry.counter("ok_total", "x", ["kind"]);
  expect(() => registry.gauge("ok_total", "x")).toThrow('Metric "ok_total" is already registered');
  expect(() => counter.inc({ kind: "a" }, -1)).toThrow("cannot decrease");
  expect(() => counter.inc({ other: "a" })).toThrow("takes the labels [kind], got [other]");
});

test("metrics gauges remove series and collectors run before render", () => {
  const registry = new MetricsRegistry();
  const age = registry.gauge("age_seconds", "Age", ["path"]);
  let collected = 0;
  registry.onCollect(() => age.set({ path: "p" }, ++collected));

  expect(registry.render()).toContain('age_seconds{path="p"} 1');
  expect(registry.render()).toContain('age_seconds{path="p"} 2');
  age.remove({ path: "p" });
  expect(age.get({ path: "p" })).toBe(0);
  registry.gauge("nan_value", "NaN").set({}, NaN);
  expect(registry.render()).toContain("nan_value NaN");
});
