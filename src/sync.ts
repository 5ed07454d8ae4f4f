/**
 * The sync command: read the secrets of SYNC_MAPPING from ScaiVault, build the data of one native
 * Kubernetes Secret, and create or update that Secret. The update is a read-compare-replace with
 * the `resourceVersion` that was read. A 409 from a concurrent writer starts the round again with a
 * fresh read, and a Secret that already contains the data, labels and annotations is not written.
 */
import { stringify } from "yaml";
import { AgentError } from "./errors.ts";
import { errorFields, getLogger } from "./log.ts";
import { connect } from "./connect.ts";
import type { ScaiVaultClient } from "./client.ts";
import type { Secret } from "./contract.ts";
import { KubeClient, type KubeSecret } from "./kube.ts";
import { RenderError, renderSecret } from "./render.ts";
import { createFetch } from "./runtime.ts";
import { copiesAllFields, MANAGED_BY_LABEL, MANAGED_BY_VALUE, type SyncConfig } from "./sync-config.ts";
import type { SecretMapping } from "./mapping.ts";

const log = getLogger("sync");

/** Annotation holding `{"<path>": <version>}` of every ScaiVault secret the data came from. */
export const SOURCES_ANNOTATION = "scaivault.scailabs.ai/sources";

/** Rounds of read-compare-replace before sync gives up on a Secret that keeps changing. */
export const MAX_CONFLICT_ROUNDS = 5;

/** Outcome of one sync run: key names and versions, never values. */
export interface SyncResult {
  action: "created" | "updated" | "unchanged";
  namespace: string;
  name: string;
  keys: string[];
  /** Secret path to the version that was read. */
  sources: Record<string, number>;
  /** The Secret's `resourceVersion` after the run; undefined in a dry run. */
  resourceVersion?: string;
  /** Keys whose value was added, changed or removed. */
  changedKeys: string[];
  dryRun: boolean;
}

export interface SyncOptions {
  /** Aborted on SIGTERM/SIGINT. */
  signal?: AbortSignal;
  /** Receives the dry run's printout. @default standard output */
  print?: (text: string) => void;
  /** ScaiVault client; built from `config.connection` when absent. */
  client?: ScaiVaultClient;
  /** Kubernetes client; built from `config.kube` when absent. */
  kube?: KubeClient;
}

/**
 * Runs sync.
 *
 * @throws AgentError of the failure: a secret that cannot be read or rendered (nothing is
 * written then), a Kubernetes API error, or `server` after MAX_CONFLICT_ROUNDS conflicts.
 */
export async function runSync(config: SyncConfig, options: SyncOptions = {}): Promise<SyncResult> {
  const started = performance.now();
  const deadline = AbortSignal.timeout(config.timeoutMs);
  const signal = options.signal ? AbortSignal.any([deadline, options.signal]) : deadline;
  const where = `${config.namespace}/${config.secretName}`;

  log.info("Starting sync", { secret: where, mappings: config.mappings.length, dryRun: config.dryRun, url: config.connection.url });

  const client = options.client ?? connect(config.connection, { signal });
  const secrets = await readAll(client, config.mappings, signal, config.timeoutMs, deadline);
  const { data, sources } = buildSecretData(config.mappings, secrets);
  const desired = desiredSecret(config, data, sources);

  const kube = options.kube ?? (config.kube ? createKubeClient(config, signal) : undefined);
  const print = options.print ?? ((text: string) => process.stdout.write(text));

  let result: SyncResult;
  try {
    result = config.dryRun ? await dryRun(config, desired, sources, kube, print) : await apply(config, desired, sources, kube!);
  } catch (error) {
    throw withDeadline(error, signal, deadline, config.timeoutMs);
  }

  log.info("Sync finished", {
    secret: where,
    action: result.action,
    dryRun: result.dryRun,
    keys: result.keys,
    changedKeys: result.changedKeys,
    resourceVersion: result.resourceVersion,
    durationMs: Math.round(performance.now() - started),
  });
  return result;
}

/**
 * Builds the Secret's data: each mapping line's rendered bytes under its key, and every field
 * under its own name for a `path -> *` line.
 *
 * @throws AgentError `not_found` for a missing field, `config` for a field name that is no valid
 * Secret key or a key that two lines produce.
 */
export function buildSecretData(
  mappings: SecretMapping[],
  secrets: Map<string, Secret>,
): { data: Map<string, Uint8Array>; sources: Record<string, number> } {
  const data = new Map<string, Uint8Array>();
  const origin = new Map<string, number>();
  const sources: Record<string, number> = {};

  const put = (key: string, bytes: Uint8Array, mapping: SecretMapping): void => {
    const earlier = origin.get(key);
    if (earlier !== undefined) {
      throw new AgentError("config", `Invalid SYNC_MAPPING: Secret key "${key}" comes from line ${earlier} and line ${mapping.line}; give each key one source`);
    }
    origin.set(key, mapping.line);
    data.set(key, bytes);
  };

  for (const mapping of mappings) {
    const secret = secrets.get(mapping.path)!;
    sources[mapping.path] = secret.version;

    if (!copiesAllFields(mapping)) {
      put(mapping.target, render(secret, mapping, mapping.target), mapping);
      continue;
    }

    for (const field of Object.keys(secret.data).sort()) {
      if (!SECRET_KEY.test(field)) {
        throw new AgentError(
          "config",
          `Cannot copy field "${field}" of "${mapping.path}" (SYNC_MAPPING line ${mapping.line}): it is no valid Secret key; map it with path#field -> KEY`,
        );
      }
      put(field, render(secret, { ...mapping, field, format: "raw", encoding: "utf8" }, field), mapping);
    }
  }

  return { data, sources: sortedRecord(sources) };
}

/** Returns the Secret that `config` describes, without a `resourceVersion`. */
export function desiredSecret(config: SyncConfig, data: Map<string, Uint8Array>, sources: Record<string, number>): KubeSecret {
  const encoded: Record<string, string> = {};
  for (const key of [...data.keys()].sort()) encoded[key] = Buffer.from(data.get(key)!).toString("base64");

  return {
    apiVersion: "v1",
    kind: "Secret",
    metadata: {
      name: config.secretName,
      namespace: config.namespace,
      labels: { ...config.labels, [MANAGED_BY_LABEL]: MANAGED_BY_VALUE },
      annotations: { ...config.annotations, [SOURCES_ANNOTATION]: JSON.stringify(sources) },
    },
    type: config.secretType,
    data: encoded,
  };
}

/**
 * Returns `current` with the data, type, labels and annotations of `desired`. Labels and
 * annotations that others set stay; the data is replaced as a whole.
 */
export function mergeSecret(current: KubeSecret, desired: KubeSecret): KubeSecret {
  const { managedFields: _managedFields, ...metadata } = current.metadata;
  return {
    ...current,
    metadata: {
      ...metadata,
      labels: { ...current.metadata.labels, ...desired.metadata.labels },
      annotations: { ...current.metadata.annotations, ...desired.metadata.annotations },
    },
    type: current.type ?? desired.type,
    data: desired.data,
  };
}

/** Returns the keys whose value differs between two Secrets' data. */
export function changedKeys(current: KubeSecret | undefined, desired: KubeSecret): string[] {
  const before = current?.data ?? {};
  const after = desired.data ?? {};
  const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
  return [...keys].filter((key) => before[key] !== after[key]).sort();
}

/** Returns true when `current` already contains everything `merged` would write. */
export function isUpToDate(current: KubeSecret, merged: KubeSecret): boolean {
  if ((current.type ?? "Opaque") !== (merged.type ?? "Opaque")) return false;
  if (changedKeys(current, merged).length > 0) return false;
  return sameRecord(current.metadata.labels, merged.metadata.labels) && sameRecord(current.metadata.annotations, merged.metadata.annotations);
}

/** Returns the printout of a dry run: the Secret as YAML with every value replaced by its size. */
export function redactedYaml(secret: KubeSecret): string {
  const data: Record<string, string> = {};
  for (const [key, value] of Object.entries(secret.data ?? {})) data[key] = `<redacted, ${Buffer.from(value, "base64").length} bytes>`;
  return stringify({ ...secret, data });
}

// ---------------------------------------------------------------------------------------------

/** Letters, digits, `-`, `_` and `.`: the rule for keys of a Secret's data. */
const SECRET_KEY = /^[-._a-zA-Z0-9]{1,253}$/;

async function readAll(
  client: ScaiVaultClient,
  mappings: SecretMapping[],
  signal: AbortSignal,
  timeoutMs: number,
  deadline: AbortSignal,
): Promise<Map<string, Secret>> {
  let read;
  try {
    read = await client.readSecrets(mappings.map((mapping) => mapping.path));
  } catch (error) {
    throw withDeadline(error, signal, deadline, timeoutMs);
  }

  if (read.errors.size === 0) {
    log.info("Read secrets", { versions: Object.fromEntries([...read.secrets].map(([path, secret]) => [path, secret.version])) });
    return read.secrets;
  }

  // Nothing is written unless every secret was read: a half-filled Secret would start pods wrongly.
  for (const [path, error] of read.errors) log.error("Cannot read secret", { path, ...errorFields(error) });
  const errors = [...read.errors.values()];
  const first = errors[0]!;
  const lines = [...read.errors].map(([path, error]) => `${path}: ${error.serverCode ?? error.code}`);
  throw new AgentError(first.code, `Cannot read ${errors.length} of ${new Set(mappings.map((m) => m.path)).size} secrets, so the Secret is left as it is:\n  ${lines.join("\n  ")}`, {
    cause: first,
    serverCode: first.serverCode,
    requestId: first.requestId,
  });
}

function render(secret: Secret, mapping: SecretMapping, key: string): Uint8Array {
  try {
    return renderSecret(secret.data, mapping);
  } catch (error) {
    if (!(error instanceof RenderError)) throw error;
    throw new AgentError("not_found", `Cannot render "${secret.path}" into Secret key "${key}" (SYNC_MAPPING line ${mapping.line}): ${error.message}`, {
      cause: error,
    });
  }
}

function createKubeClient(config: SyncConfig, signal: AbortSignal): KubeClient {
  const kube = config.kube!;
  let fetchFunction;
  try {
    fetchFunction = createFetch(kube.caFile);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "error";
    throw new AgentError("config", `Cannot read KUBERNETES_CA_FILE "${kube.caFile}": ${code}. Mount the cluster CA or set KUBERNETES_CA_FILE`, {
      cause: error,
    });
  }
  return new KubeClient({ apiUrl: kube.apiUrl, tokenFile: kube.tokenFile, fetch: fetchFunction, signal, requestTimeoutMs: config.connection.requestTimeoutMs });
}

async function apply(config: SyncConfig, desired: KubeSecret, sources: Record<string, number>, kube: KubeClient): Promise<SyncResult> {
  const where = `${config.namespace}/${config.secretName}`;
  const base = { namespace: config.namespace, name: config.secretName, keys: Object.keys(desired.data ?? {}), sources, dryRun: false };

  for (let round = 1; round <= MAX_CONFLICT_ROUNDS; round++) {
    const current = await kube.getSecret(config.namespace, config.secretName);

    if (!current) {
      try {
        const created = await kube.createSecret(config.namespace, desired);
        log.info("Created Secret", { secret: where, resourceVersion: created.metadata.resourceVersion, keys: base.keys });
        return { ...base, action: "created", resourceVersion: created.metadata.resourceVersion, changedKeys: changedKeys(undefined, desired) };
      } catch (error) {
        if (!isConflict(error)) throw error;
        log.warn("Secret was created by another writer meanwhile, reading it again", { secret: where, round });
        continue;
      }
    }

    checkOwnership(config, current);
    const merged = mergeSecret(current, desired);
    const changed = changedKeys(current, merged);
    if (isUpToDate(current, merged)) {
      log.info("Secret already current", { secret: where, resourceVersion: current.metadata.resourceVersion });
      return { ...base, action: "unchanged", resourceVersion: current.metadata.resourceVersion, changedKeys: [] };
    }

    try {
      const updated = await kube.replaceSecret(config.namespace, merged);
      log.info("Updated Secret", { secret: where, resourceVersion: updated.metadata.resourceVersion, changedKeys: changed });
      return { ...base, action: "updated", resourceVersion: updated.metadata.resourceVersion, changedKeys: changed };
    } catch (error) {
      if (!isConflict(error)) throw error;
      log.warn("Secret changed since it was read, reading it again", { secret: where, round, resourceVersion: current.metadata.resourceVersion });
    }
  }

  throw new AgentError(
    "server",
    `Cannot update Secret "${where}": it changed ${MAX_CONFLICT_ROUNDS} times while sync ran; find the other writer and run sync again`,
  );
}

async function dryRun(
  config: SyncConfig,
  desired: KubeSecret,
  sources: Record<string, number>,
  kube: KubeClient | undefined,
  print: (text: string) => void,
): Promise<SyncResult> {
  const where = `${config.namespace}/${config.secretName}`;
  const current = kube ? await kube.getSecret(config.namespace, config.secretName) : undefined;
  if (current) checkOwnership(config, current);

  const printed = current ? mergeSecret(current, desired) : desired;
  const changed = changedKeys(current, printed);
  const action = !current ? "created" : isUpToDate(current, printed) ? "unchanged" : "updated";
  const verb = { created: "create", updated: "update", unchanged: "leave unchanged" }[action];
  const note = kube ? "" : " (no Kubernetes API configured, so the current Secret was not read)";

  const header = [`# Dry run: sync would ${verb} Secret ${where}${note}`];
  if (changed.length) header.push(`# Keys that would change: ${changed.join(", ")}`);
  print(`${header.join("\n")}\n${redactedYaml(stripServerFields(printed))}`);

  return { action, namespace: config.namespace, name: config.secretName, keys: Object.keys(desired.data ?? {}), sources, changedKeys: changed, dryRun: true };
}

function checkOwnership(config: SyncConfig, current: KubeSecret): void {
  const where = `${config.namespace}/${config.secretName}`;

  if (current.immutable === true) {
    throw new AgentError("config", `Cannot update Secret "${where}": it is immutable; delete it or set SYNC_SECRET_NAME to another name`);
  }
  if ((current.type ?? "Opaque") !== config.secretType) {
    throw new AgentError(
      "config",
      `Cannot update Secret "${where}": its type is "${current.type}" but SYNC_SECRET_TYPE is "${config.secretType}", and a Secret's type cannot change; delete it or set SYNC_SECRET_TYPE`,
    );
  }
  if (current.metadata.labels?.[MANAGED_BY_LABEL] !== MANAGED_BY_VALUE && !config.adopt) {
    throw new AgentError(
      "config",
      `Cannot update Secret "${where}": it exists but was not created by sync (no label ${MANAGED_BY_LABEL}=${MANAGED_BY_VALUE}); set SYNC_ADOPT=true to replace its data`,
    );
  }
}

function isConflict(error: unknown): boolean {
  return error instanceof AgentError && error.status === 409;
}

function withDeadline(error: unknown, signal: AbortSignal, deadline: AbortSignal, timeoutMs: number): unknown {
  if (!(error instanceof AgentError) || error.code !== "timeout") return error;
  if (deadline.aborted) return new AgentError("timeout", `Sync did not finish within SYNC_TIMEOUT (${timeoutMs} ms)`, { cause: error });
  if (signal.aborted) return new AgentError("timeout", "Sync was stopped by a signal before it finished", { cause: error });
  return error;
}

function stripServerFields(secret: KubeSecret): KubeSecret {
  const { managedFields: _managed, uid: _uid, creationTimestamp: _created, ...metadata } = secret.metadata;
  return { ...secret, metadata };
}

function sortedRecord<T>(record: Record<string, T>): Record<string, T> {
  return Object.fromEntries(Object.keys(record).sort().map((key) => [key, record[key]!]));
}

function sameRecord(a: Record<string, string> | undefined, b: Record<string, string> | undefined): boolean {
  const left = a ?? {};
  const right = b ?? {};
  const keys = new Set([...Object.keys(left), ...Object.keys(right)]);
  return [...keys].every((key) => left[key] === right[key]);
}
