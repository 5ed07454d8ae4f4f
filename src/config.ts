/**
 * Turns settings (flags over environment over defaults) into typed configuration, validated once
 * with valibot. Every invalid setting is reported in one error, by its variable name.
 */
import * as v from "valibot";
import { AgentError } from "./errors.ts";
import { parseDuration } from "./duration.ts";
import { SETTINGS, readSettings } from "./options.ts";
import { parseDynamicMappings, parseSecretMappings, type DynamicMapping, type SecretMapping } from "./mapping.ts";
import { parseSignalName } from "./reload.ts";
import type { OutputLayout } from "./files.ts";
import type { LogFormat, LogLevelName } from "./log.ts";

export type Env = Record<string, string | undefined>;

/** Shortest `REFRESH_INTERVAL` the sidecar accepts. */
export const MIN_REFRESH_INTERVAL_MS = 100;
export type Args = Record<string, unknown>;

export interface ConnectionConfig {
  url: string;
  token?: string;
  tokenFile: string;
  /** True when SCAIVAULT_TOKEN_FILE was set rather than defaulted. */
  tokenFileExplicit: boolean;
  audience: string;
  role?: string;
  tenantId?: string;
  caFile?: string;
  clientId?: string;
  clientIdFile?: string;
  clientSecret?: string;
  clientSecretFile?: string;
  tokenUrl: string;
  scope?: string;
  requestTimeoutMs: number;
  maxAttempts: number;
  logLevel: LogLevelName;
  logFormat?: LogFormat;
}

export interface OutputConfig {
  layout: OutputLayout;
  /** Mode for files whose line sets none. */
  fileMode: number;
}

export interface InitConfig {
  connection: ConnectionConfig;
  output: OutputConfig;
  secrets: SecretMapping[];
  dynamic: DynamicMapping[];
  timeoutMs: number;
  failOpen: boolean;
}

/**
 * Reads the connection settings.
 *
 * @throws AgentError `config` listing every invalid setting.
 */
export function loadConnection(args: Args, env: Env): ConnectionConfig {
  const raw = readSettings(SETTINGS.connection, args, env);
  return validate(ConnectionSchema, raw, "connection", { tokenFileExplicit: Boolean(args["token-file"] ?? env.SCAIVAULT_TOKEN_FILE) });
}

/** Reads the output settings. */
export function loadOutput(args: Args, env: Env): OutputConfig {
  const raw = readSettings(SETTINGS.output, args, env);
  return validate(OutputSchema, raw, "output", {});
}

/**
 * Reads everything `init` needs. Lines of SECRETS and DYNAMIC are checked before any request.
 *
 * @throws AgentError `config` listing every invalid setting and line.
 */
export function loadInitConfig(args: Args, env: Env): InitConfig {
  const { problems, attempt } = collectProblems();

  const connection = attempt(() => loadConnection(args, env));
  const output = attempt(() => loadOutput(args, env));
  const raw = readSettings(SETTINGS.init, args, env);
  const secrets = attempt(() => parseSecretMappings(raw.secrets ?? "", { variable: "SECRETS" })) ?? [];
  const dynamic = attempt(() => parseDynamicMappings(raw.dynamic ?? "", { variable: "DYNAMIC" })) ?? [];
  const timeoutMs = attempt(() => positiveDuration(raw.timeout!, "INIT_TIMEOUT"));
  const failOpen = attempt(() => parseBoolean(raw.failOpen!, "FAIL_OPEN"));

  const linesParsed = problems.every((problem) => !problem.startsWith("Invalid SECRETS") && !problem.startsWith("Invalid DYNAMIC"));
  if (linesParsed && secrets.length === 0 && dynamic.length === 0 && raw.secrets !== undefined) {
    problems.push("SECRETS has no lines: write one `path -> file` per line");
  } else if (raw.secrets === undefined && raw.dynamic === undefined) {
    problems.push("SECRETS is not set: write one `path -> file` per line, for example\n    environments/production/billing/database -> /run/secrets/db.json");
  }

  const secretTargets = new Map(secrets.map((mapping) => [mapping.target, mapping.line]));
  for (const mapping of dynamic) {
    const line = secretTargets.get(mapping.target);
    if (line !== undefined) problems.push(`DYNAMIC line ${mapping.line}: "${mapping.target}" is already written by SECRETS line ${line}; give each its own file`);
  }

  if (problems.length) throw new AgentError("config", problems.join("\n"));
  return { connection: connection!, output: output!, secrets, dynamic, timeoutMs: timeoutMs!, failOpen: failOpen! };
}

export interface SidecarConfig {
  connection: ConnectionConfig;
  output: OutputConfig;
  watch: SecretMapping[];
  refreshIntervalMs: number;
  /** Fraction of the interval by which each wait is spread either way, 0 to 0.5. */
  refreshJitter: number;
  reloadSignal: NodeJS.Signals;
  reloadTarget?: string;
  /** How long the start-up check looks for the reload target before it warns. */
  reloadTargetWaitMs: number;
  /** Address of /healthz, /readyz and /metrics; undefined when HEALTH_ADDR is `off`. */
  health?: { hostname: string; port: number };
  events: boolean;
  startJitterMs: number;
  /** Age of the last successful refresh beyond which /readyz fails; undefined: never. */
  readyMaxStalenessMs?: number;
  /** Leases to hold while the sidecar runs. */
  dynamic: DynamicMapping[];
  /** Time between writing a replaced lease's new credential and revoking the old lease. */
  leaseRevokeGraceMs: number;
}

/**
 * Reads everything `sidecar` needs. Lines of WATCH_PATHS are checked before any request.
 *
 * @throws AgentError `config` listing every invalid setting and line.
 */
export function loadSidecarConfig(args: Args, env: Env): SidecarConfig {
  const { problems, attempt } = collectProblems();

  const connection = attempt(() => loadConnection(args, env));
  const output = attempt(() => loadOutput(args, env));
  const raw = readSettings(SETTINGS.sidecar, args, env);
  const dynamic = attempt(() => parseDynamicMappings(raw.dynamic ?? "", { variable: "DYNAMIC" })) ?? [];
  const leaseRevokeGraceMs = attempt(() => parseDuration(raw.leaseRevokeGrace!, "LEASE_REVOKE_GRACE"));
  const watch = attempt(() => parseSecretMappings(raw.watchPaths ?? "", { variable: "WATCH_PATHS" })) ?? [];
  const refreshIntervalMs = attempt(() => {
    const ms = positiveDuration(raw.refreshInterval!, "REFRESH_INTERVAL");
    // Below this the loop would spend the read budget in seconds; tests use 500ms.
    if (ms < MIN_REFRESH_INTERVAL_MS) {
      throw new AgentError("config", `Invalid REFRESH_INTERVAL: "${raw.refreshInterval}" is shorter than ${MIN_REFRESH_INTERVAL_MS}ms; use 30s or more in production`);
    }
    return ms;
  });
  const refreshJitter = attempt(() => parseFraction(raw.refreshJitter!, "REFRESH_JITTER", 0.5));
  const reloadSignal = attempt(() => parseSignalName(raw.reloadSignal!, "RELOAD_SIGNAL"));
  const reloadTargetWaitMs = attempt(() => parseDuration(raw.reloadTargetWait!, "RELOAD_TARGET_WAIT"));
  const health = attempt(() => parseListenAddress(raw.healthAddr!, "HEALTH_ADDR"));
  const events = attempt(() => parseBoolean(raw.events!, "EVENTS"));
  const startJitterMs = attempt(() => parseDuration(raw.startJitter!, "START_JITTER"));
  const readyMaxStalenessMs = raw.readyMaxStaleness === undefined ? undefined : attempt(() => positiveDuration(raw.readyMaxStaleness!, "READY_MAX_STALENESS"));

  const watchTargets = new Map(watch.map((mapping) => [mapping.target, mapping.line]));
  for (const mapping of dynamic) {
    const line = watchTargets.get(mapping.target);
    if (line !== undefined) problems.push(`DYNAMIC line ${mapping.line}: "${mapping.target}" is already written by WATCH_PATHS line ${line}; give each its own file`);
  }

  if (watch.length === 0 && raw.dynamic === undefined) {
    problems.push(
      raw.watchPaths === undefined
        ? "WATCH_PATHS is not set: write one `path -> file` per line, for example\n    environments/production/billing/database -> /run/secrets/db.json"
        : "WATCH_PATHS has no lines: write one `path -> file` per line",
    );
  }

  if (problems.length) throw new AgentError("config", problems.join("\n"));
  return {
    connection: connection!,
    output: output!,
    watch,
    refreshIntervalMs: refreshIntervalMs!,
    refreshJitter: refreshJitter!,
    reloadSignal: reloadSignal!,
    reloadTarget: raw.reloadTarget?.trim() || undefined,
    reloadTargetWaitMs: reloadTargetWaitMs!,
    health: health ?? undefined,
    events: events!,
    startJitterMs: startJitterMs!,
    readyMaxStalenessMs,
    dynamic,
    leaseRevokeGraceMs: leaseRevokeGraceMs!,
  };
}

/** Parses a percentage (`10%`) or a fraction (`0.1`) between 0 and `max`. */
export function parseFraction(value: string, name: string, max: number): number {
  const text = value.trim();
  const percent = text.endsWith("%");
  const number = Number(percent ? text.slice(0, -1) : text);
  const fraction = percent ? number / 100 : number;

  if (text === "" || !Number.isFinite(fraction) || fraction < 0 || fraction > max) {
    throw new AgentError("config", `Invalid ${name}: "${value}". Write a percentage from 0% to ${max * 100}%, such as 10%`);
  }
  return fraction;
}

/**
 * Parses `host:port`, `[ipv6]:port` or `:port` (all interfaces); `off` gives null.
 *
 * @throws AgentError `config` naming the value.
 */
export function parseListenAddress(value: string, name: string): { hostname: string; port: number } | null {
  const text = value.trim();
  if (text.toLowerCase() === "off") return null;

  // A port has no leading zeros (`00080` is ambiguous), and a host is an IPv4 address, a name or a
  // bracketed IPv6 address, so that a typo fails here and not with an obscure error from listen().
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]*)):(0|[1-9]\d{0,4})$/.exec(text);
  const port = match ? Number(match[3]) : NaN;
  if (!match || port > 65535) {
    throw new AgentError("config", `Invalid ${name}: "${value}". Write host:port such as [::]:8099, 0.0.0.0:8099 or 127.0.0.1:0, or off`);
  }
  return { hostname: match[1] ?? (match[2] || "0.0.0.0"), port };
}

/**
 * Returns a list of problems and `attempt`, which runs a loader and records its `config` error
 * instead of throwing, so that one error can report every invalid setting. Other errors propagate.
 */
export function collectProblems(): { problems: string[]; attempt: <T>(load: () => T) => T | undefined } {
  const problems: string[] = [];

  function attempt<T>(load: () => T): T | undefined {
    try {
      return load();
    } catch (error) {
      if (!(error instanceof AgentError) || error.code !== "config") throw error;
      problems.push(error.message);
      return undefined;
    }
  }

  return { problems, attempt };
}

/** Parses `true`/`false` (also 1/0, yes/no). */
export function parseBoolean(value: string, name: string): boolean {
  const text = value.trim().toLowerCase();
  if (["true", "1", "yes", "on"].includes(text)) return true;
  if (["false", "0", "no", "off", ""].includes(text)) return false;
  throw new AgentError("config", `Invalid ${name}: "${value}". Use true or false`);
}

/** Parses a duration that must be greater than zero. */
export function positiveDuration(value: string, name: string): number {
  const ms = parseDuration(value, name);
  if (ms <= 0) throw new AgentError("config", `Invalid ${name}: "${value}" must be longer than zero`);
  return ms;
}

/** Parses an octal file mode such as `0644`. */
export function parseMode(value: string, name: string): number {
  if (!/^0?[0-7]{3}$/.test(value.trim())) throw new AgentError("config", `Invalid ${name}: "${value}". Write an octal mode such as 0644 or 0400`);
  return Number.parseInt(value.trim(), 8);
}

// ---------------------------------------------------------------------------------------------

const optional = v.optional(v.string());

/** Wraps a throwing parser as a valibot transform that reports its message as the issue. */
function parsed<T>(parse: (value: string) => T) {
  return v.rawTransform<string, T>(({ dataset, addIssue, NEVER }) => {
    try {
      return parse(dataset.value);
    } catch (error) {
      addIssue({ message: (error as Error).message });
      return NEVER;
    }
  });
}

const ConnectionSchema = v.object({
  url: v.pipe(
    v.string("SCAIVAULT_URL is not set: set it to the ScaiVault base URL, such as https://scaivault.scailabs.ai"),
    v.check((value) => /^https?:\/\/[^\s/]+/.test(value), "Invalid SCAIVAULT_URL: write an http:// or https:// URL"),
  ),
  token: optional,
  tokenFile: v.string(),
  audience: v.string(),
  role: optional,
  tenantId: v.optional(v.pipe(v.string(), v.regex(/^[A-Za-z0-9_\-]+$/, "Invalid SCAIVAULT_TENANT_ID: use the tnt_... id"))),
  caFile: optional,
  clientId: optional,
  clientIdFile: optional,
  clientSecret: optional,
  clientSecretFile: optional,
  tokenUrl: v.pipe(v.string(), v.check((value) => /^https?:\/\//.test(value), "Invalid SCAIKEY_TOKEN_URL: write an http:// or https:// URL")),
  scope: optional,
  requestTimeout: v.pipe(v.string(), parsed((value) => positiveDuration(value, "REQUEST_TIMEOUT"))),
  maxAttempts: v.pipe(
    v.string(),
    v.regex(/^[1-9]\d*$/, "Invalid RETRY_MAX_ATTEMPTS: write a whole number of 1 or more"),
    v.transform(Number),
  ),
  logLevel: v.picklist(["silent", "error", "warn", "info", "debug", "trace"], "Invalid LOG_LEVEL: use error, warn, info or debug"),
  logFormat: v.optional(v.picklist(["json", "text"], "Invalid LOG_FORMAT: use json or text")),
});

const OutputSchema = v.object({
  outputDirs: v.pipe(
    v.string(),
    v.transform((value) => value.split(",").map((dir) => dir.trim()).filter(Boolean)),
    v.check((dirs) => dirs.length > 0, "OUTPUT_DIRS is empty: name at least one directory"),
    v.check((dirs) => dirs.every((dir) => dir.startsWith("/")), "Invalid OUTPUT_DIRS: every directory must be an absolute path"),
  ),
  outputPrefix: optional,
  fileMode: v.pipe(v.string(), parsed((value) => parseMode(value, "FILE_MODE"))),
});

function validate<S extends v.GenericSchema>(schema: S, raw: unknown, _group: string, extra: Record<string, unknown>): any {
  const result = v.safeParse(schema, raw);
  if (!result.success) {
    const messages = [...new Set(result.issues.map((issue) => issue.message))];
    throw new AgentError("config", messages.join("\n"));
  }

  const output = { ...(result.output as Record<string, unknown>), ...extra };
  if ("requestTimeout" in output) {
    output.requestTimeoutMs = output.requestTimeout;
    delete output.requestTimeout;
  }
  if ("outputDirs" in output) {
    output.layout = { dirs: output.outputDirs, prefix: output.outputPrefix ?? "" };
    delete output.outputDirs;
    delete output.outputPrefix;
  }
  return output;
}
