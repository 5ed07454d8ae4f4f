import { defineCommand } from "citty";
import { SETTINGS, settingsArgs } from "../options.ts";
import { loadSidecarConfig } from "../config.ts";
import { connect } from "../connect.ts";
import { EventWatcher } from "../events.ts";
import { createHealthApp, startHealthServer } from "../health.ts";
import { getLogger } from "../log.ts";
import { Reloader } from "../reload.ts";
import { sleep } from "../retry.ts";
import { runStoppers, type Stopper } from "../shutdown.ts";
import { Sidecar } from "../sidecar.ts";
import { createSidecarLeases } from "../sidecar-leases.ts";
import { createSidecarMetrics } from "../sidecar-metrics.ts";
import { runAction } from "./_run.ts";

const log = getLogger("sidecar");

/** Upper bound of the whole shutdown sequence; Kubernetes' default grace period is 30 seconds. */
const SHUTDOWN_TIMEOUT_MS = 10_000;
/** Upper bound of each clean-up request to ScaiVault at shutdown. */
const CLEANUP_REQUEST_TIMEOUT_MS = 5_000;
/**
 * How long the first sync waits for the first subscription attempt. A quick creation means no
 * catch-up read; a slow one (a loaded server) must not delay the pod's start.
 */
const FIRST_CREATE_WAIT_MS = 2_000;

export default defineCommand({
  meta: {
    name: "sidecar",
    description: "Keep the files of WATCH_PATHS current and signal RELOAD_TARGET when they change",
  },
  args: settingsArgs(SETTINGS.connection, SETTINGS.output, SETTINGS.sidecar),
  run: ({ args }) =>
    runAction(args, async ({ signal, env }) => {
      const config = loadSidecarConfig(args, env);
      const metrics = createSidecarMetrics();

      // The base client is not tied to the run signal, so clean-up requests still go out after SIGTERM.
      const base = connect(config.connection, {
        onRequest: (record) => metrics.requests.inc({ route: record.route, status: String(record.status) }),
      });
      const client = base.withSignal(signal);
      const cleanupClient = () => base.withSignal(AbortSignal.timeout(CLEANUP_REQUEST_TIMEOUT_MS));

      const reloader = new Reloader({
        target: config.reloadTarget,
        signal: config.reloadSignal,
        onResult: (result) => {
          if (result === "no_target") return;
          metrics.signals.inc({ result });
          metrics.targetUp.set({}, result === "sent" ? 1 : 0);
        },
        // Without RELOAD_TARGET the gauge has no sample, so that it does not look like a lost target.
        onStatus: (status) => {
          if (status.state !== "none") metrics.targetUp.set({}, status.state === "found" ? 1 : 0);
        },
      });
      const sidecar = new Sidecar({ config, client, reloader, metrics, signal });
      const leases = createSidecarLeases({ config, client: base, reloader, registry: metrics.registry });

      const events = config.events && sidecar.paths.length > 0
        ? new EventWatcher({
            client,
            createClient: base,
            paths: sidecar.paths,
            onEvents: async (paths) => (await sidecar.refresh(paths, "event")).pending.map((issue) => issue.path),
            // Changes made between a read and the subscription would be missed: read everything once more.
            onGap: () => {
              if (sidecar.hasStartedReading) void sidecar.refresh(undefined, "resubscribed");
            },
            onState: (state) => metrics.setSubscriptionState(state),
            onEvent: (event) => metrics.events.inc({ type: event.eventType }),
          })
        : undefined;

      log.info("Starting sidecar", {
        url: config.connection.url,
        paths: sidecar.paths.length,
        files: config.watch.length,
        refreshIntervalMs: config.refreshIntervalMs,
        events: config.events,
        reloadTarget: config.reloadTarget,
        reloadSignal: config.reloadSignal,
      });

      // Clean-up steps, run in this order at shutdown within SHUTDOWN_TIMEOUT_MS.
      const stoppers: Stopper[] = [];
      if (leases) stoppers.push(leases.stopper);
      if (events) stoppers.push({ name: "events", stop: () => events.stop(cleanupClient(), { lateCreateWaitMs: CLEANUP_REQUEST_TIMEOUT_MS }) });

      if (config.health) {
        const app = createHealthApp({
          metrics: metrics.registry,
          alive: () => !signal.aborted,
          readiness: () => {
            const readiness = sidecar.readiness();
            const leaseReadiness = leases?.readiness();
            return {
              ready: readiness.ready && (leaseReadiness?.ready ?? true),
              details: { ...readiness.details, subscription: events?.state ?? "off", ...leaseReadiness?.details },
            };
          },
        });
        const server = await startHealthServer(app, config.health);
        stoppers.push({ name: "health", stop: () => server.stop() });
      }

      try {
        reloader.watchStartup(signal, { graceMs: config.reloadTargetWaitMs }).catch((error) => log.warn("Cannot look up the reload target", { error: (error as Error).message }));
        if (leases) await leases.start(signal);

        // The subscription is created beside the first sync; a slow creation does not hold it back.
        const eventsRun = events && !signal.aborted ? events.run(signal) : undefined;
        if (eventsRun) await Promise.race([events!.firstAttempt, eventsRun, sleep(FIRST_CREATE_WAIT_MS, signal).catch(() => undefined)]);
        await Promise.all([sidecar.run(signal), eventsRun]);
      } finally {
        log.info("Stopping sidecar", { steps: stoppers.map((stopper) => stopper.name) });
        await runStoppers(stoppers, SHUTDOWN_TIMEOUT_MS);
        log.info("Sidecar stopped");
      }
    }),
});
