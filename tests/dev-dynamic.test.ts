/**
 * The dev server's dynamic-credential routes against a real dev server on 127.0.0.1: the
 * `static` plugin always, the `postgresql` plugin against a throwaway PostgreSQL cluster when
 * its binaries are installed.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash, createHmac } from "node:crypto";
import { startDevServer, type DevServer } from "../src/dev/server.ts";
import { dynamicStore } from "../src/dev/dynamic.ts";
import { parseEngines } from "../src/dev/dynamic-config.ts";
import { scramVerifier } from "../src/dev/postgres.ts";
import { AgentError } from "../src/errors.ts";
import { configureLogging } from "../src/log.ts";
import { generatedRoles, postgresUnavailable, readAsUser, startPostgres, type PostgresCluster } from "./helpers/postgres.ts";

const logs: string[] = [];
const secrets: string[] = [];
let server: DevServer;

const STATIC_ENGINES = {
  "static-db": {
    plugin: "static",
    max_ttl: "4s",
    data: { host: "db.example", port: 5432 },
    roles: { reader: { default_ttl: "2s" }, short: { default_ttl: "1h" } },
  },
};

beforeAll(async () => {
  configureLogging({ level: "debug", format: "json", write: (line) => logs.push(line) });
  server = await startDevServer({ port: 0, config: { engines: STATIC_ENGINES } });
  secrets.push(server.rootToken);
});

afterAll(async () => {
  await server?.stop();
});

async function call(method: string, path: string, body?: unknown, target = server): Promise<{ status: number; json: any }> {
  const response = await fetch(target.url + path, {
    method,
    headers: { authorization: `Bearer ${target.rootToken}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, json: text ? JSON.parse(text) : undefined };
}

describe("dev dynamic config", () => {
  test("parseEngines rejects a postgresql engine without connection_url", () => {
    expect(() => parseEngines({ db: { plugin: "postgresql", roles: {} } })).toThrow(/needs connection_url/);
  });

  test("parseEngines rejects unknown plugins and bad durations", () => {
    let error: unknown;
    try {
      parseEngines({ db: { plugin: "mysql", roles: {} }, other: { plugin: "static", max_ttl: "soon", roles: {} } });
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(AgentError);
    expect((error as AgentError).message).toContain("plugin must be postgresql or static");
  });

  test("parseEngines never quotes the connection URL", () => {
    let message = "";
    try {
      parseEngines({ db: { plugin: "postgresql", connection_url: "mysql://admin:Hunter2Secret@h/db", roles: {} } });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toContain("must start with postgres://");
    expect(message).not.toContain("Hunter2Secret");
  });

  test("parseEngines caps a role's default_ttl by max_ttl", () => {
    const engines = parseEngines({ db: { plugin: "static", max_ttl: "10m", roles: { r: { default_ttl: "2h" } } } });
    expect(engines.get("db")!.roles.get("r")!.defaultTtlMs).toBe(600_000);
  });
});

describe("dev dynamic routes with the static plugin", () => {
  test("generate returns a lease with generated credentials", async () => {
    const { status, json } = await call("POST", "/v1/dynamic/engines/static-db/creds/reader", { ttl: "2s" });
    expect(status).toBe(200);
    expect(json.lease_id).toStartWith("lease_");
    expect(json.lease_duration).toBe(2);
    expect(json.renewable).toBe(true);
    expect(json.data.host).toBe("db.example");
    expect(json.data.username).toStartWith("v_reader_");
    expect(json.data.password).toHaveLength(32);
    secrets.push(json.data.password);
  });

  test("renew extends the lease and caps the grant at max_ttl", async () => {
    const generated = (await call("POST", "/v1/dynamic/engines/static-db/creds/reader", {})).json;
    secrets.push(generated.data.password);

    const first = await call("POST", `/v1/dynamic/leases/${generated.lease_id}/renew`, { increment: "3s" });
    expect(first.status).toBe(200);
    expect(first.json.lease_duration).toBe(3);
    expect(first.json.data).toBeUndefined();

    await Bun.sleep(1500);
    const capped = await call("POST", `/v1/dynamic/leases/${generated.lease_id}/renew`, { increment: "3s" });
    expect(capped.status).toBe(200);
    expect(capped.json.lease_duration).toBeLessThan(3);
    expect(capped.json.renewable).toBe(false);
    expect(capped.json.expires_at).toBe(capped.json.max_expires_at);
  });

  test("renew at the maximum lifetime is lease_not_renewable", async () => {
    const generated = (await call("POST", "/v1/dynamic/engines/static-db/creds/short", {})).json;
    secrets.push(generated.data.password);
    expect(generated.lease_duration).toBe(4);
    expect(generated.renewable).toBe(false);

    await Bun.sleep(3100);
    const refused = await call("POST", `/v1/dynamic/leases/${generated.lease_id}/renew`, {});
    expect(refused.status).toBe(400);
    expect(refused.json.error.code).toBe("lease_not_renewable");
  });

  test("revoke ends the lease and a second revoke is lease_not_found", async () => {
    const generated = (await call("POST", "/v1/dynamic/engines/static-db/creds/reader", {})).json;
    secrets.push(generated.data.password);

    expect((await call("POST", `/v1/dynamic/leases/${generated.lease_id}/revoke`)).status).toBe(204);
    const again = await call("POST", `/v1/dynamic/leases/${generated.lease_id}/revoke`);
    expect(again.status).toBe(404);
    expect(again.json.error.code).toBe("lease_not_found");
    expect((await call("GET", `/v1/dynamic/leases/${generated.lease_id}`)).status).toBe(404);
  });

  test("lease expires on the server when not renewed", async () => {
    const generated = (await call("POST", "/v1/dynamic/engines/static-db/creds/reader", { ttl: "1s" })).json;
    secrets.push(generated.data.password);

    expect((await call("GET", `/v1/dynamic/leases/${generated.lease_id}`)).status).toBe(200);
    await Bun.sleep(1300);
    expect(dynamicStore(server.state).list().some((lease) => lease.leaseId === generated.lease_id)).toBe(false);
    expect((await call("GET", `/v1/dynamic/leases/${generated.lease_id}`)).json.error.code).toBe("lease_not_found");
  });

  test("unknown engine and role are rejected", async () => {
    const engine = await call("POST", "/v1/dynamic/engines/nope/creds/reader", {});
    expect(engine.status).toBe(400);
    expect(engine.json.error.code).toBe("invalid_config");

    const role = await call("POST", "/v1/dynamic/engines/static-db/creds/nope", {});
    expect(role.status).toBe(400);
    expect(role.json.error.code).toBe("invalid_role");
  });

  test("invalid ttl is invalid_duration", async () => {
    const response = await call("POST", "/v1/dynamic/engines/static-db/creds/reader", { ttl: "forever" });
    expect(response.status).toBe(400);
    expect(response.json.error.code).toBe("invalid_duration");
  });

  test("generate and renew draw from their rate-limit buckets", async () => {
    const limited = await startDevServer({ port: 0, config: { engines: STATIC_ENGINES }, rateLimits: { dynamic: 2, lease: 1 } });
    try {
      const first = await call("POST", "/v1/dynamic/engines/static-db/creds/reader", {}, limited);
      await call("POST", "/v1/dynamic/engines/static-db/creds/reader", {}, limited);
      const third = await call("POST", "/v1/dynamic/engines/static-db/creds/reader", {}, limited);
      expect(third.status).toBe(429);
      expect(third.json.error.details.category).toBe("dynamic");

      expect((await call("POST", `/v1/dynamic/leases/${first.json.lease_id}/renew`, {}, limited)).status).toBe(200);
      const renew = await call("POST", `/v1/dynamic/leases/${first.json.lease_id}/renew`, {}, limited);
      expect(renew.status).toBe(429);
      expect(renew.json.error.details.category).toBe("lease");
    } finally {
      await limited.stop();
    }
  });

  test("another identity cannot renew or revoke a lease", async () => {
    const generated = (await call("POST", "/v1/dynamic/engines/static-db/creds/reader", {})).json;
    secrets.push(generated.data.password);
    const other = server.state.tokens.issue("sa:other", "service_account");
    secrets.push(other.token);

    const response = await fetch(`${server.url}/v1/dynamic/leases/${generated.lease_id}/revoke`, {
      method: "POST",
      headers: { authorization: `Bearer ${other.token}` },
    });
    expect(response.status).toBe(403);
  });
});

describe("scramVerifier", () => {
  test("scramVerifier matches RFC 7677's test vector", () => {
    // RFC 7677 section 3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations.
    const verifier = scramVerifier("pencil", Buffer.from("W22ZaJ0SNY7soEsUEjb6gQ==", "base64"), 4096);
    const match = /^SCRAM-SHA-256\$4096:W22ZaJ0SNY7soEsUEjb6gQ==\$([^:]+):(.+)$/.exec(verifier);
    expect(match).not.toBeNull();
    const storedKey = Buffer.from(match![1]!, "base64");
    const serverKey = Buffer.from(match![2]!, "base64");

    const nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const authMessage = `n=user,r=rOprNGfwEbeRWgbNEkqO,r=${nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=${nonce}`;
    const serverSignature = createHmac("sha256", serverKey).update(authMessage).digest("base64");
    expect(serverSignature).toBe("6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");

    const clientSignature = createHmac("sha256", storedKey).update(authMessage).digest();
    const proof = Buffer.from("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=", "base64");
    const clientKey = Buffer.from(proof.map((byte, index) => byte ^ clientSignature[index]!));
    expect(createHash("sha256").update(clientKey).digest().equals(storedKey)).toBe(true);
  });
});

const unavailable = postgresUnavailable();
if (unavailable) console.log(`Skipping PostgreSQL tests of the dev server: ${unavailable}`);

describe.skipIf(unavailable !== undefined)("dev dynamic routes with the postgresql plugin", () => {
  let cluster: PostgresCluster;
  let pgServer: DevServer;

  beforeAll(async () => {
    cluster = await startPostgres();
    pgServer = await startDevServer({
      port: 0,
      config: {
        engines: {
          "postgres-prod": {
            plugin: "postgresql",
            connection_url: cluster.url,
            max_ttl: "1h",
            roles: {
              readonly: {
                default_ttl: "10m",
                creation_statements: ['GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}"'],
              },
            },
          },
        },
      },
    });
    secrets.push(pgServer.rootToken, new URL(cluster.url).password);
  }, 120_000);

  afterAll(async () => {
    await pgServer?.stop();
    await cluster?.stop();
  });

  test("generated credentials log in and read; revoke drops the role", async () => {
    const { status, json } = await call("POST", "/v1/dynamic/engines/postgres-prod/creds/readonly", { ttl: "5m" }, pgServer);
    expect(status).toBe(200);
    secrets.push(json.data.password);
    expect(json.data).toMatchObject({ host: "127.0.0.1", port: cluster.port, database: "app" });

    expect(await readAsUser(cluster, json.data.username, json.data.password)).toBe(2);
    expect(await generatedRoles(cluster.sql)).toContain(json.data.username);

    const validUntil = await cluster.sql`SELECT rolvaliduntil FROM pg_roles WHERE rolname = ${json.data.username}`;
    expect(Math.abs(new Date(validUntil[0]!.rolvaliduntil).getTime() - Date.parse(json.expires_at))).toBeLessThan(1000);

    expect((await call("POST", `/v1/dynamic/leases/${json.lease_id}/revoke`, undefined, pgServer)).status).toBe(204);
    expect(await generatedRoles(cluster.sql)).not.toContain(json.data.username);
    await expect(readAsUser(cluster, json.data.username, json.data.password)).rejects.toThrow();
  });

  test("renew moves VALID UNTIL", async () => {
    const { json } = await call("POST", "/v1/dynamic/engines/postgres-prod/creds/readonly", { ttl: "2m" }, pgServer);
    secrets.push(json.data.password);

    const renewed = await call("POST", `/v1/dynamic/leases/${json.lease_id}/renew`, { increment: "20m" }, pgServer);
    expect(renewed.status).toBe(200);
    const rows = await cluster.sql`SELECT rolvaliduntil FROM pg_roles WHERE rolname = ${json.data.username}`;
    expect(Math.abs(new Date(rows[0]!.rolvaliduntil).getTime() - Date.parse(renewed.json.expires_at))).toBeLessThan(1000);

    await call("POST", `/v1/dynamic/leases/${json.lease_id}/revoke`, undefined, pgServer);
  });

  test("revoke ends the role's open sessions", async () => {
    const { json } = await call("POST", "/v1/dynamic/engines/postgres-prod/creds/readonly", {}, pgServer);
    secrets.push(json.data.password);
    const postgres = (await import("postgres")).default;
    const session = postgres(cluster.urlFor(json.data.username, json.data.password), { max: 1, onnotice: () => {} });
    await session`SELECT 1`;

    expect((await call("POST", `/v1/dynamic/leases/${json.lease_id}/revoke`, undefined, pgServer)).status).toBe(204);
    await expect(session`SELECT 1`).rejects.toThrow();
    await session.end({ timeout: 1 }).catch(() => {});
    expect(await generatedRoles(cluster.sql)).not.toContain(json.data.username);
  });

  test("expiry on the server drops the role", async () => {
    const { json } = await call("POST", "/v1/dynamic/engines/postgres-prod/creds/readonly", { ttl: "1s" }, pgServer);
    secrets.push(json.data.password);
    expect(await generatedRoles(cluster.sql)).toContain(json.data.username);

    for (let i = 0; i < 40 && (await generatedRoles(cluster.sql)).includes(json.data.username); i++) await Bun.sleep(100);
    expect(await generatedRoles(cluster.sql)).not.toContain(json.data.username);
  });

  test("stopping the dev server drops every role it created", async () => {
    const other = await startDevServer({ port: 0, config: { engines: { pg: { plugin: "postgresql", connection_url: cluster.url, roles: { r: {} } } } } });
    secrets.push(other.rootToken);
    const { json } = await call("POST", "/v1/dynamic/engines/pg/creds/r", {}, other);
    secrets.push(json.data.password);
    expect(await generatedRoles(cluster.sql)).toContain(json.data.username);

    await other.stop();
    expect(await generatedRoles(cluster.sql)).not.toContain(json.data.username);
  });
});

describe("dev dynamic logs", () => {
  test("logs hold no password, token or connection URL", () => {
    const text = logs.join("\n");
    expect(text).toContain("lease generated");
    for (const secret of secrets) expect(text).not.toContain(secret);
  });
});
