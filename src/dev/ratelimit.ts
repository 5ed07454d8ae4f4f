/**
 * Token buckets per (identity, category), refilled continuously over one minute, with the limits
 * of the managed ScaiVault service. `take` also records the bucket on the request so that the
 * app sets `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`.
 */
import type { Context } from "hono";
import { ApiError } from "./api-error.ts";
import type { DevEnv } from "./context.ts";

/** Rate-limit buckets. The contract names no limit for writes, so PUT, DELETE and rotate take `read` units. */
export type RateLimitCategory = "read" | "batch" | "poll" | "subscription" | "dynamic" | "lease" | "whoami";

/** Requests per minute per identity, as the managed service allows them. */
export const DEFAULT_RATE_LIMITS: Readonly<Record<RateLimitCategory, number>> = {
  read: 1000,
  batch: 100,
  poll: 240,
  subscription: 20,
  dynamic: 100,
  lease: 100,
  whoami: 300,
};

/** State of one bucket after a request, for the response headers. */
export interface RateLimitStatus {
  category: RateLimitCategory;
  allowed: boolean;
  limit: number;
  remaining: number;
  /** Unix seconds when the bucket is full again. */
  reset: number;
  /** Seconds until the next unit is available; 0 when allowed. */
  retryAfter: number;
}

export interface RateLimiterOptions {
  /** `false` turns every limit off; an object overrides single categories. @default true */
  limits?: boolean | Partial<Record<RateLimitCategory, number>>;
  now?: () => number;
}

/** Token buckets for every identity and category. */
export class RateLimiter {
  readonly enabled: boolean;
  readonly limits: Readonly<Record<RateLimitCategory, number>>;
  readonly #now: () => number;
  readonly #buckets = new Map<string, { tokens: number; updatedAt: number }>();

  constructor(options: RateLimiterOptions = {}) {
    const { limits = true, now = Date.now } = options;
    this.enabled = limits !== false;
    this.limits = { ...DEFAULT_RATE_LIMITS, ...(typeof limits === "object" ? limits : {}) };
    this.#now = now;

    for (const [category, limit] of Object.entries(this.limits)) {
      if (!Number.isInteger(limit) || limit < 0) {
        throw new RangeError(`Invalid rate limit for "${category}": expected a whole number >= 0, got ${limit}`);
      }
    }
  }

  /** Takes `units` from the bucket of (`identityId`, `category`) when it contains enough. */
  take(identityId: string, category: RateLimitCategory, units = 1): RateLimitStatus {
    return this.#update(identityId, category, units);
  }

  /** Returns the bucket's state without taking anything. */
  peek(identityId: string, category: RateLimitCategory): RateLimitStatus {
    return this.#update(identityId, category, 0);
  }

  /** Empties every bucket's history, so each starts full again. */
  reset(): void {
    this.#buckets.clear();
  }

  #update(identityId: string, category: RateLimitCategory, units: number): RateLimitStatus {
    const limit = this.limits[category];
    const now = this.#now();
    const perMs = limit / 60_000;
    const key = `${identityId}\u0000${category}`;

    const bucket = this.#buckets.get(key) ?? { tokens: limit, updatedAt: now };
    bucket.tokens = Math.min(limit, bucket.tokens + (now - bucket.updatedAt) * perMs);
    bucket.updatedAt = now;
    this.#buckets.set(key, bucket);

    const allowed = !this.enabled || bucket.tokens >= units;
    if (allowed && this.enabled) bucket.tokens -= units;

    const missing = Math.max(0, units - bucket.tokens);
    // A limit of 0 never refills: tell the client to come back after the whole window.
    let retryAfter = 0;
    if (!allowed) retryAfter = perMs === 0 ? 60 : Math.max(1, Math.ceil(missing / perMs / 1000));
    const fullInMs = perMs === 0 ? 60_000 : (limit - bucket.tokens) / perMs;

    return {
      category,
      allowed,
      limit,
      remaining: this.enabled ? Math.floor(bucket.tokens) : limit,
      reset: Math.ceil((now + fullInMs) / 1000),
      retryAfter,
    };
  }
}

/**
 * Takes one unit for the request's identity and records the bucket for the response headers.
 *
 * @throws ApiError `429 rate_limited` with `Retry-After` when the bucket is empty.
 */
export function enforceRateLimit(c: Context<DevEnv>, limiter: RateLimiter, category: RateLimitCategory): void {
  const identity = c.get("identity");
  if (!identity) throw new ApiError(401, "authentication_required", "Send Authorization: Bearer <token>");

  const status = limiter.take(identity.id, category);
  c.set("rateLimit", status);

  if (!status.allowed) {
    throw new ApiError(429, "rate_limited", `Rate limit of ${status.limit} ${category} requests per minute exceeded`, {
      details: { category, limit: status.limit },
      retryAfter: status.retryAfter,
    });
  }
}

/** Sets the `X-RateLimit-*` headers from `status`. */
export function setRateLimitHeaders(headers: Headers, status: RateLimitStatus): void {
  headers.set("X-RateLimit-Limit", String(status.limit));
  headers.set("X-RateLimit-Remaining", String(status.remaining));
  headers.set("X-RateLimit-Reset", String(status.reset));
}
