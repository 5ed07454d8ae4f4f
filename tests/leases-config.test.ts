/** DYNAMIC and LEASE_REVOKE_GRACE in the sidecar's and init's configuration. */
import { expect, test } from "bun:test";
import { loadInitConfig, loadSidecarConfig } from "../src/config.ts";
import { AgentError } from "../src/errors.ts";

const base = { SCAIVAULT_URL: "http://127.0.0.1:8200", SCAIVAULT_TOKEN: "svt_test_token", OUTPUT_DIRS: "/run/secrets" };
const GUIDE_LINE = "engine=postgres-prod role=readonly ttl=2h -> /run/secrets/db.json\n";

function configError(load: () => unknown): AgentError {
  try {
    load();
  } catch (error) {
    if (error instanceof AgentError) return error;
    throw error;
  }
  throw new Error("expected a configuration error");
}

test("sidecar config reads the guide's DYNAMIC line", () => {
  const config = loadSidecarConfig({}, { ...base, DYNAMIC: GUIDE_LINE });

  expect(config.watch).toEqual([]);
  expect(config.dynamic).toHaveLength(1);
  expect(config.dynamic[0]).toMatchObject({ engine: "postgres-prod", role: "readonly", ttlMs: 7_200_000, target: "/run/secrets/db.json", format: "json" });
  expect(config.leaseRevokeGraceMs).toBe(30_000);
});

test("sidecar config reads DYNAMIC and the grace from flags", () => {
  const config = loadSidecarConfig({ dynamic: "engine=pg role=app -> db.env format=env mode=0400", "lease-revoke-grace": "5s" }, base);

  expect(config.dynamic[0]).toMatchObject({ engine: "pg", role: "app", ttlMs: undefined, format: "env", mode: 0o400 });
  expect(config.leaseRevokeGraceMs).toBe(5000);
});

test("sidecar config lists every malformed DYNAMIC line", () => {
  const error = configError(() => loadSidecarConfig({}, { ...base, DYNAMIC: "role=readonly -> a.json\nengine=pg role=r ttl=soon -> b.json\nengine=pg role=r b.json" }));

  expect(error.code).toBe("config");
  expect(error.message).toContain("Invalid DYNAMIC: 3 problems");
  expect(error.message).toContain("DYNAMIC line 1: missing engine=");
  expect(error.message).toContain("DYNAMIC line 2:");
  expect(error.message).toContain('Invalid duration for ttl on line 2: "soon"');
  expect(error.message).toContain('DYNAMIC line 3: expected "source -> target"');
});

test("sidecar config rejects a DYNAMIC target that WATCH_PATHS writes", () => {
  const error = configError(() => loadSidecarConfig({}, { ...base, WATCH_PATHS: "a/b -> db.json", DYNAMIC: "engine=pg role=r -> db.json" }));

  expect(error.message).toContain('DYNAMIC line 1: "db.json" is already written by WATCH_PATHS line 1');
});

test("sidecar config rejects an invalid LEASE_REVOKE_GRACE", () => {
  const error = configError(() => loadSidecarConfig({}, { ...base, DYNAMIC: GUIDE_LINE, LEASE_REVOKE_GRACE: "a while" }));

  expect(error.message).toContain('Invalid duration for LEASE_REVOKE_GRACE: "a while"');
});

test("init config accepts DYNAMIC without SECRETS", () => {
  const config = loadInitConfig({}, { ...base, DYNAMIC: GUIDE_LINE });

  expect(config.secrets).toEqual([]);
  expect(config.dynamic[0]).toMatchObject({ engine: "postgres-prod", role: "readonly" });
});
