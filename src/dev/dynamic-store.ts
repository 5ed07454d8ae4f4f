/**
 * Leases of the dev server's dynamic engines. Each lease has one credential made by its engine's
 * plugin, an expiry, and a maximum expiry (issue time plus the role's `max_ttl`) that no renewal
 * passes. A lease that is not renewed expires: a timer revokes its credential at the source and
 * the lease is gone (`404 lease_not_found`). Operations on one lease run one after another.
 */
import { errorFields, type Logger } from "../log.ts";
import { ApiError } from "./api-error.ts";
import type { Identity } from "./context.ts";
import type { EngineConfig, RoleConfig } from "./dynamic-config.ts";
import { createPlugin, type CredentialPlugin } from "./dynamic-plugins.ts";
import { randomToken } from "./tokens.ts";

/** A lease as the API returns it; `data` only in the generate response. */
export interface LeaseBody {
  lease_id: string;
  engine: string;
  role: string;
  /** Whole seconds granted by generate or renew; in a look-up, the seconds left, rounded down. */
  lease_duration: number;
  renewable: boolean;
  expires_at: string;
  max_expires_at: string;
  data?: Record<string, unknown>;
}

/** A held lease for tests and stats: ids and the generated username, never the password. */
export interface LeaseSummary {
  leaseId: string;
  engine: string;
  role: string;
  username: string;
  ownerId: string;
  issuedAt: number;
  expiresAt: number;
  maxExpiresAt: number;
  renewals: number;
}

export interface DynamicStoreOptions {
  engines: Map<string, EngineConfig>;
  now: () => number;
  logger: Logger;
  /** Delay before an expiry whose revocation failed is tried again. @default 5000 */
  expiryRetryMs?: number;
}

/** Maximum delay of setTimeout (2^31 - 1 ms, about 24.8 days). */
const MAX_TIMER_MS = 2_147_483_647;

export class DynamicStore {
  readonly #engines: Map<string, EngineConfig>;
  readonly #now: () => number;
  readonly #log: Logger;
  readonly #expiryRetryMs: number;
  readonly #plugins = new Map<string, Promise<CredentialPlugin>>();
  readonly #leases = new Map<string, StoredLease>();
  #closed = false;

  constructor(options: DynamicStoreOptions) {
    this.#engines = options.engines;
    this.#now = options.now;
    this.#log = options.logger;
    this.#expiryRetryMs = options.expiryRetryMs ?? 5000;
  }

  /**
   * Creates a credential of `engineName`/`roleName` that lives `ttlMs` (default: the role's
   * `default_ttl`, capped by its `max_ttl`).
   *
   * @throws ApiError `400 invalid_config` for an unknown engine, `400 invalid_role` for an unknown
   * role, `500 internal_error` when the plugin fails.
   */
  async generate(engineName: string, roleName: string, ttlMs: number | undefined, identity: Identity): Promise<LeaseBody> {
    const engine = this.#engines.get(engineName);
    if (!engine) throw new ApiError(400, "invalid_config", `Dynamic engine "${engineName}" is not configured`, { details: { engine: engineName } });
    const role = engine.roles.get(roleName);
    if (!role) throw new ApiError(400, "invalid_role", `Engine "${engineName}" has no role "${roleName}"`, { details: { engine: engineName, role: roleName } });

    const issuedAt = this.#now();
    const seconds = Math.max(1, Math.floor(Math.min(ttlMs ?? role.defaultTtlMs, role.maxTtlMs) / 1000));
    const expiresAt = issuedAt + seconds * 1000;
    const maxExpiresAt = issuedAt + role.maxTtlMs;

    let credential;
    try {
      credential = await (await this.#plugin(engine)).create(role, expiresAt);
    } catch (error) {
      this.#log.error("cannot create dynamic credential", { engine: engineName, role: roleName, ...errorFields(error) });
      throw new ApiError(500, "internal_error", `Cannot create a credential of engine "${engineName}" role "${roleName}"`);
    }

    const lease: StoredLease = {
      id: `lease_${randomToken(12)}`,
      engine,
      role,
      username: credential.username,
      ownerId: identity.id,
      issuedAt,
      expiresAt,
      maxExpiresAt,
      renewals: 0,
      queue: Promise.resolve(),
    };
    this.#leases.set(lease.id, lease);
    this.#scheduleExpiry(lease);

    this.#log.info("lease generated", { lease: lease.id, engine: engineName, role: roleName, username: lease.username, identity: identity.id, ttlSeconds: seconds });
    return { ...this.#body(lease, seconds), data: credential.data };
  }

  /**
   * Extends a lease by `incrementMs` from now (default: the role's `default_ttl`), at most to its
   * maximum expiry.
   *
   * @throws ApiError `404 lease_not_found`, `403 access_denied`, `400 lease_not_renewable` when
   * less than one second is left before the maximum expiry, `500 internal_error`.
   */
  async renew(leaseId: string, incrementMs: number | undefined, identity: Identity): Promise<LeaseBody> {
    const lease = this.#require(leaseId, identity);

    return this.#serialize(lease, async () => {
      this.#requireAlive(lease);
      const now = this.#now();
      if (lease.maxExpiresAt - now < 1000) {
        throw new ApiError(400, "lease_not_renewable", `Lease "${leaseId}" reached its maximum lifetime; generate a new one`, {
          details: { lease_id: leaseId, max_expires_at: new Date(lease.maxExpiresAt).toISOString() },
        });
      }

      const requestedExpiry = now + Math.max(1000, incrementMs ?? lease.role.defaultTtlMs);
      const expiresAt = Math.min(requestedExpiry, lease.maxExpiresAt);
      try {
        await (await this.#plugin(lease.engine)).renew(lease.role, lease.username, expiresAt);
      } catch (error) {
        this.#log.error("cannot renew dynamic credential", { lease: leaseId, username: lease.username, ...errorFields(error) });
        throw new ApiError(500, "internal_error", `Cannot renew lease "${leaseId}"`);
      }

      lease.expiresAt = expiresAt;
      lease.renewals += 1;
      this.#scheduleExpiry(lease);
      this.#log.info("lease renewed", { lease: leaseId, expiresAt: new Date(expiresAt).toISOString(), capped: expiresAt < requestedExpiry });
      return this.#body(lease, Math.floor((expiresAt - now) / 1000));
    });
  }

  /**
   * Revokes a lease: its credential is removed at the source, then the lease is gone.
   *
   * @throws ApiError `404 lease_not_found`, `403 access_denied`, `500 internal_error` when the
   * plugin fails (the lease stays and may be revoked again).
   */
  async revoke(leaseId: string, identity: Identity): Promise<void> {
    const lease = this.#require(leaseId, identity);

    await this.#serialize(lease, async () => {
      if (!this.#leases.has(leaseId)) throw notFound(leaseId);
      try {
        await this.#revokeAtSource(lease, "revoked");
      } catch {
        throw new ApiError(500, "internal_error", `Cannot revoke lease "${leaseId}"; try again`);
      }
    });
  }

  /**
   * Returns a lease without its data.
   *
   * @throws ApiError `404 lease_not_found`, `403 access_denied`.
   */
  lookup(leaseId: string, identity: Identity): LeaseBody {
    const lease = this.#require(leaseId, identity);
    this.#requireAlive(lease);
    return this.#body(lease);
  }

  /** Returns every lease that has not been revoked or expired. */
  list(): LeaseSummary[] {
    return [...this.#leases.values()].map((lease) => ({
      leaseId: lease.id,
      engine: lease.engine.name,
      role: lease.role.name,
      username: lease.username,
      ownerId: lease.ownerId,
      issuedAt: lease.issuedAt,
      expiresAt: lease.expiresAt,
      maxExpiresAt: lease.maxExpiresAt,
      renewals: lease.renewals,
    }));
  }

  /**
   * Revokes every lease, waiting at most `timeoutMs`, and closes the plugins' connections.
   * Calling it again does nothing.
   */
  async close(timeoutMs = 5000): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;

    const leases = [...this.#leases.values()];
    for (const lease of leases) clearTimeout(lease.timer);
    if (leases.length) this.#log.info("revoking dynamic leases at stop", { leases: leases.length });

    const revokes = Promise.allSettled(leases.map((lease) => this.#serialize(lease, () => this.#revokeAtSource(lease, "revoked at stop"))));
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([revokes, new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
    clearTimeout(timer);

    for (const plugin of this.#plugins.values()) {
      await plugin.then((ready) => ready.close()).catch((error) => this.#log.warn("cannot close credential plugin", errorFields(error)));
    }
  }

  // -------------------------------------------------------------------------------------------

  #plugin(engine: EngineConfig): Promise<CredentialPlugin> {
    let plugin = this.#plugins.get(engine.name);
    if (!plugin) {
      plugin = createPlugin(engine);
      this.#plugins.set(engine.name, plugin);
    }
    return plugin;
  }

  #require(leaseId: string, identity: Identity): StoredLease {
    const lease = this.#leases.get(leaseId);
    if (!lease) throw notFound(leaseId);
    if (identity.type !== "root" && identity.id !== lease.ownerId) {
      throw new ApiError(403, "access_denied", `Lease "${leaseId}" belongs to another identity`, { details: { lease_id: leaseId } });
    }
    return lease;
  }

  /** Treats a lease past its expiry as gone, even while its timer has not yet revoked it. */
  #requireAlive(lease: StoredLease): void {
    if (!this.#leases.has(lease.id) || lease.expiresAt <= this.#now()) throw notFound(lease.id);
  }

  #scheduleExpiry(lease: StoredLease): void {
    clearTimeout(lease.timer);
    if (this.#closed) return;

    const delay = Math.min(MAX_TIMER_MS, Math.max(0, lease.expiresAt - this.#now()));
    lease.timer = setTimeout(() => void this.#expire(lease), delay);
  }

  async #expire(lease: StoredLease): Promise<void> {
    await this.#serialize(lease, async () => {
      if (!this.#leases.has(lease.id) || this.#closed) return;
      if (lease.expiresAt > this.#now()) return this.#scheduleExpiry(lease);

      try {
        await this.#revokeAtSource(lease, "expired");
      } catch {
        lease.timer = setTimeout(() => void this.#expire(lease), this.#expiryRetryMs);
      }
    }).catch(() => {});
  }

  /** Removes the credential at the source, then deletes the lease. A failure is logged and rethrown. */
  async #revokeAtSource(lease: StoredLease, reason: string): Promise<void> {
    try {
      await (await this.#plugin(lease.engine)).revoke(lease.role, lease.username);
    } catch (error) {
      this.#log.error("cannot revoke dynamic credential", { lease: lease.id, username: lease.username, reason, ...errorFields(error) });
      throw error;
    }

    clearTimeout(lease.timer);
    this.#leases.delete(lease.id);
    this.#log.info(`lease ${reason}`, { lease: lease.id, engine: lease.engine.name, role: lease.role.name, username: lease.username });
  }

  #serialize<T>(lease: StoredLease, work: () => Promise<T>): Promise<T> {
    const result = lease.queue.then(work);
    lease.queue = result.then(
      () => {},
      () => {},
    );
    return result;
  }

  /** Builds the response; `grantedSeconds` is what generate or renew granted, else the time left. */
  #body(lease: StoredLease, grantedSeconds?: number): LeaseBody {
    const left = Math.max(0, Math.floor((lease.expiresAt - this.#now()) / 1000));
    return {
      lease_id: lease.id,
      engine: lease.engine.name,
      role: lease.role.name,
      lease_duration: grantedSeconds ?? left,
      renewable: lease.maxExpiresAt - lease.expiresAt >= 1000,
      expires_at: new Date(lease.expiresAt).toISOString(),
      max_expires_at: new Date(lease.maxExpiresAt).toISOString(),
    };
  }
}

// ---------------------------------------------------------------------------------------------

interface StoredLease {
  id: string;
  engine: EngineConfig;
  role: RoleConfig;
  username: string;
  ownerId: string;
  issuedAt: number;
  expiresAt: number;
  maxExpiresAt: number;
  renewals: number;
  timer?: ReturnType<typeof setTimeout>;
  /** Tail of the operations on this lease, so that renew, revoke and expiry never overlap. */
  queue: Promise<void>;
}

function notFound(leaseId: string): ApiError {
  return new ApiError(404, "lease_not_found", `Lease "${leaseId}" not found; it was revoked or has expired`, { details: { lease_id: leaseId } });
}
