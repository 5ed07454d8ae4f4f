/**
 * Authentication of the dev server: the bearer-token middleware, `POST /v1/auth/exchange` for
 * Kubernetes service-account JWTs and `GET /v1/auth/whoami`. Without a key file the exchange
 * decodes JWTs without checking their signature, which is only safe on a developer's machine.
 */
import type { MiddlewareHandler } from "hono";
import { ApiError, readJsonObject } from "./api-error.ts";
import { DEV_TENANT_ID, type DevApp, type DevContext, type DevEnv, type DevState, type Identity } from "./context.ts";
import { decodeJwt, JwtError } from "./jwt.ts";
import { enforceRateLimit } from "./ratelimit.ts";

/** Routes that take no bearer token. */
export const PUBLIC_ROUTES: ReadonlySet<string> = new Set([
  "/v1/health",
  "/v1/health/ready",
  "/v1/version",
  "/v1/auth/exchange",
]);

const JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt";
const SERVICE_ACCOUNT_SUBJECT = /^system:serviceaccount:([^:]+):([^:]+)$/;
const ROLE_PATTERN = /^[a-z][a-z0-9_-]*:[A-Za-z0-9._@-]{1,128}$/;
const MAX_WARNED_ROLES = 1000;

/** The `sub` of a service-account JWT and its two parts. */
interface ServiceAccountSubject {
  sub: string;
  namespace: string;
  name: string;
}

/**
 * Creates the middleware that resolves `Authorization: Bearer <token>` into `c.var.identity` on
 * every `/v1/*` route except `PUBLIC_ROUTES`.
 *
 * @throws ApiError `401 authentication_required`, `token_invalid`, `token_expired` or `token_revoked`.
 */
export function authenticate(state: DevState): MiddlewareHandler<DevEnv> {
  return async function authenticateRequest(c, next) {
    if (!c.req.path.startsWith("/v1/") || PUBLIC_ROUTES.has(c.req.path)) return next();

    const header = c.req.header("Authorization");
    if (!header) throw new ApiError(401, "authentication_required", "Send Authorization: Bearer <token>");

    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!match) throw new ApiError(401, "token_invalid", "The Authorization header is not of the form Bearer <token>");

    c.set("identity", state.tokens.resolve(match[1]!));
    return next();
  };
}

/**
 * Registers `POST /v1/auth/exchange` and `GET /v1/auth/whoami`. Whoami draws from the `whoami` bucket.
 *
 * The exchange maps service account `NS:NAME` to identity `sa:NAME`. A requested `role` other than
 * `sa:NAME` is granted only when the dev config's `identities[role].subjects` lists the account.
 * Without `identities`, every role is granted and a warning is logged once per role.
 */
export function registerAuthRoutes(app: DevApp, context: DevContext): void {
  const { state, logger, audience, tokenTtlSeconds } = context;
  const warnedRoles = new Set<string>();

  /**
   * Returns the identity that the exchange issues a token for.
   *
   * @throws ApiError `403 access_denied` naming the role and the subject when the config does not grant it.
   */
  function chooseIdentity(role: string | undefined, subject: ServiceAccountSubject, requestId: string): string {
    const derived = `sa:${subject.name}`;
    if (role === undefined || role === derived) return derived;

    if (state.policy.restricted) {
      if (state.policy.grantsRole(role, subject.namespace, subject.name)) return role;

      logger.warn("exchange role rejected", { role, subject: subject.sub, requestId });
      throw new ApiError(
        403,
        "access_denied",
        `Role "${role}" is not granted to subject "${subject.sub}": list "${subject.namespace}:${subject.name}" in identities["${role}"].subjects of the dev config`,
        { details: { role, subject: subject.sub } },
      );
    }

    if (!warnedRoles.has(role)) {
      // Bounded memory: past this many roles, the set starts again and roles may warn twice.
      if (warnedRoles.size >= MAX_WARNED_ROLES) warnedRoles.clear();
      warnedRoles.add(role);
      logger.warn("exchange grants a requested role to any subject, because the dev config lists no identities", { role, subject: subject.sub, requestId });
    }
    return role;
  }

  app.post("/v1/auth/exchange", async function exchangeToken(c) {
    const body = await readJsonObject(c);
    const { subject_token: subjectToken, subject_token_type: tokenType, audience: requestedAudience, role } = body;

    if (typeof subjectToken !== "string" || subjectToken === "") {
      throw new ApiError(400, "invalid_request", "subject_token is required and must be a string");
    }
    if (tokenType !== undefined && tokenType !== JWT_TOKEN_TYPE) {
      throw new ApiError(400, "invalid_request", `subject_token_type must be "${JWT_TOKEN_TYPE}"`);
    }
    if (role !== undefined && (typeof role !== "string" || !ROLE_PATTERN.test(role))) {
      throw new ApiError(400, "invalid_role", 'role must be an identity id such as "sa:billing-prod"');
    }
    if (requestedAudience !== undefined && requestedAudience !== audience) {
      throw new ApiError(401, "token_invalid", `Audience ${JSON.stringify(requestedAudience)} is not accepted by this server`);
    }

    const claims = await checkSubjectToken(subjectToken, context);
    const subject = typeof claims.sub === "string" ? SERVICE_ACCOUNT_SUBJECT.exec(claims.sub) : null;
    if (!subject) {
      throw new ApiError(403, "access_denied", "The subject token's sub is not a Kubernetes service account (system:serviceaccount:NAMESPACE:NAME)");
    }

    const [sub, namespace, serviceAccount] = subject as unknown as [string, string, string];
    const identityId = chooseIdentity(role as string | undefined, { sub, namespace, name: serviceAccount }, c.get("requestId"));
    if (!state.policy.knows(identityId)) {
      throw new ApiError(403, "access_denied", `Identity "${identityId}" is not listed in the dev config`, {
        details: { identity_id: identityId },
      });
    }

    const issued = state.tokens.issue(identityId, identityId.startsWith("sa:") ? "service_account" : "user");
    logger.info("token exchanged", { identity: identityId, namespace, serviceAccount, requestId: c.get("requestId") });

    return c.json({
      access_token: issued.token,
      token_type: "Bearer",
      expires_in: tokenTtlSeconds,
      identity_id: identityId,
    });
  });

  app.get("/v1/auth/whoami", function whoami(c) {
    enforceRateLimit(c, state.limiter, "whoami");

    const identity = c.get("identity")!;
    return c.json({
      identity_id: identity.id,
      identity_type: identity.type,
      tenant_id: DEV_TENANT_ID,
      partner_id: null,
      scopes: scopesOf(identity),
      groups: [],
      roles: identity.type === "root" ? ["admin"] : [],
      token_expires_at: identity.tokenExpiresAt === null ? null : new Date(identity.tokenExpiresAt).toISOString(),
    });
  });
}

// ---------------------------------------------------------------------------------------------

/** Decodes the subject token, checks its signature when a key is configured, then its time and audience. */
async function checkSubjectToken(token: string, context: DevContext): Promise<Record<string, unknown>> {
  let decoded;
  try {
    decoded = decodeJwt(token);
    await context.verifier?.verify(decoded);
  } catch (error) {
    if (!(error instanceof JwtError)) throw error;
    throw new ApiError(401, "token_invalid", `The subject token is not a valid JWT: ${error.message}`);
  }

  const { exp, nbf, aud } = decoded.payload;
  const nowSeconds = context.now() / 1000;

  if (typeof exp !== "number") throw new ApiError(401, "token_invalid", "The subject token has no exp claim");
  if (exp <= nowSeconds) {
    throw new ApiError(401, "token_invalid", `The subject token expired at ${new Date(exp * 1000).toISOString()}`);
  }
  if (typeof nbf === "number" && nbf > nowSeconds) {
    throw new ApiError(401, "token_invalid", `The subject token is not valid before ${new Date(nbf * 1000).toISOString()}`);
  }

  const audiences = Array.isArray(aud) ? aud : [aud];
  if (!audiences.includes(context.audience)) {
    throw new ApiError(401, "token_invalid", `The subject token's audience ${JSON.stringify(aud ?? null)} does not include "${context.audience}"`);
  }
  return decoded.payload;
}

function scopesOf(identity: Identity): string[] {
  return identity.type === "root" ? ["secrets:read", "secrets:write", "admin"] : ["secrets:read", "secrets:write"];
}
