/**
 * The lease manager's timing. It renews at about two thirds of each grant. It replaces a lease
 * whose grant came back short or that reached its maximum lifetime. It stops retrying a failed
 * renewal in time to generate a new lease before the old one expires.
 */
import { backoffDelay } from "./retry.ts";

/** Fraction of a grant after which the lease is renewed or replaced. */
export const RENEW_FRACTION = 2 / 3;

/** Spread of `RENEW_FRACTION` either way, as a fraction of the grant, so that pods drift apart. */
export const RENEW_JITTER = 0.05;

/** Upper bound of the safety margin before expiry. */
export const MAX_SAFETY_MARGIN_MS = 5 * 60_000;

/** A grant's times, in epoch milliseconds. */
export interface Grant {
  grantedAt: number;
  durationMs: number;
  expiresAt: number;
  maxExpiresAt?: number;
  renewable: boolean;
}

/**
 * Returns when to act on a grant: `grantedAt` plus a fraction of its duration drawn uniformly
 * from 2/3 ± 0.05, so that on average there is one renewal per two thirds of a grant.
 */
export function nextActionAt(grant: Pick<Grant, "grantedAt" | "durationMs">, random: () => number = Math.random): number {
  const fraction = RENEW_FRACTION + RENEW_JITTER * (2 * random() - 1);
  return grant.grantedAt + grant.durationMs * fraction;
}

/**
 * Reports whether a renewal can extend `grant` no further: the server marked it not renewable,
 * or its expiry is within one second of its maximum expiry.
 */
export function atMaxLifetime(grant: Grant): boolean {
  if (!grant.renewable) return true;
  return grant.maxExpiresAt !== undefined && grant.maxExpiresAt - grant.expiresAt < 1000;
}

/**
 * Reports whether a renewal granted less than requested, allowing for the server's rounding to whole
 * seconds: short means more than min(1 s, 10 %) below `requestedMs`.
 */
export function isShortGrant(grantedMs: number, requestedMs: number): boolean {
  return grantedMs < requestedMs - Math.min(1000, requestedMs * 0.1);
}

/**
 * Returns the time before expiry at which a lease whose renewal keeps failing is replaced:
 * 15 % of the grant, at most five minutes. A one-hour lease is replaced with 5 minutes left, a
 * six-second lease with 0.9 seconds left.
 */
export function safetyMarginMs(durationMs: number): number {
  return Math.min(MAX_SAFETY_MARGIN_MS, durationMs * 0.15);
}

/** Returns the wait before retry number `attempt` of a failed lease operation: 0.5 s to 30 s, jittered. */
export function retryDelayMs(attempt: number, random: () => number = Math.random): number {
  return Math.max(500, backoffDelay(attempt, { baseMs: 1000, maxMs: 30_000, random }));
}
