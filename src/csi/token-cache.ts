/**
 * ScaiVault tokens per service account. Every pod of one service account maps to the same
 * ScaiVault identity, so one exchange serves all of them until the token nears its expiry (the
 * reuse rule of `reuseDeadline`). Concurrent mounts of one service account share one exchange.
 *
 * The cache trusts the pod context of the Mount request, which the kubelet fills in. Before a
 * cached token is used for a pod, `serviceAccountKey` checks that pod's own projected token, so
 * a pod cannot borrow another service account's token by naming it.
 */
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
 * service account. A cached ScaiVault token skips the exchange in which ScaiVault would check the
 * pod's token, so this check must reject every token that ScaiVault would. It requires a JWT whose
 * `sub` is exactly `system:serviceaccount:<pod namespace>:<pod service account>`, whose `exp` is a
 * number in the future, and whose `aud` contains the audience. It does not verify the signature,
 * because the kubelet sent the token and the exchange, which ScaiVault verifies, comes first for
 * each service account.
 *
 * @throws AgentError `auth` naming the problem (never the token) when a check fails.
 */
export function serviceAccountKey(spec: MountSpec, tenantId = "", now = Date.now()): string {
  const { audience, pod, podToken } = spec;
  const podLabel = `pod "${pod.namespace}/${pod.name}"`;
  const tokenLabel = `The service-account token of ${podLabel}`;

  if (podToken.expiresAt !== undefined && podToken.expiresAt <= now) {
    throw expiredError(podLabel, audience, podToken.expiresAt);
  }
  if (!pod.namespace || !pod.serviceAccountName) {
    throw new AgentError("auth", `Cannot tell the service account of ${podLabel}: the request has no pod context; set podInfoOnMount: true on the CSIDriver`);
  }

  let claims: Record<string, unknown>;
  try {
    claims = decodeJwt(podToken.token).payload;
  } catch (error) {
    if (!(error instanceof JwtError)) throw error;
    throw new AgentError("auth", `${tokenLabel} is not a JWT; the kubelet's tokenRequests issue JWTs, so check the CSIDriver`);
  }

  if (typeof claims.exp !== "number" || !Number.isFinite(claims.exp)) {
    throw new AgentError("auth", `${tokenLabel} has no numeric exp claim; Kubernetes service-account tokens always carry one`);
  }
  if (claims.exp * 1000 <= now) throw expiredError(podLabel, audience, claims.exp * 1000);

  let audiences: unknown[] = [];
  if (Array.isArray(claims.aud)) audiences = claims.aud;
  else if (claims.aud !== undefined) audiences = [claims.aud];
  if (!audiences.includes(audience)) {
    throw new AgentError(
      "auth",
      `${tokenLabel} is for the audience ${JSON.stringify(claims.aud ?? [])}, not "${audience}": ` +
        `set tokenRequests audience "${audience}" on the CSIDriver secrets-store.csi.k8s.io, or set the SecretProviderClass parameter audience to match`,
    );
  }

  const expected = `system:serviceaccount:${pod.namespace}:${pod.serviceAccountName}`;
  if (claims.sub !== expected) {
    const match = typeof claims.sub === "string" ? SERVICE_ACCOUNT_SUBJECT.exec(claims.sub) : null;
    const owner = match ? `belongs to "${match[1]}/${match[2]}"` : "has no sub claim of the form system:serviceaccount:<namespace>:<name>";
    throw new AgentError("auth", `${tokenLabel} ${owner}, not to the pod's service account "${pod.namespace}/${pod.serviceAccountName}"`);
  }

  return JSON.stringify([spec.baseUrl, audience, spec.role ?? "", tenantId, pod.namespace, pod.serviceAccountName]);
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
