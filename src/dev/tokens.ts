/**
 * Bearer tokens of the dev server: the root token, which never expires, and opaque `svt_...`
 * tokens issued by `POST /v1/auth/exchange`, which expire after the configured lifetime.
 */
import { ApiError } from "./api-error.ts";
import type { Identity } from "./context.ts";

/** A token issued by an exchange. */
export interface IssuedToken {
  token: string;
  identity: Identity;
  issuedAt: number;
  expiresAt: number;
}

/** Tokens a `TokenStore` keeps by default. */
export const MAX_STORED_TOKENS = 100_000;

/**
 * The tokens the server has issued, kept after expiry and revocation to name the reason on use.
 * Past `maxTokens`, the oldest token is forgotten and then reads as `token_invalid`: every token
 * has the same lifetime, so the oldest is the first to expire.
 */
export class TokenStore {
  readonly #rootToken: string;
  readonly #ttlMs: number;
  readonly #now: () => number;
  readonly #maxTokens: number;
  readonly #tokens = new Map<string, IssuedToken & { revoked: boolean }>();

  constructor(options: { rootToken: string; ttlSeconds: number; now: () => number; /** @default MAX_STORED_TOKENS */ maxTokens?: number }) {
    this.#rootToken = options.rootToken;
    this.#ttlMs = options.ttlSeconds * 1000;
    this.#now = options.now;
    this.#maxTokens = options.maxTokens ?? MAX_STORED_TOKENS;
  }

  /** Issues a new token for `identityId`, valid for the configured lifetime. */
  issue(identityId: string, type: Identity["type"]): IssuedToken {
    const issuedAt = this.#now();
    const expiresAt = issuedAt + this.#ttlMs;
    const token = `svt_${randomToken(24)}`;
    const issued = { token, identity: { id: identityId, type, tokenExpiresAt: expiresAt }, issuedAt, expiresAt };

    this.#tokens.set(token, { ...issued, revoked: false });
    if (this.#tokens.size > this.#maxTokens) {
      const oldest = this.#tokens.keys().next().value;
      if (oldest !== undefined) this.#tokens.delete(oldest);
    }
    return issued;
  }

  /**
   * Returns the identity of a bearer token.
   *
   * @throws ApiError `401 token_revoked`, `token_expired` or `token_invalid`.
   */
  resolve(token: string): Identity {
    if (token === this.#rootToken) return { id: "root", type: "root", tokenExpiresAt: null };

    const issued = this.#tokens.get(token);
    if (!issued) throw new ApiError(401, "token_invalid", "The bearer token is not known to this server");
    if (issued.revoked) throw new ApiError(401, "token_revoked", "The bearer token has been revoked");
    if (issued.expiresAt <= this.#now()) {
      throw new ApiError(401, "token_expired", `The bearer token expired at ${new Date(issued.expiresAt).toISOString()}`);
    }
    return { ...issued.identity };
  }

  /** Revokes every issued token (not the root token) and returns how many were still valid. */
  revokeAll(): number {
    let count = 0;
    const now = this.#now();

    for (const issued of this.#tokens.values()) {
      if (!issued.revoked && issued.expiresAt > now) count += 1;
      issued.revoked = true;
    }
    return count;
  }

  /** Number of issued tokens that are neither expired nor revoked. */
  get activeCount(): number {
    const now = this.#now();
    return [...this.#tokens.values()].filter((issued) => !issued.revoked && issued.expiresAt > now).length;
  }
}

/** Returns `bytes` random bytes as base64url: 24 bytes give 32 characters. */
export function randomToken(bytes: number): string {
  const buffer = crypto.getRandomValues(new Uint8Array(bytes));
  return btoa(String.fromCharCode(...buffer)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
