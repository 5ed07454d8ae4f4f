/**
 * Access control from the dev config's `identities`: which identity may read and write which
 * paths, and which service accounts may request it as a role. Without that key every
 * authenticated identity may do everything. The root token always may.
 */
import { ApiError } from "./api-error.ts";
import type { DevConfig } from "./config.ts";
import type { Identity } from "./context.ts";
import { compileGlob } from "./glob.ts";

export type AccessAction = "read" | "write";

/** Compiled access rules of the dev config. */
export class AccessPolicy {
  /** True when the config lists identities, so unlisted identities are denied. */
  readonly restricted: boolean;
  readonly #rules = new Map<string, Record<AccessAction, Array<(path: string) => boolean>>>();
  /** Service accounts, as `NAMESPACE:NAME`, that may request each identity as a role. */
  readonly #subjects = new Map<string, Set<string>>();

  constructor(config: DevConfig) {
    this.restricted = config.identities !== undefined;

    for (const [identityId, rules] of Object.entries(config.identities ?? {})) {
      this.#rules.set(identityId, { read: rules.read.map(compileGlob), write: rules.write.map(compileGlob) });
      this.#subjects.set(identityId, new Set((rules.subjects ?? []).map((subject) => subject.replace(/^system:serviceaccount:/, ""))));
    }
  }

  /** Reports whether the config lets service account `namespace`/`name` request `identityId` as a role. */
  grantsRole(identityId: string, namespace: string, name: string): boolean {
    return this.#subjects.get(identityId)?.has(`${namespace}:${name}`) ?? false;
  }

  /** Reports whether `identityId` may hold a token at all. */
  knows(identityId: string): boolean {
    return !this.restricted || identityId === "root" || this.#rules.has(identityId);
  }

  /** Reports whether `identity` may perform `action` on `path`. */
  allows(identity: Identity, action: AccessAction, path: string): boolean {
    if (identity.type === "root" || !this.restricted) return true;

    const rules = this.#rules.get(identity.id);
    return rules !== undefined && rules[action].some((matches) => matches(path));
  }

  /**
   * Checks `action` on `path` for `identity`.
   *
   * @throws ApiError `403 access_denied` naming the identity, the action and the path.
   */
  authorize(identity: Identity, action: AccessAction, path: string): void {
    if (this.allows(identity, action, path)) return;

    throw new ApiError(403, "access_denied", `Identity "${identity.id}" may not ${action} "${path}"`, {
      details: { identity_id: identity.id, action, path },
    });
  }
}
