/**
 * The dev server's secret store: every path keeps all its versions in memory. A version replaced
 * by a rotation stays readable for the grace period (48 hours by default) and is then gone, as
 * on ScaiVault. A version replaced by a plain write stays readable while the server runs.
 */
import { ApiError } from "./api-error.ts";
import { randomToken } from "./tokens.ts";

export const SECRET_TYPES = ["kv", "json", "certificate", "ssh_key", "api_key"] as const;
export type SecretType = (typeof SECRET_TYPES)[number];

/** A secret as `GET /v1/secrets/{path}` returns it. */
export interface SecretResponse {
  path: string;
  secret_type: SecretType;
  version: number;
  data: Record<string, unknown>;
  metadata: Record<string, unknown>;
  created_at: string;
  updated_at: string;
  expires_at: string | null;
  rotation_policy_id: string | null;
}

export interface SecretInput {
  data: Record<string, unknown>;
  /** @default the current type, or `json` for a new secret */
  secretType?: SecretType;
  /** @default the current metadata, or `{}` for a new secret */
  metadata?: Record<string, unknown>;
}

/** Result of a write: the new secret and the version it replaced, null for a new path. */
export interface WriteResult {
  secret: SecretResponse;
  previousVersion: number | null;
}

/** Result of a rotation. */
export interface RotateResult {
  secret: SecretResponse;
  previousVersion: number;
  /** Epoch milliseconds until which the previous version stays readable. */
  gracePeriodEndsAt: number;
}

/** Secrets by path with their versions. Reads and writes copy `data`, so callers cannot alter the store. */
export class SecretStore {
  readonly #secrets = new Map<string, StoredSecret>();
  readonly #now: () => number;
  readonly #gracePeriodMs: number;

  constructor(options: { now: () => number; gracePeriodMs?: number }) {
    this.#now = options.now;
    this.#gracePeriodMs = options.gracePeriodMs ?? 48 * 3_600_000;
  }

  /** Paths of all secrets, sorted. */
  paths(): string[] {
    return [...this.#secrets.keys()].sort();
  }

  has(path: string): boolean {
    return this.#secrets.has(path);
  }

  /**
   * Returns the current version of `path`, or version `version`.
   *
   * @throws ApiError `404 secret_not_found` or `404 version_not_found`.
   */
  read(path: string, version?: number): SecretResponse {
    const secret = this.#require(path);
    if (version === undefined) return toResponse(secret, secret.currentVersion);

    const stored = secret.versions.get(version);
    if (!stored || (stored.readableUntil !== undefined && stored.readableUntil <= this.#now())) {
      throw new ApiError(404, "version_not_found", `Version ${version} of secret "${path}" not found`, {
        details: { path, version, current_version: secret.currentVersion },
      });
    }
    return toResponse(secret, version);
  }

  /** Writes a new version of `path`, creating the secret at version 1 when it does not exist. */
  write(path: string, input: SecretInput): WriteResult {
    const now = this.#now();
    const existing = this.#secrets.get(path);

    if (!existing) {
      const secret: StoredSecret = {
        path,
        secretType: input.secretType ?? "json",
        metadata: structuredClone(input.metadata ?? {}),
        createdAt: now,
        currentVersion: 1,
        versions: new Map([[1, { data: structuredClone(input.data), createdAt: now }]]),
      };
      this.#secrets.set(path, secret);
      return { secret: toResponse(secret, 1), previousVersion: null };
    }

    const previousVersion = existing.currentVersion;
    existing.currentVersion += 1;
    existing.versions.set(existing.currentVersion, { data: structuredClone(input.data), createdAt: now });
    if (input.secretType) existing.secretType = input.secretType;
    if (input.metadata) existing.metadata = structuredClone(input.metadata);

    return { secret: toResponse(existing, existing.currentVersion), previousVersion };
  }

  /**
   * Rotates `path`: writes `data` as a new version, or, without it, a copy of the current data in
   * which every string value under a key that names a password, secret, key, token or credential
   * is a fresh random string. The replaced version stays readable for the grace period.
   *
   * @throws ApiError `404 secret_not_found`.
   */
  rotate(path: string, data?: Record<string, unknown>): RotateResult {
    const secret = this.#require(path);
    const previous = secret.versions.get(secret.currentVersion)!;
    const gracePeriodEndsAt = this.#now() + this.#gracePeriodMs;

    const result = this.write(path, { data: data ?? rotatedData(previous.data) });
    previous.readableUntil = gracePeriodEndsAt;

    return { secret: result.secret, previousVersion: result.previousVersion!, gracePeriodEndsAt };
  }

  /**
   * Deletes `path` with all its versions and returns the last version. A later write starts again
   * at version 1.
   *
   * @throws ApiError `404 secret_not_found`.
   */
  delete(path: string): number {
    const secret = this.#require(path);
    this.#secrets.delete(path);
    return secret.currentVersion;
  }

  #require(path: string): StoredSecret {
    const secret = this.#secrets.get(path);
    if (!secret) throw new ApiError(404, "secret_not_found", `Secret "${path}" not found`, { details: { path } });
    return secret;
  }
}

// ---------------------------------------------------------------------------------------------

interface StoredVersion {
  data: Record<string, unknown>;
  createdAt: number;
  /** Set on a version replaced by a rotation: epoch milliseconds when it stops being readable. */
  readableUntil?: number;
}

interface StoredSecret {
  path: string;
  secretType: SecretType;
  metadata: Record<string, unknown>;
  createdAt: number;
  currentVersion: number;
  versions: Map<number, StoredVersion>;
}

const ROTATED_KEY = /pass|secret|key|token|credential|pwd/i;

function rotatedData(data: Record<string, unknown>): Record<string, unknown> {
  const next = structuredClone(data);

  for (const [key, value] of Object.entries(next)) {
    if (typeof value === "string" && ROTATED_KEY.test(key)) next[key] = randomToken(24);
  }
  return next;
}

function toResponse(secret: StoredSecret, version: number): SecretResponse {
  const stored = secret.versions.get(version)!;

  return {
    path: secret.path,
    secret_type: secret.secretType,
    version,
    data: structuredClone(stored.data),
    metadata: structuredClone(secret.metadata),
    created_at: new Date(secret.createdAt).toISOString(),
    updated_at: new Date(stored.createdAt).toISOString(),
    expires_at: null,
    rotation_policy_id: null,
  };
}
