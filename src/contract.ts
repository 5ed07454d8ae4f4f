/**
 * Request and response shapes of the ScaiVault API that its public documentation does not show,
 * and the tolerant parsing of every response the agent reads. Should ScaiVault's real shapes
 * differ, this is the one module to correct. Parsers accept the documented aliases and reject a
 * response that lacks what the agent needs, naming the missing field, never echoing values.
 */

/** A secret as `GET /v1/secrets/{path}` and batch reads return it. */
export interface Secret {
  path: string;
  version: number;
  secretType: string;
  data: Record<string, unknown>;
}

/** A token from `POST /v1/auth/exchange` or a client-credentials grant. */
export interface IssuedToken {
  token: string;
  /** Epoch milliseconds, or undefined when the response states no lifetime. */
  expiresAt?: number;
  identityId?: string;
}

/** A dynamic-credentials lease. `data` is present only in the generate response. */
export interface Lease {
  leaseId: string;
  engine?: string;
  role?: string;
  /** Seconds the lease lives from the last generate or renew. */
  leaseDuration: number;
  renewable: boolean;
  /** Epoch milliseconds. */
  expiresAt: number;
  /** Epoch milliseconds after which the lease cannot be renewed; undefined when unknown. */
  maxExpiresAt?: number;
  data?: Record<string, unknown>;
}

/** One event delivered through a polling subscription. */
export interface SubscriptionEvent {
  eventId: string;
  eventType: string;
  path: string;
  data: Record<string, unknown>;
}

export class ContractError extends Error {
  override readonly name = "ContractError";
}

/** Body of `POST /v1/auth/exchange` for a Kubernetes projected service-account token. */
export function exchangeRequest(subjectToken: string, audience?: string, role?: string): Record<string, string> {
  return {
    subject_token: subjectToken,
    subject_token_type: "urn:ietf:params:oauth:token-type:jwt",
    ...(audience ? { audience } : {}),
    ...(role ? { role } : {}),
  };
}

/** Parses an exchange or OAuth token response: `access_token` or `token`, `expires_in` or `expires_at`. */
export function parseIssuedToken(body: unknown, now: number): IssuedToken {
  const object = asObject(body, "token response");
  const token = object.access_token ?? object.token;
  if (typeof token !== "string" || token === "") throw new ContractError("token response has no access_token");

  let expiresAt: number | undefined;
  if (typeof object.expires_in === "number") expiresAt = now + object.expires_in * 1000;
  else if (typeof object.expires_at === "string") expiresAt = parseTime(object.expires_at, "expires_at");

  const identityId = typeof object.identity_id === "string" ? object.identity_id : undefined;
  return { token, expiresAt, identityId };
}

/** Parses a whoami response's `token_expires_at` into epoch milliseconds. */
export function parseWhoamiExpiry(body: unknown): number | undefined {
  const value = asObject(body, "whoami response").token_expires_at;
  return typeof value === "string" ? parseTime(value, "token_expires_at") : undefined;
}

/** Parses one secret; `fallbackPath` names it when the body omits `path` (batch entries). */
export function parseSecret(body: unknown, fallbackPath: string): Secret {
  const object = asObject(body, `secret "${fallbackPath}"`);
  const data = object.data;
  if (!data || typeof data !== "object" || Array.isArray(data)) {
    throw new ContractError(`secret "${fallbackPath}" has no data object`);
  }

  const version = typeof object.version === "number" ? object.version : Number(object.version);
  if (!Number.isFinite(version)) throw new ContractError(`secret "${fallbackPath}" has no numeric version`);

  return {
    path: typeof object.path === "string" ? object.path : fallbackPath,
    version,
    secretType: typeof object.secret_type === "string" ? object.secret_type : "json",
    data: data as Record<string, unknown>,
  };
}

/** Parses `POST /v1/secrets/batch`: secrets by path, and per-path errors with their codes. */
export function parseBatch(body: unknown): {
  secrets: Map<string, Secret>;
  errors: Map<string, { code: string; message: string }>;
} {
  const object = asObject(body, "batch response");
  const secrets = new Map<string, Secret>();
  const errors = new Map<string, { code: string; message: string }>();

  for (const [path, entry] of Object.entries(asObject(object.secrets ?? {}, "batch secrets"))) {
    secrets.set(path, parseSecret(entry, path));
  }
  for (const [path, entry] of Object.entries(asObject(object.errors ?? {}, "batch errors"))) {
    const error = asObject(entry, `batch error for "${path}"`);
    errors.set(path, { code: String(error.code ?? "unknown"), message: String(error.message ?? "") });
  }
  return { secrets, errors };
}

/** Body of the dynamic-credentials generate call. */
export function generateRequest(ttlSeconds?: number): Record<string, string> {
  return ttlSeconds === undefined ? {} : { ttl: `${Math.round(ttlSeconds)}s` };
}

/** Body of the lease renew call. */
export function renewRequest(incrementSeconds: number): Record<string, string> {
  return { increment: `${Math.round(incrementSeconds)}s` };
}

/** API paths of the lease calls. */
export const leasePaths = {
  generate: (engine: string, role: string) => `/v1/dynamic/engines/${encodeURIComponent(engine)}/creds/${encodeURIComponent(role)}`,
  renew: (leaseId: string) => `/v1/dynamic/leases/${encodeURIComponent(leaseId)}/renew`,
  revoke: (leaseId: string) => `/v1/dynamic/leases/${encodeURIComponent(leaseId)}/revoke`,
  lookup: (leaseId: string) => `/v1/dynamic/leases/${encodeURIComponent(leaseId)}`,
};

/** Parses a lease: `lease_id` or `id`, `lease_duration` or `ttl`, with `expires_at` when present. */
export function parseLease(body: unknown, now: number): Lease {
  const object = asObject(body, "lease");
  const leaseId = object.lease_id ?? object.id;
  if (typeof leaseId !== "string" || leaseId === "") throw new ContractError("lease response has no lease_id");

  const duration = Number(object.lease_duration ?? object.ttl);
  if (!Number.isFinite(duration)) throw new ContractError(`lease "${leaseId}" has no lease_duration`);

  const expiresAt = typeof object.expires_at === "string" ? parseTime(object.expires_at, "expires_at") : now + duration * 1000;
  const maxExpiresAt = typeof object.max_expires_at === "string" ? parseTime(object.max_expires_at, "max_expires_at") : undefined;
  const data = object.data && typeof object.data === "object" ? (object.data as Record<string, unknown>) : undefined;

  return {
    leaseId,
    engine: typeof object.engine === "string" ? object.engine : undefined,
    role: typeof object.role === "string" ? object.role : undefined,
    leaseDuration: duration,
    renewable: object.renewable !== false,
    expiresAt,
    maxExpiresAt,
    data,
  };
}

/** Body of `POST /v1/subscriptions` for a polling subscription. */
export function subscriptionRequest(name: string, paths: string[], events: string[]): Record<string, unknown> {
  return { name, paths, events, delivery: { type: "polling", buffer_size: 1000 } };
}

/** Parses a poll response into events; entries without an id or path are skipped. */
export function parsePoll(body: unknown): { events: SubscriptionEvent[]; hasMore: boolean } {
  const object = asObject(body, "poll response");
  const events: SubscriptionEvent[] = [];

  for (const entry of Array.isArray(object.events) ? object.events : []) {
    if (!entry || typeof entry !== "object") continue;
    const event = entry as Record<string, unknown>;
    if (typeof event.event_id !== "string" || typeof event.path !== "string") continue;
    events.push({
      eventId: event.event_id,
      eventType: String(event.event_type ?? ""),
      path: event.path,
      data: event.data && typeof event.data === "object" ? (event.data as Record<string, unknown>) : {},
    });
  }
  return { events, hasMore: object.has_more === true };
}

// ---------------------------------------------------------------------------------------------

function asObject(value: unknown, what: string): Record<string, unknown> {
  if (!value || typeof value !== "object" || Array.isArray(value)) throw new ContractError(`${what} is not a JSON object`);
  return value as Record<string, unknown>;
}

function parseTime(value: string, field: string): number {
  const time = Date.parse(value);
  if (Number.isNaN(time)) throw new ContractError(`${field} is not an ISO-8601 time`);
  return time;
}
