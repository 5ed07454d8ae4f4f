/**
 * The `csi-provider` command's run: the health server, the gRPC server on the socket, and a clean
 * stop on SIGTERM (calls in progress finish, the socket file is removed).
 */
import { AgentError } from "../errors.ts";
import { getLogger } from "../log.ts";
import { createHealthApp, startHealthServer } from "../health.ts";
import { setTimeout as startTimer } from "node:timers";
import { collectGarbage, createFetch, runtimeName, runtimeVersion, type HttpServer } from "../runtime.ts";
import { VERSION } from "../version.ts";
import type { CsiConfig } from "./config.ts";
import { createCsiMetrics } from "./metrics.ts";
import { Mounter } from "./mount.ts";
import { startProviderServer, type ProviderServer } from "./server.ts";

const log = getLogger("csi");

/** Room above the mount limit for the response's own framing, so the limit check is what trips. */
const SEND_LIMIT_SLACK_BYTES = 64 * 1024;
/** Time without a Mount after which the provider collects garbage. */
const IDLE_COLLECT_MS = 5_000;

export interface RunningProvider {
  /** The health server's URL, when it listens. */
  healthUrl?: string;
  mounter: Mounter;
  stop(): Promise<void>;
}

/**
 * Starts the provider and returns once the socket listens.
 *
 * @throws AgentError `config` when the CA file cannot be read or an address cannot be bound.
 */
export async function startCsiProvider(config: CsiConfig): Promise<RunningProvider> {
  let fetchFunction;
  try {
    fetchFunction = createFetch(config.caFile);
  } catch (error) {
    throw new AgentError("config", `Cannot read SCAIVAULT_CA_FILE "${config.caFile}": ${(error as NodeJS.ErrnoException).code ?? "error"}`, { cause: error });
  }

  let mounter: Mounter | undefined;
  const metrics = createCsiMetrics(() => mounter?.tokenCache.stats() ?? { exchanges: 0, hits: 0, entries: 0 });
  mounter = new Mounter({
    allowedUrls: config.allowedUrls,
    fetch: fetchFunction,
    tenantId: config.tenantId,
    maxAttempts: config.maxAttempts,
    requestTimeoutMs: config.requestTimeoutMs,
    mountTimeoutMs: config.mountTimeoutMs,
    concurrency: config.mountConcurrency,
    maxResponseBytes: config.maxResponseBytes,
    metrics,
  });

  let grpcServer: ProviderServer | undefined;
  let stopping = false;
  let health: HttpServer | undefined;

  if (config.health) {
    const app = createHealthApp({
      metrics: metrics.registry,
      alive: () => !stopping,
      readiness: () => ({ ready: grpcServer !== undefined && !stopping, details: { socket: config.socketPath } }),
    });
    health = await startHealthServer(app, config.health);
  }

  const active = mounter;
  const collector = idleCollector(IDLE_COLLECT_MS);
  try {
    grpcServer = await startProviderServer({
      socketPath: config.socketPath,
      socketMode: config.socketMode,
      version: { version: "v1alpha1", runtimeName: "scaivault-agent", runtimeVersion: VERSION },
      mount: (request, signal) => active.mount(request, signal),
      maxSendBytes: config.maxResponseBytes + SEND_LIMIT_SLACK_BYTES,
      onMount(status, durationMs) {
        metrics.mounts.inc({ result: status === "OK" ? "ok" : "error" });
        if (status !== "OK") metrics.mountErrors.inc({ code: status });
        metrics.mountSeconds.inc({}, durationMs / 1000);
        collector.mountFinished();
      },
    });
  } catch (error) {
    await health?.stop();
    throw error;
  }

  log.info("CSI provider started", {
    version: VERSION,
    runtime: `${runtimeName} ${runtimeVersion}`,
    socket: config.socketPath,
    health: health?.url,
    allowedUrls: config.allowedUrls.map((rule) => rule.text),
  });

  const server = grpcServer;
  return {
    healthUrl: health?.url,
    mounter: active,
    async stop() {
      stopping = true;
      collector.stop();
      await server.stop();
      await health?.stop();
      log.info("CSI provider stopped", { mounts: metrics.mounts.get({ result: "ok" }), errors: metrics.mounts.get({ result: "error" }) });
    },
  };
}

/** Runs the provider until `signal` aborts (SIGTERM or SIGINT), then stops it. */
export async function runCsiProvider(config: CsiConfig, signal: AbortSignal): Promise<void> {
  const provider = await startCsiProvider(config);

  await new Promise<void>((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener("abort", () => resolve(), { once: true });
  });
  await provider.stop();
}

// ---------------------------------------------------------------------------------------------

/**
 * Collects garbage once mounts have paused for `delayMs`. A burst of mounts (a node full of pods
 * starting, a rotation poll) leaves freed memory that the runtime otherwise keeps until the next
 * allocation pressure. A DaemonSet pod runs on every node, so it should give that memory back.
 */
function idleCollector(delayMs: number): { mountFinished(): void; stop(): void } {
  let timer: ReturnType<typeof startTimer> | undefined;

  return {
    mountFinished() {
      // refresh() restarts a pending timer without allocating a new one on every mount.
      if (timer) {
        timer.refresh();
        return;
      }
      timer = startTimer(function collectWhenIdle() {
        timer = undefined;
        collectGarbage();
        log.debug("Collected garbage after mounts paused", { idleMs: delayMs });
      }, delayMs);
      timer.unref();
    },
    stop() {
      if (timer) clearTimeout(timer);
      timer = undefined;
    },
  };
}
