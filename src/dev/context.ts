/**
 * Types shared by the dev server's route modules: the hono environment, the caller's identity,
 * the server state and the context a route plugin receives.
 */
import type { Context, Hono } from "hono";
import type { Logger } from "../log.ts";
import type { DevConfig } from "./config.ts";
import type { FaultInjector } from "./faults.ts";
import type { JwtVerifier } from "./jwt.ts";
import type { AccessPolicy } from "./policy.ts";
import type { RateLimiter, RateLimitStatus } from "./ratelimit.ts";
import type { SecretStore } from "./state.ts";
import type { RequestStats } from "./stats.ts";
import type { SubscriptionStore } from "./subscriptions.ts";
import type { TokenStore } from "./tokens.ts";

/** Tenant of every identity, event and whoami response of the dev server. */
export const DEV_TENANT_ID = "tnt_dev";

/** The caller of a request, resolved from its bearer token. */
export interface Identity {
  /** `root` for the root token, else the exchanged identity, such as `sa:billing`. */
  id: string;
  type: "root" | "service_account" | "user";
  /** Epoch milliseconds when the token expires; null for the root token, which never expires. */
  tokenExpiresAt: number | null;
}

/** Per-request variables of the dev app. */
export interface DevVariables {
  /** The client's `X-Request-ID`, or a generated `req_...`. */
  requestId: string;
  /** Set by the authentication middleware on every route except health, version and exchange. */
  identity: Identity | undefined;
  /** The bucket the request drew from, for the `X-RateLimit-*` headers. */
  rateLimit: RateLimitStatus | undefined;
  /** Code of the error response, for the request's log line. */
  errorCode: string | undefined;
}

export type DevEnv = { Variables: DevVariables };
export type DevApp = Hono<DevEnv>;
export type DevRequestContext = Context<DevEnv>;

/** State that the dev server keeps in memory. Tests inspect it through `DevServer.state`. */
export interface DevState {
  readonly rootToken: string;
  readonly secrets: SecretStore;
  readonly tokens: TokenStore;
  readonly subscriptions: SubscriptionStore;
  readonly policy: AccessPolicy;
  readonly limiter: RateLimiter;
  readonly faults: FaultInjector;
  readonly stats: RequestStats;
  /** Stores that route plugins add under their own name, such as `dynamic` for leases. */
  readonly extensions: Map<string, unknown>;
  /** Aborted when the server stops: pending long-polls and fault delays end, plugins clean up. */
  readonly stopped: AbortSignal;
}

/** Context that a route plugin receives besides the app. */
export interface DevContext {
  readonly state: DevState;
  /** The dev config file; `config.engines` is passed through unparsed. */
  readonly config: DevConfig;
  readonly logger: Logger;
  /** Audience that exchanged JWTs must carry. */
  readonly audience: string;
  /** Lifetime of exchanged tokens. */
  readonly tokenTtlSeconds: number;
  /** Signature checks for exchanged JWTs; undefined when signatures are not verified. */
  readonly verifier: JwtVerifier | undefined;
  /** Current time in epoch milliseconds. */
  now(): number;
}

/**
 * Registers one module's routes on the dev app, such as `registerSecretRoutes`. Every `/v1/*`
 * route except health, version and exchange is authenticated before the plugin's handler runs.
 */
export type DevRoutes = (app: DevApp, context: DevContext) => void;
