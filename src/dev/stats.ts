/**
 * Request counts per route of the dev server, keyed `METHOD /pattern` with parameters written as
 * `{name}` (`GET /v1/secrets/{path}`), so tests can assert how often the agent called each route.
 */

/** Key for requests that matched no route. */
export const UNMATCHED_ROUTE = "(no route)";

/** Request counts per stats key. */
export class RequestStats {
  readonly #counts = new Map<string, number>();

  /** Counts one request of `method` to the route registered as `routePath`. */
  record(method: string, routePath: string | undefined): string {
    const key = routeKey(method, routePath);
    this.#counts.set(key, (this.#counts.get(key) ?? 0) + 1);
    return key;
  }

  /** Number of requests to `key`, such as `POST /v1/secrets/batch`. */
  count(key: string): number {
    return this.#counts.get(key) ?? 0;
  }

  /** Returns all counts, sorted by key. */
  snapshot(): Record<string, number> {
    return Object.fromEntries([...this.#counts.entries()].sort(([a], [b]) => a.localeCompare(b)));
  }

  reset(): void {
    this.#counts.clear();
  }
}

/** Turns a hono route path (`/v1/secrets/:path{.+}/rotate`) into a stats key (`POST /v1/secrets/{path}/rotate`). */
export function routeKey(method: string, routePath: string | undefined): string {
  if (routePath === undefined) return `${method} ${UNMATCHED_ROUTE}`;
  return `${method} ${routePath.replace(/:(\w+)(\{[^}]*\})?/g, "{$1}")}`;
}
