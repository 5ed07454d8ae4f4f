/** Backoff with full jitter, `Retry-After` parsing, and sleeps that end on abort. */

export interface BackoffOptions {
  /** First delay's upper bound in milliseconds. @default 250 */
  baseMs?: number;
  /** Upper bound of any delay in milliseconds. @default 10000 */
  maxMs?: number;
  /** Random source in [0, 1), injectable for tests. @default Math.random */
  random?: () => number;
}

/**
 * Returns the delay before retry number `attempt` (1 for the first retry): a uniformly random value
 * between 0 and min(maxMs, baseMs * 2^(attempt-1)), the "full jitter" of AWS's backoff study, which
 * spreads many clients that failed at the same moment.
 */
export function backoffDelay(attempt: number, options: BackoffOptions = {}): number {
  const base = options.baseMs ?? 250;
  const max = options.maxMs ?? 10_000;
  const random = options.random ?? Math.random;
  const ceiling = Math.min(max, base * 2 ** Math.max(0, attempt - 1));
  return Math.floor(random() * ceiling);
}

/**
 * Parses `Retry-After` (seconds or an HTTP date) into milliseconds from `now`, or undefined when the
 * header is missing or unreadable.
 */
export function parseRetryAfter(header: string | null, now: number = Date.now()): number | undefined {
  if (header === null || header.trim() === "") return undefined;

  const seconds = Number(header);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);

  const date = Date.parse(header);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/** Sleeps `ms`, or rejects with the signal's reason as soon as `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }

    // setTimeout treats delays above 2^31-1 ms as 1 ms, so the delay is capped there.
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, Math.min(ms, 2 ** 31 - 1));

    function onAbort(): void {
      clearTimeout(timer);
      reject(signal!.reason);
    }
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Returns a delay of `ms` spread by ±`fraction` at random, so that replicas drift apart. */
export function withJitter(ms: number, fraction: number, random: () => number = Math.random): number {
  return Math.max(0, Math.round(ms * (1 - fraction + 2 * fraction * random())));
}

/** Returns `bytes` random bytes as hex, from Web Crypto (cheaper to load than `node:crypto`). */
export function randomHex(bytes: number): string {
  const buffer = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(buffer, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/**
 * Resolves or rejects as `promise` does, or rejects with the signal's reason as soon as `signal`
 * aborts. `promise` itself runs on: the caller decides what to do with a late result.
 */
export function raceAbort<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);

  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}
