/**
 * A small registry of Prometheus metrics (counters and gauges with labels) rendered in the text
 * exposition format 0.0.4. Label values are escaped as the format requires. Callers choose the
 * labels: paths, routes, codes and kinds, never a secret value or a token.
 */

/** Content type of `render()` output for a `/metrics` response. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

export type Labels = Record<string, string>;

/** A value that only goes up, such as requests sent. */
export interface Counter {
  /** Adds `value` (default 1) to the series of `labels`. */
  inc(labels?: Labels, value?: number): void;
  /** Returns the current value of the series of `labels`, 0 when it does not exist. */
  get(labels?: Labels): number;
}

/** A value that goes up and down, such as the time of the last success. */
export interface Gauge extends Counter {
  set(labels: Labels, value: number): void;
  /** Removes the series of `labels`, so that it disappears from the output. */
  remove(labels: Labels): void;
}

/**
 * Registers metrics and renders them. Names and label names are checked when a metric is
 * registered, so that a typo fails at start and not at the first scrape.
 */
export class MetricsRegistry {
  readonly #metrics = new Map<string, Metric>();
  readonly #collectors: Array<() => void> = [];

  /**
   * Registers a counter. By convention its name ends in `_total`.
   *
   * @throws RangeError when the name or a label name is invalid or the name is taken.
   */
  counter(name: string, help: string, labelNames: string[] = []): Counter {
    return this.#register(name, help, "counter", labelNames);
  }

  /**
   * Registers a gauge.
   *
   * @throws RangeError when the name or a label name is invalid or the name is taken.
   */
  gauge(name: string, help: string, labelNames: string[] = []): Gauge {
    return this.#register(name, help, "gauge", labelNames);
  }

  /** Adds a function that updates gauges right before each render, such as an age in seconds. */
  onCollect(collect: () => void): void {
    this.#collectors.push(collect);
  }

  /** Renders every metric in the text exposition format, series sorted by their labels. */
  render(): string {
    for (const collect of this.#collectors) collect();

    const lines: string[] = [];
    for (const metric of this.#metrics.values()) {
      lines.push(`# HELP ${metric.name} ${escapeHelp(metric.help)}`);
      lines.push(`# TYPE ${metric.name} ${metric.type}`);

      const series = [...metric.series.entries()].sort(([a], [b]) => a.localeCompare(b));
      for (const [key, value] of series) {
        lines.push(`${metric.name}${key} ${formatNumber(value)}`);
      }
    }
    return lines.join("\n") + "\n";
  }

  #register(name: string, help: string, type: "counter" | "gauge", labelNames: string[]): Gauge {
    if (!METRIC_NAME.test(name)) throw new RangeError(`Invalid metric name "${name}": use letters, digits, _ and :, not starting with a digit`);
    if (this.#metrics.has(name)) throw new RangeError(`Metric "${name}" is already registered`);
    for (const label of labelNames) {
      if (!LABEL_NAME.test(label) || label.startsWith("__")) {
        throw new RangeError(`Invalid label name "${label}" of metric "${name}": use letters, digits and _, not starting with a digit or __`);
      }
    }

    const metric: Metric = { name, help, type, labelNames: [...labelNames].sort(), series: new Map() };
    this.#metrics.set(name, metric);

    // Without labels a series exists from the start, so that a scrape shows 0 rather than nothing.
    if (labelNames.length === 0) metric.series.set("", 0);

    const key = (labels: Labels = {}): string => seriesKey(metric, labels);
    return {
      inc(labels, value = 1) {
        if (type === "counter" && value < 0) throw new RangeError(`Counter "${name}" cannot decrease; got ${value}`);
        const k = key(labels);
        metric.series.set(k, (metric.series.get(k) ?? 0) + value);
      },
      get: (labels) => metric.series.get(key(labels)) ?? 0,
      set: (labels, value) => void metric.series.set(key(labels), value),
      remove: (labels) => void metric.series.delete(key(labels)),
    };
  }
}

/** Escapes a label value: backslash, double quote and line feed, as the text format requires. */
export function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

// ---------------------------------------------------------------------------------------------

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

interface Metric {
  name: string;
  help: string;
  type: "counter" | "gauge";
  labelNames: string[];
  /** Value per rendered label set, such as `{path="a/b"}`; "" for the series without labels. */
  series: Map<string, number>;
}

function seriesKey(metric: Metric, labels: Labels): string {
  const labelKeys = Object.keys(labels);
  if (labelKeys.length !== metric.labelNames.length || labelKeys.some((label) => !metric.labelNames.includes(label))) {
    throw new RangeError(`Metric "${metric.name}" takes the labels [${metric.labelNames.join(", ")}], got [${labelKeys.sort().join(", ")}]`);
  }
  if (metric.labelNames.length === 0) return "";

  const pairs = metric.labelNames.map((label) => `${label}="${escapeLabelValue(labels[label]!)}"`);
  return `{${pairs.join(",")}}`;
}

function escapeHelp(help: string): string {
  return help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function formatNumber(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}
