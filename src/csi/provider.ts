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
import { createCsiMetrics, type CsiMetrics } from "./metrics.ts";
import { Mounter } from "./mount.ts";
import { startProviderServer, type ProviderServer } from "./server.ts";
import { loadVersionKey } from "./versions.ts";
import { basename, dirname, join } from "node:path";

const log = getLogger("csi");

/** Room above the mount limit for the response's own framing, so the limit check is what trips. */
const SEND_LIMIT_SLACK_BYTES = 64 * 1024;
/** Time without a Mount after which the provider collects garbage. */
const IDLE_COLLECT_MS = 5_000;

export interface RunningProvider {
  /** The health server's URL, when it listens. */
  healthUrl?: string;
  mounter: Mounter;
  metrics: CsiMetrics;
  /** Stops the provider; Mount calls still running after `graceMs` (default 10 s) get UNAVAILABLE. */
  stop(graceMs?: number): Promise<void>;
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
  const metrics = createCsiMetrics(
    () => mounter?.tokenCache.stats() ?? { exchanges: 0, hits: 0, entries: 0 },
    undefined,
    () => mounter?.limiter.stats() ?? { active: 0, queued: 0, rejected: 0 },
  );
  mounter = new Mounter({
    allowedUrls: config.allowedUrls,
    fetch: fetchFunction,
    tenantId: config.tenantId,
    maxAttempts: config.maxAttempts,
    requestTimeoutMs: config.requestTimeoutMs,
    mountTimeoutMs: config.mountTimeoutMs,
    concurrency: config.mountConcurrency,
    maxResponseBytes: config.maxResponseBytes,
    maxMounts: config.maxMounts,
    maxQueuedMounts: config.mountQueue,
    versionKey: await loadVersionKey(versionKeyPath(config.socketPath)),
    metrics,
  });

  let grpcServer: ProviderServer | undefined;
  let stopping = false;
  let health: HttpServer | undefined;

  if (config.health) {
    const app = createHealthApp({
      metrics: metrics.registry,
      alive: () => !stopping,
      // The socket file must still be ours: a deleted or replaced socket makes the driver's calls fail.
      readiness: () => ({ ready: grpcServer !== undefined && !stopping && grpcServer.socketPresent(), details: { socket: config.socketPath } }),
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
      onAbortedByStop: () => metrics.mountsAborted.inc(),
      onConnectionRejected: () => metrics.connectionsRejected.inc(),
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
    metrics,
    async stop(graceMs?: number) {
      stopping = true;
      collector.stop();
      await server.stop(graceMs);
      await health?.stop();
      log.info("CSI provider stopped", { mounts: metrics.mounts.get({ result: "ok" }), errors: metrics.mounts.get({ result: "error" }) });
    },
  };
}

/** Returns the version key file next to the socket: `scaivault.sock` keeps its key in `scaivault.version-key`. */
export function versionKeyPath(socketPath: string): string {
  return join(dirname(socketPath), `${basename(socketPath).replace(/\.sock$/, "")}.version-key`);
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
