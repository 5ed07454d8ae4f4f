/**
 * The `postgresql` credential plugin of the dev server: one real login role per lease on the
 * server of the engine's `connection_url`. Its admin needs CREATEROLE. To end the sessions of a
 * revoked role it also needs superuser or membership in pg_signal_backend.
 *
 * - create: `CREATE ROLE ... LOGIN PASSWORD ... VALID UNTIL <expiry>`, then the role's
 *   `creation_statements`, in one transaction. The password is sent as a SCRAM-SHA-256 verifier
 *   computed here, so the plain password never reaches the server or its statement log.
 * - renew: `ALTER ROLE ... VALID UNTIL <new expiry>`, then `renew_statements`.
 * - revoke and expiry: `ALTER ROLE ... NOLOGIN`, end the role's sessions, then `revocation_statements`
 *   (default: `REASSIGN OWNED BY` the admin and `DROP OWNED BY`) and `DROP ROLE`, in one transaction.
 *
 * NOTE: DROP OWNED reaches only the database of the connection URL; grants in other databases
 * need `revocation_statements`, or DROP ROLE fails and the store retries at the next attempt.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes } from "node:crypto";
import postgres from "postgres";
import type { EngineConfig, RoleConfig } from "./dynamic-config.ts";
import { generatePassword, generateUsername, type CredentialPlugin, type IssuedCredential } from "./dynamic-plugins.ts";

/** Connections the plugin keeps to one PostgreSQL server. */
const POOL_SIZE = 4;

export class PostgresPlugin implements CredentialPlugin {
  readonly #engine: string;
  readonly #sql: postgres.Sql;
  readonly #defaults: Record<string, unknown>;

  constructor(engine: EngineConfig) {
    const url = new URL(engine.connectionUrl!);
    this.#engine = engine.name;
    this.#defaults = {
      host: url.hostname,
      port: Number(url.port || 5432),
      database: decodeURIComponent(url.pathname.slice(1)) || "postgres",
    };
    this.#sql = postgres(engine.connectionUrl!, {
      max: POOL_SIZE,
      idle_timeout: 30,
      connect_timeout: 10,
      prepare: false,
      onnotice: () => {},
      connection: { application_name: "scaivault-dev" },
    });
  }

  async create(role: RoleConfig, expiresAt: number): Promise<IssuedCredential> {
    const username = generateUsername(role.name);
    const password = generatePassword();
    const expiration = new Date(expiresAt).toISOString();

    await this.#run(`create role "${username}"`, () =>
      this.#sql.begin(async (transaction) => {
        await transaction.unsafe(
          `CREATE ROLE ${quoteIdentifier(username)} WITH LOGIN PASSWORD ${quoteLiteral(scramVerifier(password))} VALID UNTIL ${quoteLiteral(expiration)}`,
        );
        for (const statement of role.creationStatements) await transaction.unsafe(expand(statement, username, expiration));
      }),
    );

    return { username, data: { ...this.#defaults, ...structuredClone(role.data), username, password } };
  }

  async renew(role: RoleConfig, username: string, expiresAt: number): Promise<void> {
    const expiration = new Date(expiresAt).toISOString();

    await this.#run(`renew role "${username}"`, () =>
      this.#sql.begin(async (transaction) => {
        await transaction.unsafe(`ALTER ROLE ${quoteIdentifier(username)} VALID UNTIL ${quoteLiteral(expiration)}`);
        for (const statement of role.renewStatements) await transaction.unsafe(expand(statement, username, expiration));
      }),
    );
  }

  async revoke(role: RoleConfig, username: string): Promise<void> {
    const name = quoteIdentifier(username);

    await this.#run(`drop role "${username}"`, async () => {
      const found = await this.#sql`SELECT 1 FROM pg_roles WHERE rolname = ${username}`;
      if (found.length === 0) return;

      // No new sessions from here on; then end the open ones, which DROP ROLE would leave running.
      await this.#sql.unsafe(`ALTER ROLE ${name} NOLOGIN`);
      await this.#sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ${username}`;

      await this.#sql.begin(async (transaction) => {
        const statements = role.revocationStatements.length
          ? role.revocationStatements.map((statement) => expand(statement, username, ""))
          : [`REASSIGN OWNED BY ${name} TO CURRENT_USER`, `DROP OWNED BY ${name}`];
        for (const statement of statements) await transaction.unsafe(statement);
        await transaction.unsafe(`DROP ROLE IF EXISTS ${name}`);
      });
    });
  }

  async close(): Promise<void> {
    await this.#sql.end({ timeout: 5 });
  }

  /** Runs `work` and turns a failure into an error that names the engine and the step, with PostgreSQL's code. */
  async #run<T>(what: string, work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (error) {
      // The driver keeps the statement on the error; only the server's code and message are kept.
      const code = (error as { code?: string }).code;
      throw new Error(`Cannot ${what} on engine "${this.#engine}": ${code ? `${code} ` : ""}${(error as Error).message}`);
    }
  }
}

/**
 * Returns PostgreSQL's SCRAM-SHA-256 verifier of `password` (RFC 5802, RFC 7677, with
 * PostgreSQL's 4096 iterations and 16-byte salt), the form that `CREATE ROLE ... PASSWORD`
 * stores as is. The passwords generated here are ASCII letters and digits, which SASLprep
 * leaves unchanged.
 */
export function scramVerifier(password: string, salt: Buffer = randomBytes(16), iterations = 4096): string {
  const salted = pbkdf2Sync(password, salt, iterations, 32, "sha256");
  const clientKey = createHmac("sha256", salted).update("Client Key").digest();
  const storedKey = createHash("sha256").update(clientKey).digest();
  const serverKey = createHmac("sha256", salted).update("Server Key").digest();
  return `SCRAM-SHA-256$${iterations}:${salt.toString("base64")}$${storedKey.toString("base64")}:${serverKey.toString("base64")}`;
}

// ---------------------------------------------------------------------------------------------

function quoteIdentifier(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** Quotes a standard-conforming string literal; the values quoted here never hold a backslash. */
function quoteLiteral(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}

/** Fills `{{name}}` and `{{expiration}}`; generated names hold only a-z, 0-9 and `_`. */
function expand(statement: string, username: string, expiration: string): string {
  return statement.replaceAll("{{name}}", username).replaceAll("{{expiration}}", expiration);
}
