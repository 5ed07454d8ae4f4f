/**
 * Typed configuration of `sync`: the ScaiVault connection, the SYNC_MAPPING lines, the Secret's
 * name, namespace, type and metadata, and the way to the Kubernetes API. Every invalid setting is
 * reported in one error, by its variable name.
 */
import { readFileSync } from "node:fs";
import { AgentError } from "./errors.ts";
import { loadConnection, parseBoolean, positiveDuration, type Args, type ConnectionConfig, type Env, collectProblems } from "./config.ts";
import { ALL_FIELDS, parseSecretMappings, type SecretMapping } from "./mapping.ts";
import { SETTINGS, readSettings } from "./options.ts";
import { parseRestartTargets, type RestartTarget } from "./sync-restart.ts";

/** Label that marks a Secret as written by `sync`. */
export const MANAGED_BY_LABEL = "app.kubernetes.io/managed-by";
export const MANAGED_BY_VALUE = "scaivault-agent";

export interface KubeConnection {
  apiUrl: string;
  tokenFile: string;
  caFile: string;
}

export interface SyncConfig {
  connection: ConnectionConfig;
  /** SYNC_MAPPING lines; a `target` of `*` copies every field. */
  mappings: SecretMapping[];
  secretName: string;
  namespace: string;
  secretType: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  adopt: boolean;
  /** SYNC_RESTART: workloads in `namespace` to roll out when their pods may hold other secret versions. */
  restart: RestartTarget[];
  dryRun: boolean;
  timeoutMs: number;
  /** Undefined only in a dry run outside a cluster: then nothing is compared or written. */
  kube?: KubeConnection;
}

/**
 * Reads everything `sync` needs. The namespace comes from SYNC_NAMESPACE or else the pod's
 * namespace file; the API URL from KUBERNETES_API_URL or else KUBERNETES_SERVICE_HOST and _PORT.
 *
 * @throws AgentError `config` listing every invalid setting and line.
 */
export function loadSyncConfig(args: Args, env: Env): SyncConfig {
  const { problems, attempt } = collectProblems();

  const raw = readSettings(SETTINGS.sync, args, env);
  const connection = attempt(() => loadConnection(args, env));
  const mappings = attempt(() => parseSyncMapping(raw.mapping)) ?? [];
  const secretName = attempt(() => checkName(raw.secretName, "SYNC_SECRET_NAME"));
  const namespace = attempt(() => resolveNamespace(raw.namespace, raw.namespaceFile!));
  const secretType = attempt(() => checkSecretType(raw.secretType!));
  const labels = attempt(() => parsePairs(raw.labels ?? "", "SYNC_LABELS", true)) ?? {};
  const annotations = attempt(() => parsePairs(raw.annotations ?? "", "SYNC_ANNOTATIONS", false)) ?? {};
  const adopt = attempt(() => parseBoolean(raw.adopt!, "SYNC_ADOPT"));
  const restart = attempt(() => parseRestartTargets(raw.restart)) ?? [];
  const dryRun = attempt(() => parseBoolean(raw.dryRun!, "SYNC_DRY_RUN"));
  const timeoutMs = attempt(() => positiveDuration(raw.timeout!, "SYNC_TIMEOUT"));
  const apiUrl = attempt(() => resolveApiUrl(raw.apiUrl, env, dryRun === true));

  if (MANAGED_BY_LABEL in labels) problems.push(`Invalid SYNC_LABELS: sync sets "${MANAGED_BY_LABEL}" itself; remove it`);
  if (problems.length) throw new AgentError("config", problems.join("\n"));

  const kube = apiUrl === undefined ? undefined : { apiUrl, tokenFile: raw.tokenFile!, caFile: raw.caFile! };
  return {
    connection: connection!,
    mappings,
    secretName: secretName!,
    namespace: namespace!,
    secretType: secretType!,
    labels,
    annotations,
    adopt: adopt!,
    restart,
    dryRun: dryRun!,
    timeoutMs: timeoutMs!,
    kube,
  };
}

/**
 * Parses SYNC_MAPPING: the grammar of SECRETS with Secret keys as targets, plus `path -> *`.
 * `mode=` is rejected: a Secret key has no file mode.
 *
 * @throws AgentError `config` listing every invalid line.
 */
export function parseSyncMapping(text: string | undefined): SecretMapping[] {
  if (text === undefined || text.trim() === "") {
    throw new AgentError(
      "config",
      "SYNC_MAPPING is not set: write one `path -> KEY`, `path#field -> KEY` or `path -> *` per line, for example\n" +
        "    environments/production/billing/database#password -> DB_PASSWORD",
    );
  }

  const mappings = parseSecretMappings(text, { variable: "SYNC_MAPPING", targetKind: "key" });
  const problems = mappings
    .filter((mapping) => mapping.mode !== undefined)
    .map((mapping) => `SYNC_MAPPING line ${mapping.line}: mode= has no meaning for a Secret key; remove it`);
  if (problems.length) throw new AgentError("config", problems.join("\n"));
  return mappings;
}

/** Returns true when `mapping` copies every field of the secret as a key. */
export function copiesAllFields(mapping: SecretMapping): boolean {
  return mapping.target === ALL_FIELDS;
}

// ---------------------------------------------------------------------------------------------

/** RFC 1123 subdomain: the rule for Secret names. */
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
/** RFC 1123 label: the rule for namespace names. */
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
/** Qualified name of a label or annotation key: optional DNS prefix and `/`, then up to 63 characters. */
const KEY_NAME = /^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$/;
const LABEL_VALUE = /^(([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?)$/;

function checkName(value: string | undefined, variable: string): string {
  if (value === undefined) throw new AgentError("config", `${variable} is not set: name the Kubernetes Secret to write, such as billing-secrets`);
  if (value.length > 253 || !DNS_SUBDOMAIN.test(value)) {
    throw new AgentError("config", `Invalid ${variable} "${value}": use lower-case letters, digits, "-" and ".", at most 253 characters`);
  }
  return value;
}

function resolveNamespace(value: string | undefined, namespaceFile: string): string {
  let namespace = value;
  let source = "SYNC_NAMESPACE";

  if (namespace === undefined) {
    source = `KUBERNETES_NAMESPACE_FILE "${namespaceFile}"`;
    try {
      namespace = readFileSync(namespaceFile, "utf8").trim();
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? "error";
      throw new AgentError("config", `SYNC_NAMESPACE is not set and ${source} cannot be read (${code}): set SYNC_NAMESPACE`);
    }
  }

  if (namespace.length > 63 || !DNS_LABEL.test(namespace)) {
    throw new AgentError("config", `Invalid namespace "${namespace}" from ${source}: use lower-case letters, digits and "-", at most 63 characters`);
  }
  return namespace;
}

function checkSecretType(value: string): string {
  if (!/^[A-Za-z0-9][-A-Za-z0-9_./]*$/.test(value) || value.length > 253) {
    throw new AgentError("config", `Invalid SYNC_SECRET_TYPE "${value}": use Opaque, kubernetes.io/dockerconfigjson, kubernetes.io/tls or another type name`);
  }
  return value;
}

function resolveApiUrl(value: string | undefined, env: Env, dryRun: boolean): string | undefined {
  if (value !== undefined) return value;

  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT ?? "443";
  if (host === undefined || host === "") {
    // A dry run outside a cluster still shows the Secret it would write.
    if (dryRun) return undefined;
    throw new AgentError(
      "config",
      "The Kubernetes API address is unknown: KUBERNETES_SERVICE_HOST is not set, so sync does not run in a pod; set KUBERNETES_API_URL",
    );
  }
  if (!/^\d+$/.test(port)) throw new AgentError("config", `Invalid KUBERNETES_SERVICE_PORT "${port}": expected a port number`);

  const bracketed = host.includes(":") ? `[${host}]` : host;
  return `https://${bracketed}:${port}`;
}

/** Parses `key=value` pairs separated by commas or lines, checking keys (and label values). */
function parsePairs(text: string, variable: string, isLabel: boolean): Record<string, string> {
  const pairs: Record<string, string> = {};
  const problems: string[] = [];

  for (const item of text.split(/[,\n]/).map((part) => part.trim()).filter(Boolean)) {
    const equals = item.indexOf("=");
    if (equals <= 0) {
      problems.push(`"${item}" is not key=value`);
      continue;
    }

    const key = item.slice(0, equals).trim();
    const value = item.slice(equals + 1).trim();
    if (!isQualifiedKey(key)) problems.push(`invalid key "${key}": use [prefix/]name with letters, digits, "-", "_" and "."`);
    else if (isLabel && (value.length > 63 || !LABEL_VALUE.test(value))) problems.push(`invalid label value "${value}" for "${key}"`);
    else if (key in pairs) problems.push(`"${key}" is given twice`);
    else pairs[key] = value;
  }

  if (problems.length) throw new AgentError("config", `Invalid ${variable}: ${problems.join("; ")}`);
  return pairs;
}

function isQualifiedKey(key: string): boolean {
  const slash = key.lastIndexOf("/");
  const prefix = slash === -1 ? undefined : key.slice(0, slash);
  const name = slash === -1 ? key : key.slice(slash + 1);

  if (prefix !== undefined && (prefix.length > 253 || !DNS_SUBDOMAIN.test(prefix))) return false;
  return name.length <= 63 && KEY_NAME.test(name);
}
