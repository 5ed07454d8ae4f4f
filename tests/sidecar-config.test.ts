import { expect, test } from "bun:test";
import { AgentError } from "../src/errors.ts";
import { loadSidecarConfig, parseFraction, parseListenAddress } from "../src/config.ts";

const base = { SCAIVAULT_URL: "http://127.0.0.1:8200", SCAIVAULT_TOKEN: "svt_test_token", OUTPUT_DIRS: "/run/secrets" };

test("loadSidecarConfig applies the guide's defaults", () => {
  const config = loadSidecarConfig({}, { ...base, WATCH_PATHS: "environments/production/billing/database -> /run/secrets/db.json\n" });

  expect(config.watch.map((mapping) => [mapping.path, mapping.target])).toEqual([["environments/production/billing/database", "/run/secrets/db.json"]]);
  expect(config.refreshIntervalMs).toBe(300_000);
  expect(config.refreshJitter).toBe(0.1);
  expect(config.reloadSignal).toBe("SIGHUP");
  expect(config.reloadTarget).toBeUndefined();
  expect(config.reloadTargetWaitMs).toBe(60_000);
  expect(config.health).toEqual({ hostname: "::", port: 8099 });
  expect(config.events).toBe(true);
  expect(config.startJitterMs).toBe(10_000);
  expect(config.readyMaxStalenessMs).toBeUndefined();
});

test("loadSidecarConfig reads the guide's names and flags", () => {
  const config = loadSidecarConfig(
    { "refresh-interval": "30s", "health-addr": "off" },
    { ...base, WATCH_PATHS: "a/b -> x.json", REFRESH_INTERVAL: "1h", RELOAD_SIGNAL: "usr1", RELOAD_TARGET: " billing ", EVENTS: "false", REFRESH_JITTER: "0.25", READY_MAX_STALENESS: "15m" },
  );

  expect(config.refreshIntervalMs).toBe(30_000);
  expect(config.health).toBeUndefined();
  expect(config.reloadSignal).toBe("SIGUSR1");
  expect(config.reloadTarget).toBe("billing");
  expect(config.events).toBe(false);
  expect(config.refreshJitter).toBe(0.25);
  expect(config.readyMaxStalenessMs).toBe(900_000);
});

test("loadSidecarConfig reports every invalid setting at once", () => {
  let error: unknown;
  try {
    loadSidecarConfig({}, { ...base, WATCH_PATHS: "Bad Path -> x", REFRESH_INTERVAL: "soon", RELOAD_SIGNAL: "SIGNOPE", HEALTH_ADDR: "8099", REFRESH_JITTER: "80%" });
  } catch (caught) {
    error = caught;
  }

  expect(error).toBeInstanceOf(AgentError);
  expect((error as AgentError).code).toBe("config");
  const message = (error as AgentError).message;
  expect(message).toContain("WATCH_PATHS line 1");
  expect(message).toContain('Invalid duration for REFRESH_INTERVAL: "soon"');
  expect(message).toContain('Invalid RELOAD_SIGNAL: "SIGNOPE"');
  expect(message).toContain('Invalid HEALTH_ADDR: "8099"');
  expect(message).toContain('Invalid REFRESH_JITTER: "80%"');
});

test("loadSidecarConfig requires WATCH_PATHS", () => {
  expect(() => loadSidecarConfig({}, base)).toThrow("WATCH_PATHS is not set");
  expect(() => loadSidecarConfig({}, { ...base, WATCH_PATHS: "# only a comment\n" })).toThrow("WATCH_PATHS has no lines");
});

test.each([
  ["0.0.0.0:8099", { hostname: "0.0.0.0", port: 8099 }],
  ["127.0.0.1:0", { hostname: "127.0.0.1", port: 0 }],
  [":9000", { hostname: "0.0.0.0", port: 9000 }],
  ["[::1]:8099", { hostname: "::1", port: 8099 }],
  ["OFF", null],
])("parseListenAddress reads %p", (input, expected) => {
  expect(parseListenAddress(input, "HEALTH_ADDR")).toEqual(expected);
});

test.each(["8099", "host:", "host:70000", "a b:1", "127.0.0.1:00080", "bad_host!:80"])("parseListenAddress rejects %p", (input) => {
  expect(() => parseListenAddress(input, "HEALTH_ADDR")).toThrow("Invalid HEALTH_ADDR");
});

test.each([
  ["10%", 0.1],
  ["0.2", 0.2],
  ["0", 0],
  ["50%", 0.5],
])("parseFraction reads %p", (input, expected) => {
  expect(parseFraction(input, "REFRESH_JITTER", 0.5)).toBeCloseTo(expected);
});

test("loadSidecarConfig rejects a refresh interval under 100ms", () => {
  const load = () => loadSidecarConfig({}, { ...base, WATCH_PATHS: "a/b -> x.json", REFRESH_INTERVAL: "1ms" });
  expect(load).toThrow(AgentError);
  expect(load).toThrow('Invalid REFRESH_INTERVAL: "1ms" is shorter than 100ms');
});
