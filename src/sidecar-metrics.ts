/**
 * The sidecar's metrics. Labels carry secret paths, routes, error kinds and states, never a
 * secret value or a token.
 */
import { MetricsRegistry, type Counter, type Gauge } from "./metrics.ts";

/** States of the event subscription, exported as one 0/1 series each. */
export const SUBSCRIPTION_STATES = ["off", "creating", "active", "backoff", "stopped"] as const;
export type SubscriptionState = (typeof SUBSCRIPTION_STATES)[number];

export interface SidecarMetrics {
  registry: MetricsRegistry;
  /** Refreshes by trigger (`start`, `interval`, `retry`, `event`, `resubscribed`) and result (`ok`, `incomplete`, `error`). */
  refreshes: Counter;
  /** Secrets whose new version was written, by path. */
  changes: Counter;
  /** Errors by kind: the agent's error code (`unreachable`, `auth`, `not_found`, `write`, ...) or `render`. */
  errors: Counter;
  /** Unix time of the last read of a path that left its files current. */
  lastSuccess: Gauge;
  /** Version of each path whose files are current. */
  secretVersion: Gauge;
  /** 1 for each path whose last read gave no usable secret (deleted, forbidden, not renderable); its last file stays. */
  secretUnavailable: Gauge;
  /** Reload requests by result (`sent`, `not_found`, `denied`, `failed`). */
  signals: Counter;
  /** 1 while the reload target is visible and may be signalled. */
  targetUp: Gauge;
  /** 1 for the current subscription state, 0 for the others. */
  subscriptionState: Gauge;
  /** Events received, by type. */
  events: Counter;
  /** HTTP requests to ScaiVault by route and status. */
  requests: Counter;
  /** 1 after the first complete sync. */
  ready: Gauge;
  /** Seconds since the last refresh that reached ScaiVault for every path; set at scrape time. */
  staleness: Gauge;
  watchedPaths: Gauge;
  setSubscriptionState(state: SubscriptionState): void;
}

/** Registers the sidecar's metrics on `registry`. */
export function createSidecarMetrics(registry = new MetricsRegistry()): SidecarMetrics {
  const subscriptionState = registry.gauge("scaivault_sidecar_subscription_state", "1 for the current state of the event subscription", ["state"]);

  const metrics: SidecarMetrics = {
    registry,
    refreshes: registry.counter("scaivault_sidecar_refreshes_total", "Refreshes by trigger and result", ["trigger", "result"]),
    changes: registry.counter("scaivault_sidecar_changes_total", "New secret versions written to files, by secret path", ["path"]),
    errors: registry.counter("scaivault_sidecar_errors_total", "Errors by kind", ["kind"]),
    lastSuccess: registry.gauge(
      "scaivault_sidecar_last_success_timestamp_seconds",
      "Unix time of the last read that left the files of the path current",
      ["path"],
    ),
    secretVersion: registry.gauge("scaivault_sidecar_secret_version", "Version of the secret whose files are current", ["path"]),
    secretUnavailable: registry.gauge(
      "scaivault_sidecar_secret_unavailable",
      "1 when the last read could not return the secret (deleted or forbidden); the last file stays",
      ["path"],
    ),
    signals: registry.counter("scaivault_sidecar_signals_total", "Reload requests by result", ["result"]),
    targetUp: registry.gauge("scaivault_sidecar_reload_target_up", "1 while the reload target is visible and may be signalled"),
    subscriptionState,
    events: registry.counter("scaivault_sidecar_events_total", "Subscription events received, by type", ["type"]),
    requests: registry.counter("scaivault_agent_requests_total", "HTTP requests to ScaiVault by route and status", ["route", "status"]),
    ready: registry.gauge("scaivault_sidecar_ready", "1 after the first complete sync"),
    staleness: registry.gauge("scaivault_sidecar_staleness_seconds", "Seconds since the last refresh that reached ScaiVault for every path"),
    watchedPaths: registry.gauge("scaivault_sidecar_watched_paths", "Number of watched secret paths"),
    setSubscriptionState(state) {
      for (const name of SUBSCRIPTION_STATES) subscriptionState.set({ state: name }, name === state ? 1 : 0);
    },
  };

  metrics.setSubscriptionState("off");
  return metrics;
}
