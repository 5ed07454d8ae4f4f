/**
 * The health endpoints of the long-running commands, as a hono app:
 * - `GET /healthz`: 200 while the process runs its loops (liveness).
 * - `GET /readyz`: 200 or 503 from the command's readiness check, with its details as JSON.
 * - `GET /metrics`: the metrics registry in the Prometheus text format.
 */
import { Hono } from "hono";
import { AgentError } from "./errors.ts";
import { getLogger } from "./log.ts";
import { METRICS_CONTENT_TYPE, type MetricsRegistry } from "./metrics.ts";
import { serveHttp, type HttpServer } from "./runtime.ts";

const log = getLogger("health");

/** A readiness verdict and what it is based on. `details` must hold no secret value. */
export interface Readiness {
  ready: boolean;
  details: Record<string, unknown>;
}

export interface HealthAppOptions {
  readiness: () => Readiness;
  metrics: MetricsRegistry;
  /** Liveness; false makes /healthz return 503. @default always true */
  alive?: () => boolean;
}

/** Creates the hono app with /healthz, /readyz and /metrics. */
export function createHealthApp(options: HealthAppOptions): Hono {
  const app = new Hono();

  app.get("/healthz", function healthz(c) {
    const alive = options.alive?.() ?? true;
    return c.json({ status: alive ? "ok" : "stopping" }, alive ? 200 : 503);
  });

  app.get("/readyz", function readyz(c) {
    const readiness = options.readiness();
    return c.json({ status: readiness.ready ? "ready" : "not_ready", ...readiness.details }, readiness.ready ? 200 : 503);
  });

  app.get("/metrics", function metrics(c) {
    return c.body(options.metrics.render(), 200, { "content-type": METRICS_CONTENT_TYPE });
  });

  app.notFound((c) => c.json({ error: "not found: use /healthz, /readyz or /metrics" }, 404));
  return app;
}

/**
 * Serves `app` on `address` and logs the bound URL, which tests read to learn a port chosen by
 * the system (port 0).
 *
 * @throws AgentError `config` when the address cannot be bound.
 */
export async function startHealthServer(app: Hono, address: { hostname: string; port: number }): Promise<HttpServer> {
  let server: HttpServer;
  try {
    server = await serveHttp((request) => app.fetch(request), address);
  } catch (error) {
    throw new AgentError(
      "config",
      `Cannot listen on HEALTH_ADDR ${address.hostname}:${address.port}: ${(error as Error).message}. Choose a free port or set HEALTH_ADDR=off`,
      { cause: error },
    );
  }

  log.info("Health server listening", { url: server.url, port: server.port });
  return server;
}
