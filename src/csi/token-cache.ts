/**
 * ScaiVault tokens per service account. Every pod of one service account maps to the same
 * ScaiVault identity, so one exchange serves all of them until the token nears its expiry (the
 * reuse rule of `reuseDeadline`). Concurrent mounts of one service account share one exchange.
 *
 * The cache trusts the pod context of the Mount request, which the kubelet fills in. Before a
 * cached token is used for a pod, that pod's own projected token must be current, carry the
 * audience and name the same service account in `sub`, so a pod cannot borrow another service
 * account's token by naming it.
 */
import { createHash } from "node:crypto";
import { AgentError } from "../errors.ts";
import { getLogger } from "../log.ts";
import { reuseDeadline } from "../auth.ts";
import type { IssuedToken } from "../contract.ts";
import { decodeJwt, JwtError } from "../dev/jwt.ts";
import type { MountSpec } from "./attributes.ts";

const log = getLogger("csi");

const SERVICE_ACCOUNT_SUBJECT = /^system:serviceaccount:([^:]+):([^:]+)$/;

/** Counts for metrics and tests. */
export interface TokenCacheStats {
  exchanges: number;
  hits: number;
  entries: number;
}

export interface TokenCacheOptions {
  /** Entries kept at most; expired ones go first, then the oldest. @default 10000 */
  maxEntries?: number;
  /** Clock in epoch milliseconds. @default Date.now */
  now?: () => number;
}

/**
 * Checks the pod's projected token against the pod context and returns the cache key of its
 * service account.
 *
 * @throws AgentError `auth` when the token expired, lacks the audience or names another service account.
 */
export function serviceAccountKey(spec: MountSpec, tenantId = "", now = Date.now()): string {
  const { audience, pod, podToken } = spec;
  const podLabel = `pod "${pod.namespace}/${pod.name}"`;

  if (podToken.expiresAt !== undefined && podToken.expiresAt <= now) {
    throw expiredError(podLabel, audience, podToken.expiresAt);
  }

  let claims: Record<string, unknown>;
  try {
    claims = decodeJwt(podToken.token).payload;
  } catch (error) {
    if (!(error instanceof JwtError)) throw error;

    // Not a JWT: nothing ties it to a service account, so it shares no cached token.
    const digest = createHash("sha256").update(podToken.token).digest("hex");
    return JSON.stringify([spec.baseUrl, audience, spec.role ?? "", tenantId, "token", digest]);
  }

  if (typeof claims.exp === "number" && claims.exp * 1000 <= now) throw expiredError(podLabel, audience, claims.exp * 1000);

  if (claims.aud !== undefined) {
    const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
    if (!audiences.includes(audience)) {
      throw new AgentError(
        "auth",
        `The service-account token of ${podLabel} is for the audience ${JSON.stringify(claims.aud)}, not "${audience}": ` +
          `set tokenRequests audience "${audience}" on the CSIDriver secrets-store.csi.k8s.io, or set the SecretProviderClass parameter audience to match`,
      );
    }
  }

  const subject = typeof claims.sub === "string" ? SERVICE_ACCOUNT_SUBJECT.exec(claims.sub) : null;
  const namespace = subject?.[1] ?? pod.namespace;
  const account = subject?.[2] ?? pod.serviceAccountName;
  if ((pod.namespace && namespace !== pod.namespace) || (pod.serviceAccountName && account !== pod.serviceAccountName)) {
    throw new AgentError(
      "auth",
      `The service-account token of ${podLabel} belongs to "${namespace}/${account}", not to the pod's service account "${pod.namespace}/${pod.serviceAccountName}"`,
    );
  }
  if (!namespace || !account) {
    throw new AgentError("auth", `Cannot tell the service account of ${podLabel}: the token has no sub claim and the request no pod context; set podInfoOnMount: true on the CSIDriver`);
  }

  return JSON.stringify([spec.baseUrl, audience, spec.role ?? "", tenantId, namespace, account]);
}

/** ScaiVault tokens by service-account key, with one shared exchange in flight per key. */
export class ServiceAccountTokenCache {
  readonly #entries = new Map<string, { token: string; reuseUntil: number }>();
  readonly #pending = new Map<string, { subjectToken: string; promise: Promise<string> }>();
  readonly #maxEntries: number;
  readonly #now: () => number;
  #exchanges = 0;
  #hits = 0;

  constructor(options: TokenCacheOptions = {}) {
    this.#maxEntries = options.maxEntries ?? 10_000;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Returns the cached token of `key`, or exchanges `subjectToken` for a new one. A mount that
   * waited on another pod's exchange and saw it fail tries its own token once, because the
   * other pod's token may have been the bad one.
   */
  async get(key: string, subjectToken: string, exchange: (subjectToken: string) => Promise<IssuedToken>): Promise<string> {
    const cached = this.#entries.get(key);
    if (cached && this.#now() < cached.reuseUntil) {
      this.#hits += 1;
      return cached.token;
    }
    if (cached) this.#entries.delete(key);

    const pending = this.#pending.get(key);
    if (pending) {
      try {
        return await pending.promise;
      } catch (error) {
        if (pending.subjectToken === subjectToken) throw error;
      }
    }
    return this.#exchange(key, subjectToken, exchange);
  }

  /** Drops the token of `key` after ScaiVault rejected it, unless a newer one replaced it already. */
  invalidate(key: string, token: string): void {
    if (this.#entries.get(key)?.token === token) this.#entries.delete(key);
  }

  stats(): TokenCacheStats {
    return { exchanges: this.#exchanges, hits: this.#hits, entries: this.#entries.size };
  }

  #exchange(key: string, subjectToken: string, exchange: (subjectToken: string) => Promise<IssuedToken>): Promise<string> {
    const existing = this.#pending.get(key);
    if (existing && existing.subjectToken === subjectToken) return existing.promise;

    const entry = { subjectToken, promise: Promise.resolve("") };
    entry.promise = (async () => {
      const issuedAt = this.#now();
      this.#exchanges += 1;
      try {
        const issued = await exchange(subjectToken);
        this.#store(key, issued.token, reuseDeadline(issued, issuedAt));
        return issued.token;
      } finally {
        if (this.#pending.get(key) === entry) this.#pending.delete(key);
      }
    })();

    this.#pending.set(key, entry);
    return entry.promise;
  }

  #store(key: string, token: string, reuseUntil: number): void {
    this.#entries.delete(key);
    this.#entries.set(key, { token, reuseUntil });
    if (this.#entries.size <= this.#maxEntries) return;

    const now = this.#now();
    for (const [entryKey, entry] of this.#entries) {
      if (entry.reuseUntil <= now) this.#entries.delete(entryKey);
    }
    // Map iteration follows insertion order, so the first keys are the oldest.
    for (const entryKey of this.#entries.keys()) {
      if (this.#entries.size <= this.#maxEntries) break;
      this.#entries.delete(entryKey);
    }
    log.debug("Token cache trimmed", { entries: this.#entries.size });
  }
}

// ---------------------------------------------------------------------------------------------

function expiredError(podLabel: string, audience: string, expiresAt: number): AgentError {
  return new AgentError(
    "auth",
    `The service-account token of ${podLabel} for audience "${audience}" expired at ${new Date(expiresAt).toISOString()}; ` +
      "the kubelet sends a fresh one with the next mount, so check the node's clock if this repeats",
  );
}
