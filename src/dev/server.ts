/**
 * The local ScaiVault-compatible development server: a hono app over in-memory state that speaks
 * the agent's wire contract, so the init, sidecar and CSI provider run and are tested without a
 * ScaiVault account. It is a development tool: state is lost on exit, and without a key file
 * exchanged JWTs are not verified.
 *
 * Every response carries `X-Request-ID`: the client's, or a generated `req_...`. Every
 * authenticated response carries `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`;
 * every error is the envelope `{"error": {"code", "message", "details", "request_id"}}`.
 */
import { Hono, type MiddlewareHandler } from "hono";
import { matchedRoutes } from "hono/route";
import { AgentError } from "../errors.ts";
import { errorFields, getLogger } from "../log.ts";
import { serveHttp } from "../runtime.ts";
import { VERSION } from "../version.ts";
import { ApiError, errorResponse } from "./api-error.ts";
import { authenticate, registerAuthRoutes } from "./auth.ts";
import { parseDevConfig, parseSeed, type DevConfig, type DevSeed } from "./config.ts";
import type { DevApp, DevContext, DevEnv, DevRoutes, DevState } from "./context.ts";
import { registerControlRoutes } from "./control.ts";
import { registerDynamicRoutes } from "./dynamic.ts";
import { faultMiddleware, FaultInjector } from "./faults.ts";
import { createJwtVerifier } from "./jwt.ts";
import { AccessPolicy } from "./policy.ts";
import { RateLimiter, setRateLimitHeaders, type RateLimitCategory } from "./ratelimit.ts";
import { limitBodySize, rejectEncodedPath } from "./request-guards.ts";
import { registerScaiKeyRoutes } from "./scaikey.ts";
import { registerSecretRoutes } from "./secrets.ts";
import { SecretStore } from "./state.ts";
import { RequestStats } from "./stats.ts";
import { registerSubscriptionRoutes } from "./subscription-routes.ts";
import { SubscriptionStore } from "./subscriptions.ts";
import { randomToken, TokenStore } from "./tokens.ts";

export interface DevServerOptions {
  /** Address to listen on. @default "127.0.0.1" */
  host?: string;
  /** Port to listen on; 0 picks a free one. @default 8200 */
  port?: number;
  /** Secrets loaded at start, each as version 1 of type `json`: path to data object. */
  seed?: DevSeed;
  /** Bearer token with every permission, which never expires. @default a random `svt_...` */
  rootToken?: string;
  /** Audience that exchanged JWTs must carry in `aud`. @default "scaivault" */
  audience?: string;
  /** Lifetime of exchanged tokens in seconds. @default 3600 */
  tokenTtlSeconds?: number;
  /** PEM public key (RSA or EC P-256) that exchanged JWTs must be signed with. */
  jwtPublicKeyFile?: string;
  /** JWKS file whose keys exchanged JWTs must be signed with. */
  jwksFile?: string;
  /** Access rules and dynamic engines, usually from `loadDevConfig`. @default every identity may do everything */
  config?: DevConfig;
  /** `false` disables rate limiting; an object overrides the per-minute limit of single categories. @default true */
  rateLimits?: boolean | Partial<Record<RateLimitCategory, number>>;
  /** Route modules registered after the built-in ones, such as dynamic credentials. */
  routes?: DevRoutes[];
  /** Clock in epoch milliseconds for token expiry, rate limits and timestamps. @default Date.now */
  now?: () => number;
  /** PEM certificate chain and key: serve HTTPS, to test CA bundles. @default plain HTTP */
  tls?: { cert: string; key: string };
}

/** A running dev server. */
export interface DevServer {
  /** `http://host:port` with the bound port. */
  url: string;
  port: number;
  rootToken: string;
  /** In-memory state, for in-process tests: secrets, request counts, subscriptions, faults. */
  state: DevState;
  app: DevApp;
  /** Ends pending long-polls and stops listening. Calling it again does nothing. */
  stop(): Promise<void>;
}

/** The dev app with its state, for `app.request()` tests and for `startDevServer`. */
export interface DevApplication {
  app: DevApp;
  state: DevState;
  context: DevContext;
  /** Imports the JWT keys, if any. @throws AgentError `config` when a key cannot be used */
  ready(): Promise<void>;
  /** Aborts `state.stopped`, which ends pending long-polls and fault delays. */
  close(): void;
}

/** Route modules of every dev server, in registration order. */
export const BUILTIN_ROUTES: readonly DevRoutes[] = [
  registerHealthRoutes,
  registerAuthRoutes,
  registerSecretRoutes,
  registerSubscriptionRoutes,
  registerDynamicRoutes,
  registerScaiKeyRoutes,
  registerControlRoutes,
];

/**
 * Builds the dev app and its state without listening. Options are checked here, so a bad seed,
 * config or key file fails before any request.
 *
 * @throws AgentError `config` naming the invalid option.
 */
export function createDevApp(options: DevServerOptions = {}): DevApplication {
  const { audience = "scaivault", tokenTtlSeconds = 3600, now = Date.now } = options;
  const rootToken = options.rootToken ?? `svt_${randomToken(24)}`;

  if (audience.trim() === "") throw new AgentError("config", "Invalid audience: it must not be empty");
  if (!Number.isFinite(tokenTtlSeconds) || tokenTtlSeconds <= 0) {
    throw new AgentError("config", `Invalid token lifetime: ${tokenTtlSeconds} seconds, expected more than 0`);
  }
  if (!/^\S{8,}$/.test(rootToken)) {
    throw new AgentError("config", "Invalid root token: use at least 8 characters without spaces");
  }

  const config = parseDevConfig(options.config ?? {}, "option config");
  const seed = parseSeed(options.seed ?? {}, "option seed");
  const verifier = createJwtVerifier({ publicKeyFile: options.jwtPublicKeyFile, jwksFile: options.jwksFile });
  const logger = getLogger("dev");
  const stopController = new AbortController();

  const policy = new AccessPolicy(config);
  const state: DevState = {
    rootToken,
    secrets: new SecretStore({ now }),
    tokens: new TokenStore({ rootToken, ttlSeconds: tokenTtlSeconds, now }),
    subscriptions: new SubscriptionStore({ policy, now }),
    policy,
    limiter: new RateLimiter({ limits: options.rateLimits ?? true, now }),
    faults: new FaultInjector(),
    stats: new RequestStats(),
    extensions: new Map(),
    stopped: stopController.signal,
  };
  for (const [path, data] of Object.entries(seed)) state.secrets.write(path, { data });

  const context: DevContext = { state, config, logger, audience, tokenTtlSeconds, verifier, now };
  const app: DevApp = new Hono<DevEnv>();

  app.use("*", trackRequest(context));
  app.use("*", rejectEncodedPath());
  app.use("*", faultMiddleware(state.faults, state.stopped));
  app.use("*", authenticate(state));
  // After authentication, so that a request without a valid token has no body read at all.
  app.use("*", limitBodySize());
  for (const register of [...BUILTIN_ROUTES, ...(options.routes ?? [])]) register(app, context);

  app.notFound((c) => {
    c.set("errorCode", "not_found");
    return errorResponse(c, new ApiError(404, "not_found", `No route for ${c.req.method} ${c.req.path}`), c.get("requestId"));
  });
  app.onError((error, c) => {
    if (error instanceof ApiError) {
      c.set("errorCode", error.code);
      return errorResponse(c, error, c.get("requestId"));
    }

    c.set("errorCode", "internal_error");
    logger.error("request failed", { ...errorFields(error), method: c.req.method, path: c.req.path, requestId: c.get("requestId") });
    return errorResponse(c, new ApiError(500, "internal_error", "Internal error in the dev server"), c.get("requestId"));
  });

  return {
    app,
    state,
    context,
    ready: async () => {
      await verifier?.ready();
    },
    close: () => stopController.abort(),
  };
}

/**
 * Starts the dev server on `host:port` and logs what it is: a development server with in-memory
 * state, and whether JWT signatures are verified. The root token is never logged.
 *
 * @throws AgentError `config` for invalid options or when the address cannot be bound.
 */
export async function startDevServer(options: DevServerOptions = {}): Promise<DevServer> {
  const { host = "127.0.0.1", port = 8200 } = options;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new AgentError("config", `Invalid port: ${port}, expected a whole number from 0 to 65535`);
  }

  const dev = createDevApp(options);
  const logger = dev.context.logger;
  await dev.ready();

  // Bun's own limit (128 MB by default) responds with a bare 413 before the app runs. It is lifted,
  // so that the app's limit (limitBodySize, on every route) responds with the error envelope. Bun
  // 1.4.5 stops reading a body that the app leaves unread, so no body is buffered past that limit.
  const http = await serveHttp(dev.app.fetch, { hostname: host, port, tls: options.tls, maxRequestBodySize: Number.MAX_SAFE_INTEGER }).catch((error: unknown) => {
    throw new AgentError("config", `Cannot listen on ${host}:${port}: ${(error as Error).message}`, { cause: error });
  });

  logger.warn("ScaiVault dev server: in-memory state, for development and tests only, not for production", { url: http.url });
  if (dev.context.verifier) {
    logger.info("exchange verifies JWT signatures", { keys: dev.context.verifier.source });
  } else {
    logger.warn(
      "EXCHANGE DOES NOT VERIFY JWT SIGNATURES: it accepts any well-formed token with the right audience. Pass --jwt-public-key or --jwks to verify them",
    );
  }
  if (!isLoopback(host)) {
    logger.warn("dev server listens beyond this machine: anyone who can reach it may read its secrets", { host });
  }
  logger.info("dev server started", {
    url: http.url,
    secrets: dev.state.secrets.paths().length,
    audience: dev.context.audience,
    tokenTtlSeconds: dev.context.tokenTtlSeconds,
    rateLimits: dev.state.limiter.enabled,
  });

  let stopping: Promise<void> | undefined;
  return {
    url: http.url,
    port: http.port,
    rootToken: dev.state.rootToken,
    state: dev.state,
    app: dev.app,
    stop() {
      stopping ??= (async () => {
        dev.close();
        await http.stop();
        await closeExtensions(dev.state);
        logger.info("dev server stopped", { url: http.url });
      })();
      return stopping;
    },
  };
}

// ---------------------------------------------------------------------------------------------

const CLIENT_REQUEST_ID = /^[\x21-\x7e]{1,200}$/;

/**
 * Request id, stats, rate-limit headers and one log line per request with method, route, status,
 * identity and request id, never a body or a token.
 */
function trackRequest(context: DevContext): MiddlewareHandler<DevEnv> {
  const { state, logger } = context;

  return async function recordRequest(c, next) {
    const started = performance.now();
    const clientId = c.req.header("X-Request-ID");
    const requestId = clientId && CLIENT_REQUEST_ID.test(clientId) ? clientId : `req_${randomToken(12)}`;
    c.set("requestId", requestId);

    // The first route that is not middleware is the one whose handler responds.
    const route = matchedRoutes(c).find((matched) => matched.method !== "ALL")?.path;
    const key = state.stats.record(c.req.method, route);

    await next();

    c.res.headers.set("X-Request-ID", requestId);
    const identity = c.get("identity");
    if (identity) setRateLimitHeaders(c.res.headers, c.get("rateLimit") ?? state.limiter.peek(identity.id, "read"));

    logger.info("request", {
      route: key,
      status: c.res.status,
      ...(c.get("errorCode") ? { code: c.get("errorCode") } : {}),
      identity: identity?.id,
      requestId,
      ms: Math.round(performance.now() - started),
    });
  };
}

function registerHealthRoutes(app: DevApp, context: DevContext): void {
  app.get("/v1/health", (c) => c.json({ status: "healthy", timestamp: new Date(context.now()).toISOString() }));

  app.get("/v1/health/ready", (c) => {
    const ready = !context.state.stopped.aborted;
    return c.json({ status: ready ? "ready" : "not_ready", checks: { storage: ready ? "ok" : "stopping" } }, ready ? 200 : 503);
  });

  app.get("/v1/version", (c) => c.json({ version: VERSION, server: "scaivault-agent dev" }));
}

/** Awaits `close()` of every extension that has one, such as the lease store revoking its leases. */
async function closeExtensions(state: DevState): Promise<void> {
  for (const extension of state.extensions.values()) {
    const close = (extension as { close?: () => Promise<void> } | null)?.close;
    if (typeof close === "function") await close.call(extension).catch(() => {});
  }
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || host.startsWith("127.");
}
