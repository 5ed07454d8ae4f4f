/**
 * Settings of `csi-provider`. The ScaiVault URL and the token come with each Mount request (the
 * SecretProviderClass and the pod), so of the connection settings only the CA bundle, tenant,
 * timeouts, retries and logging apply.
 */
import { AgentError } from "../errors.ts";
import { parseMode, parseListenAddress, positiveDuration, type Args, type Env, collectProblems } from "../config.ts";
import { SETTINGS, readSettings, type Setting } from "../options.ts";
import { parseAllowedUrls, type UrlRule } from "./allowed-urls.ts";

/** The connection settings that apply to the provider. */
export const CSI_CONNECTION_SETTINGS = {
  caFile: SETTINGS.connection.caFile,
  tenantId: SETTINGS.connection.tenantId,
  requestTimeout: SETTINGS.connection.requestTimeout,
  maxAttempts: { ...SETTINGS.connection.maxAttempts, default: "3" },
  logLevel: SETTINGS.connection.logLevel,
  logFormat: SETTINGS.connection.logFormat,
} satisfies Record<string, Setting>;

export interface CsiConfig {
  socketPath: string;
  socketMode: number;
  /** Listen address of /healthz, /readyz and /metrics; undefined when HEALTH_ADDR is `off`. */
  health?: { hostname: string; port: number };
  allowedUrls: UrlRule[];
  mountTimeoutMs: number;
  mountConcurrency: number;
  maxResponseBytes: number;
  /** Mount calls that run at once. */
  maxMounts: number;
  /** Mount calls that wait for a slot. */
  mountQueue: number;
  caFile?: string;
  tenantId?: string;
  requestTimeoutMs: number;
  maxAttempts: number;
}

/**
 * Reads the provider's settings.
 *
 * @throws AgentError `config` listing every invalid setting.
 */
export function loadCsiConfig(args: Args, env: Env): CsiConfig {
  const { problems, attempt } = collectProblems();

  const raw = readSettings(SETTINGS.csi, args, env);
  const connection = readSettings(CSI_CONNECTION_SETTINGS, args, env);

  const socketPath = raw.socket!.trim();
  if (!socketPath.startsWith("/")) problems.push(`Invalid CSI_SOCKET "${raw.socket}": write an absolute path ending in scaivault.sock`);

  const socketMode = attempt(() => parseMode(raw.socketMode!, "CSI_SOCKET_MODE"));
  const health = attempt(() => parseListenAddress(raw.healthAddr!, "HEALTH_ADDR"));
  const allowedUrls = attempt(() => parseAllowedUrls(raw.allowedUrls!));
  const mountTimeoutMs = attempt(() => positiveDuration(raw.mountTimeout!, "CSI_MOUNT_TIMEOUT"));
  const mountConcurrency = attempt(() => wholeNumber(raw.mountConcurrency!, "CSI_MOUNT_CONCURRENCY", 1, 64));
  const maxResponseBytes = attempt(() => wholeNumber(raw.maxResponseBytes!, "CSI_MAX_RESPONSE_BYTES", 1024, 256 * 1024 * 1024));
  const maxMounts = attempt(() => wholeNumber(raw.maxMounts!, "CSI_MAX_MOUNTS", 1, 256));
  const mountQueue = attempt(() => wholeNumber(raw.mountQueue!, "CSI_MOUNT_QUEUE", 0, 10_000));
  const requestTimeoutMs = attempt(() => positiveDuration(connection.requestTimeout!, "REQUEST_TIMEOUT"));
  const maxAttempts = attempt(() => wholeNumber(connection.maxAttempts!, "RETRY_MAX_ATTEMPTS", 1, 20));

  const tenantId = connection.tenantId?.trim() || undefined;
  if (tenantId !== undefined && !/^[A-Za-z0-9_-]+$/.test(tenantId)) problems.push("Invalid SCAIVAULT_TENANT_ID: use the tnt_... id");

  if (problems.length) throw new AgentError("config", problems.join("\n"));
  return {
    socketPath,
    socketMode: socketMode!,
    health: health ?? undefined,
    allowedUrls: allowedUrls!,
    mountTimeoutMs: mountTimeoutMs!,
    mountConcurrency: mountConcurrency!,
    maxResponseBytes: maxResponseBytes!,
    maxMounts: maxMounts!,
    mountQueue: mountQueue!,
    caFile: connection.caFile?.trim() || undefined,
    tenantId,
    requestTimeoutMs: requestTimeoutMs!,
    maxAttempts: maxAttempts!,
  };
}

// ---------------------------------------------------------------------------------------------

function wholeNumber(value: string, name: string, min: number, max: number): number {
  const text = value.trim();
  if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max) {
    throw new AgentError("config", `Invalid ${name}: "${value}". Write a whole number from ${min} to ${max}`);
  }
  return Number(text);
}
