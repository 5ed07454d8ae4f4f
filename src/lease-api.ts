/**
 * The four lease calls of ScaiVault's dynamic-credentials API: generate, renew, revoke and look
 * up. Paths, bodies and response parsing come from `contract.ts`, where the chosen wire shapes live.
 *
 * Times in the returned leases are on this machine's clock. The expiry is the local time of the
 * response plus `lease_duration`. The maximum expiry keeps the server's distance between
 * `expires_at` and `max_expires_at`. So a skewed clock on either side neither shortens nor
 * stretches a lease.
 */
import type { ScaiVaultClient } from "./client.ts";
import { ContractError, generateRequest, leasePaths, parseLease, renewRequest, type Lease } from "./contract.ts";
import { AgentError } from "./errors.ts";

/** A lease with times on the local clock. */
export interface LocalLease {
  leaseId: string;
  /** Milliseconds granted by the call, from `grantedAt`. */
  durationMs: number;
  renewable: boolean;
  /** Local epoch milliseconds when the response arrived. */
  grantedAt: number;
  /** Local epoch milliseconds: `grantedAt + durationMs`. */
  expiresAt: number;
  /** Local epoch milliseconds after which the lease cannot be renewed; undefined when the server states none. */
  maxExpiresAt?: number;
  /** The credential; present only after generate. */
  data?: Record<string, unknown>;
}

/**
 * Generates a credential of `engine`/`role` for `ttlMs` (the role's default when undefined).
 * Not repeated after a failure that the server may have acted on, because each call makes a
 * new credential.
 *
 * @throws AgentError from the client, or `server` when the response has no lease id or data.
 */
export async function generateLease(
  client: ScaiVaultClient,
  engine: string,
  role: string,
  ttlMs: number | undefined,
  options: { signal?: AbortSignal; now?: () => number } = {},
): Promise<LocalLease> {
  const response = await client.request("POST", leasePaths.generate(engine, role), {
    route: "dynamic.generate",
    body: generateRequest(ttlMs === undefined ? undefined : ttlMs / 1000),
    idempotent: false,
    signal: options.signal,
  });

  const lease = toLocal(parse(response.body, response.requestId), options.now);
  if (!lease.data) {
    throw new AgentError("server", `Unexpected response from ScaiVault: lease "${lease.leaseId}" of ${engine}/${role} has no data`, {
      requestId: response.requestId,
    });
  }
  return lease;
}

/**
 * Renews a lease by `incrementMs` from now. The grant may be shorter than asked near the
 * lease's maximum lifetime.
 *
 * @throws AgentError `lease` (server code `lease_not_renewable`) at the maximum lifetime,
 * `not_found` (`lease_not_found`) when the lease is gone, or another client error.
 */
export async function renewLease(
  client: ScaiVaultClient,
  leaseId: string,
  incrementMs: number,
  options: { signal?: AbortSignal; now?: () => number } = {},
): Promise<LocalLease> {
  const response = await client.request("POST", leasePaths.renew(leaseId), {
    route: "leases.renew",
    body: renewRequest(incrementMs / 1000),
    signal: options.signal,
  });
  return toLocal(parse(response.body, response.requestId), options.now);
}

/**
 * Revokes a lease. A lease the server does not know (`404 lease_not_found`) counts as revoked,
 * because it was revoked before or has expired.
 *
 * @returns `revoked`, or `gone` for a 404.
 * @throws AgentError for every other failure.
 */
export async function revokeLease(client: ScaiVaultClient, leaseId: string, options: { signal?: AbortSignal } = {}): Promise<"revoked" | "gone"> {
  try {
    await client.request("POST", leasePaths.revoke(leaseId), { route: "leases.revoke", signal: options.signal });
    return "revoked";
  } catch (error) {
    if (isLeaseNotFound(error)) return "gone";
    throw error;
  }
}

/**
 * Looks a lease up, for a restarted agent that must know whether a recorded lease still lives.
 *
 * @returns the lease without data, or undefined when the server does not know it (404).
 * @throws AgentError for every other failure.
 */
export async function lookupLease(
  client: ScaiVaultClient,
  leaseId: string,
  options: { signal?: AbortSignal; now?: () => number } = {},
): Promise<LocalLease | undefined> {
  try {
    const response = await client.request("GET", leasePaths.lookup(leaseId), { route: "leases.lookup", signal: options.signal });
    return toLocal(parse(response.body, response.requestId), options.now);
  } catch (error) {
    if (isLeaseNotFound(error)) return undefined;
    throw error;
  }
}

/** True for `404 lease_not_found`, and for a 404 without an error code; a 404 of another code (no such route) is not. */
export function isLeaseNotFound(error: unknown): boolean {
  if (!(error instanceof AgentError) || error.status !== 404) return false;
  return error.serverCode === undefined || error.serverCode === "lease_not_found";
}

// ---------------------------------------------------------------------------------------------

function parse(body: unknown, requestId: string | undefined): Lease {
  try {
    return parseLease(body, Date.now());
  } catch (error) {
    if (!(error instanceof ContractError)) throw error;
    throw new AgentError("server", `Unexpected response from ScaiVault: ${error.message}`, { requestId });
  }
}

function toLocal(lease: Lease, now: () => number = Date.now): LocalLease {
  const grantedAt = now();
  const durationMs = lease.leaseDuration * 1000;
  const expiresAt = grantedAt + durationMs;
  const maxExpiresAt = lease.maxExpiresAt === undefined ? undefined : expiresAt + Math.max(0, lease.maxExpiresAt - lease.expiresAt);

  return {
    leaseId: lease.leaseId,
    durationMs,
    renewable: lease.renewable,
    grantedAt,
    expiresAt,
    maxExpiresAt,
    data: lease.data,
  };
}
