/**
 * A throwaway PostgreSQL cluster for tests: initdb in a temporary directory, started on a free
 * port of 127.0.0.1 with SCRAM password authentication over TCP, stopped and removed by `stop()`.
 * initdb refuses to run as root, so as root every server command runs as the `postgres` user
 * (Debian's package creates it) through runuser, and the directory belongs to that user.
 *
 * Tests that need PostgreSQL call `postgresUnavailable()` first and skip with its reason.
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";

export interface PostgresCluster {
  /** Superuser connection URL with password, for the dev server's `connection_url`. */
  url: string;
  host: string;
  port: number;
  /** Database the tests use; it has a table `accounts` with two rows. */
  database: string;
  /** Runs a query as the superuser. */
  sql: postgres.Sql;
  /** Connection URL for another user of the test database. */
  urlFor(username: string, password: string): string;
  stop(): Promise<void>;
}

/** Returns why PostgreSQL cannot be started here, or undefined when it can. */
export function postgresUnavailable(): string | undefined {
  const bin = postgresBin();
  if (!bin) return "PostgreSQL server binaries not found (install Debian's postgresql package, or set PG_BIN)";
  if (process.getuid?.() === 0 && !userExists("postgres")) return "running as root but there is no postgres user to run initdb as";
  return undefined;
}

/**
 * Starts a cluster and creates the database `app` with a table `accounts`.
 *
 * @throws Error with initdb's or pg_ctl's output when the cluster does not start.
 */
export async function startPostgres(): Promise<PostgresCluster> {
  const bin = postgresBin();
  if (!bin) throw new Error(postgresUnavailable());

  const asRoot = process.getuid?.() === 0;
  const dir = mkdtempSync(join(tmpdir(), "pg-test-"));
  const data = join(dir, "data");
  const password = randomBytes(18).toString("base64url");
  const pwfile = join(dir, "pwfile");
  writeFileSync(pwfile, password + "\n", { mode: 0o600 });

  if (asRoot) {
    const ids = spawnSync("id", ["-u", "postgres"], { encoding: "utf8" });
    const gids = spawnSync("id", ["-g", "postgres"], { encoding: "utf8" });
    chownSync(dir, Number(ids.stdout.trim()), Number(gids.stdout.trim()));
    chownSync(pwfile, Number(ids.stdout.trim()), Number(gids.stdout.trim()));
  }
  chmodSync(dir, 0o700);

  const run = (command: string, args: string[]): void => {
    const full = asRoot ? ["runuser", ["-u", "postgres", "--", join(bin, command), ...args]] as const : [join(bin, command), args] as const;
    const result = spawnSync(full[0], [...full[1]], { encoding: "utf8", timeout: 120_000 });
    if (result.status !== 0) throw new Error(`${command} failed (${result.status}): ${result.stderr || result.stdout}`);
  };

  run("initdb", ["-D", data, "-U", "postgres", "--pwfile", pwfile, "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"]);

  let port = 0;
  for (let attempt = 1; ; attempt++) {
    port = await freePort();
    const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200`;
    try {
      run("pg_ctl", ["-D", data, "-o", options, "-l", join(dir, "server.log"), "-w", "-t", "60", "start"]);
      break;
    } catch (error) {
      if (attempt >= 3) throw error;
    }
  }

  const url = `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/app`;
  const admin = postgres(`postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`, { max: 1, onnotice: () => {} });
  await admin.unsafe("CREATE DATABASE app");
  await admin.end();

  const sql = postgres(url, { max: 2, onnotice: () => {}, idle_timeout: 5 });
  await sql.unsafe("CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL)");
  await sql.unsafe("INSERT INTO accounts VALUES (1, 'alice'), (2, 'bob')");

  let stopped = false;
  return {
    url,
    host: "127.0.0.1",
    port,
    database: "app",
    sql,
    urlFor: (username, userPassword) => `postgres://${encodeURIComponent(username)}:${encodeURIComponent(userPassword)}@127.0.0.1:${port}/app`,
    async stop() {
      if (stopped) return;
      stopped = true;
      await sql.end({ timeout: 5 }).catch(() => {});
      try {
        run("pg_ctl", ["-D", data, "-m", "immediate", "-w", "stop"]);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

/** Names of the login roles the dev server generated (`v_...`). */
export async function generatedRoles(sql: postgres.Sql): Promise<string[]> {
  const rows = await sql`SELECT rolname FROM pg_roles WHERE rolname LIKE 'v\\_%' ORDER BY rolname`;
  return rows.map((row) => String(row.rolname));
}

/** Logs in as `username` and reads the `accounts` table; rejects when the login or the read fails. */
export async function readAsUser(cluster: PostgresCluster, username: string, password: string): Promise<number> {
  const sql = postgres(cluster.urlFor(username, password), { max: 1, onnotice: () => {}, connect_timeout: 10 });
  try {
    const rows = await sql`SELECT count(*)::int AS count FROM accounts`;
    return Number(rows[0]!.count);
  } finally {
    await sql.end({ timeout: 2 }).catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------

function postgresBin(): string | undefined {
  if (process.env.PG_BIN && existsSync(join(process.env.PG_BIN, "initdb"))) return process.env.PG_BIN;

  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((name) => existsSync(join(root, name, "bin", "initdb")))
    .sort((a, b) => Number(b) - Number(a));
  return versions[0] === undefined ? undefined : join(root, versions[0], "bin");
}

function userExists(name: string): boolean {
  return spawnSync("id", ["-u", name]).status === 0;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => resolve(typeof address === "object" && address ? address.port : 0));
    });
  });
}
