/**
 * Credential plugins of the dev server's dynamic engines. A plugin creates one credential per
 * lease, moves its expiry on renew and removes it on revoke or expiry:
 * - `static`: a generated username and password plus the role's `data`; nothing outside the server.
 * - `postgresql`: a real PostgreSQL login role (see `postgres.ts`).
 */
import { randomBytes } from "node:crypto";
import type { EngineConfig, RoleConfig } from "./dynamic-config.ts";

/** A credential as a plugin created it. Its `data` contains the password and goes only into the generate response. */
export interface IssuedCredential {
  username: string;
  data: Record<string, unknown>;
}

/** Credential operations of an engine's plugin. Every method may throw, and the store retries later. */
export interface CredentialPlugin {
  /** Creates a credential that stops working at `expiresAt` (epoch milliseconds) at the latest. */
  create(role: RoleConfig, expiresAt: number): Promise<IssuedCredential>;
  /** Moves the credential's expiry to `expiresAt`. */
  renew(role: RoleConfig, username: string, expiresAt: number): Promise<void>;
  /** Removes the credential; removing one that is already gone succeeds. */
  revoke(role: RoleConfig, username: string): Promise<void>;
  /** Releases connections. */
  close(): Promise<void>;
}

/**
 * Creates the plugin of `engine`. The postgresql module is loaded only when an engine uses it.
 */
export async function createPlugin(engine: EngineConfig): Promise<CredentialPlugin> {
  if (engine.plugin === "static") return new StaticPlugin();

  const { PostgresPlugin } = await import("./postgres.ts");
  return new PostgresPlugin(engine);
}

/**
 * Returns a role name for a lease: `v_<role>_<10 random characters>`, lower case, at most 63
 * bytes (PostgreSQL's identifier limit), so it needs no quoting and is unique per lease.
 */
export function generateUsername(role: string): string {
  const safeRole = role.replace(/[^a-z0-9_]/g, "_").slice(0, 40);
  return `v_${safeRole}_${randomString(10, LOWER_ALPHANUMERIC)}`;
}

/** Returns a password of 32 random letters and digits: about 190 bits, safe in any quoting. */
export function generatePassword(): string {
  return randomString(32, ALPHANUMERIC);
}

/** The `static` plugin: generated credentials that exist only in the generate response. */
export class StaticPlugin implements CredentialPlugin {
  async create(role: RoleConfig): Promise<IssuedCredential> {
    const username = generateUsername(role.name);
    return { username, data: { ...structuredClone(role.data), username, password: generatePassword() } };
  }

  async renew(): Promise<void> {}

  async revoke(): Promise<void> {}

  async close(): Promise<void> {}
}

// ---------------------------------------------------------------------------------------------

const LOWER_ALPHANUMERIC = "abcdefghijklmnopqrstuvwxyz0123456789";
const ALPHANUMERIC = LOWER_ALPHANUMERIC + "ABCDEFGHIJKLMNOPQRSTUVWXYZ";

function randomString(length: number, alphabet: string): string {
  const chars: string[] = [];

  // Rejection sampling keeps every character equally likely.
  const limit = 256 - (256 % alphabet.length);
  while (chars.length < length) {
    for (const byte of randomBytes(length * 2)) {
      if (byte < limit && chars.length < length) chars.push(alphabet[byte % alphabet.length]!);
    }
  }
  return chars.join("");
}
