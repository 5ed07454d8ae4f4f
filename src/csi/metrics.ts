/**
 * The provider's Prometheus metrics. Labels carry routes, status codes and results, never a
 * path, a pod name or a token, so the number of series stays small on a busy node.
 *
 * - `scaivault_csi_mounts_total{result}`: Mount calls by `ok` or `error`.
 * - `scaivault_csi_mount_errors_total{code}`: failed Mount calls by gRPC status name.
 * - `scaivault_csi_mount_duration_seconds_total`: time spent in Mount calls; divide by the mounts.
 * - `scaivault_csi_scaivault_requests_total{route,status}`: ScaiVault requests by route and HTTP status.
 * - `scaivault_csi_scaivault_request_duration_seconds_total{route}`: their time; divide by the requests.
 * - `scaivault_csi_mounts_aborted_total`: Mount calls still running when a stop's grace period ended, answered UNAVAILABLE.
 * - `scaivault_csi_mounts_rejected_total`: Mount calls refused because CSI_MOUNT_QUEUE was full.
 * - `scaivault_csi_mounts_active`, `scaivault_csi_mounts_queued`: Mount calls running and waiting now.
 * - `scaivault_csi_connections_rejected_total`: connections closed for breaking the HTTP/2 frame limits.
 * - `scaivault_csi_token_exchanges_total`, `scaivault_csi_token_cache_hits_total`, `scaivault_csi_token_cache_entries`.
 */
import { MetricsRegistry, type Counter, type Gauge } from "../metrics.ts";
import type { RequestRecord } from "../client.ts";
import type { TokenCacheStats } from "./token-cache.ts";
import type { MountLimiterStats } from "./limiter.ts";

/** The provider's metrics on one registry. */
export interface CsiMetrics {
  registry: MetricsRegistry;
  mounts: Counter;
  mountErrors: Counter;
  mountSeconds: Counter;
  mountsAborted: Counter;
  connectionsRejected: Counter;
  requests: Counter;
  requestSeconds: Counter;
  /** Records one finished ScaiVault request. */
  recordRequest(record: RequestRecord): void;
}

/** Registers the provider's metrics; `cacheStats` is read at every scrape. */
export function createCsiMetrics(
  cacheStats: () => TokenCacheStats,
  registry = new MetricsRegistry(),
  limiterStats: () => MountLimiterStats = () => ({ active: 0, queued: 0, rejected: 0 }),
): CsiMetrics {
  const mounts = registry.counter("scaivault_csi_mounts_total", "Mount calls by result", ["result"]);
  const mountErrors = registry.counter("scaivault_csi_mount_errors_total", "Failed Mount calls by gRPC status code", ["code"]);
  const mountSeconds = registry.counter("scaivault_csi_mount_duration_seconds_total", "Seconds spent in Mount calls");
  const mountsAborted = registry.counter("scaivault_csi_mounts_aborted_total", "Mount calls failed with UNAVAILABLE because the provider stopped");
  const mountsRejected = registry.counter("scaivault_csi_mounts_rejected_total", "Mount calls refused because the queue was full");
  const mountsActive: Gauge = registry.gauge("scaivault_csi_mounts_active", "Mount calls running");
  const mountsQueued: Gauge = registry.gauge("scaivault_csi_mounts_queued", "Mount calls waiting for a slot");
  const connectionsRejected = registry.counter("scaivault_csi_connections_rejected_total", "Connections closed for breaking the HTTP/2 frame limits");
  const requests = registry.counter("scaivault_csi_scaivault_requests_total", "ScaiVault requests by route and HTTP status", ["route", "status"]);
  const requestSeconds = registry.counter(
    "scaivault_csi_scaivault_request_duration_seconds_total",
    "Seconds spent in ScaiVault requests by route",
    ["route"],
  );
  const exchanges = registry.counter("scaivault_csi_token_exchanges_total", "Service-account tokens exchanged for ScaiVault tokens");
  const hits = registry.counter("scaivault_csi_token_cache_hits_total", "Mounts served with a cached ScaiVault token");
  const entries: Gauge = registry.gauge("scaivault_csi_token_cache_entries", "Service accounts with a cached ScaiVault token");

  let rejectedSeen = 0;
  registry.onCollect(function collectLimiter() {
    const now = limiterStats();
    mountsRejected.inc({}, now.rejected - rejectedSeen);
    mountsActive.set({}, now.active);
    mountsQueued.set({}, now.queued);
    rejectedSeen = now.rejected;
  });

  let seen: TokenCacheStats = { exchanges: 0, hits: 0, entries: 0 };
  registry.onCollect(function collectTokenCache() {
    const now = cacheStats();
    exchanges.inc({}, now.exchanges - seen.exchanges);
    hits.inc({}, now.hits - seen.hits);
    entries.set({}, now.entries);
    seen = now;
  });

  return {
    registry,
    mounts,
    mountErrors,
    mountSeconds,
    mountsAborted,
    connectionsRejected,
    requests,
    requestSeconds,
    recordRequest(record) {
      requests.inc({ route: record.route, status: String(record.status) });
      requestSeconds.inc({ route: record.route }, record.durationMs / 1000);
    },
  };
}
