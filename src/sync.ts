/**
 * The sync command: read the secrets of SYNC_MAPPING from ScaiVault, build the data of one native
 * Kubernetes Secret, and create or update that Secret. The update is a read-compare-replace with
 * the `resourceVersion` that was read. A 409 from a concurrent writer starts the round again with a
 * fresh read, and a Secret that already contains the data, labels and annotations is not written.
 * Then the workloads of SYNC_RESTART roll out new pods if theirs may hold other secret versions.
 */
import { AgentError } from "./errors.ts";
import { errorFields, getLogger } from "./log.ts";
import { connect } from "./connect.ts";
import type { ScaiVaultClient } from "./client.ts";
import type { Secret } from "./contract.ts";
import { KubeClient, type KubeSecret } from "./kube.ts";
import { MAX_SECRET_DATA_BYTES, secretDataSize } from "./kube-secret-rules.ts";
import { createFetch } from "./runtime.ts";
import type { SyncConfig } from "./sync-config.ts";
import { checkRestart, formatTarget, restartWorkloads, secretVersionsHash } from "./sync-restart.ts";
import {
  buildSecretData,
  changedKeys,
  checkOwnership,
  checkSecretSize,
  desiredSecret,
  hasLastApplied,
  isUpToDate,
  LAST_APPLIED_ANNOTATION,
  mergeSecret,
  redactedYaml,
} from "./sync-secret.ts";
import type { SecretMapping } from "./mapping.ts";

const log = getLogger("sync");

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
  /** Workloads of SYNC_RESTART whose pod template was patched, as `kind/name`; none in a dry run. */
  restarted: string[];
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
 * @throws AgentError of the failure. Nothing is written when a secret cannot be read or rendered,
 * or when the data is over the Secret size limit. Other failures are a Kubernetes API error,
 * `server` after MAX_CONFLICT_ROUNDS conflicts, and a failed restart after the Secret was written.
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
  checkSecretSize(config, data);
  const desired = desiredSecret(config, data, sources);

  const kube = options.kube ?? (config.kube ? createKubeClient(config, signal) : undefined);
  const print = options.print ?? ((text: string) => process.stdout.write(text));

  let result: SyncResult;
  try {
    result = config.dryRun ? await dryRun(config, desired, data, sources, kube, print) : await apply(config, desired, sources, kube!);
  } catch (error) {
    throw withDeadline(error, signal, deadline, config.timeoutMs);
  }

  log.info("Sync finished", {
    secret: where,
    action: result.action,
    dryRun: result.dryRun,
    keys: result.keys,
    changedKeys: result.changedKeys,
    restarted: result.restarted,
    resourceVersion: result.resourceVersion,
    durationMs: Math.round(performance.now() - started),
  });
  return result;
}

// ---------------------------------------------------------------------------------------------

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
  const written = await writeSecret(config, desired, sources, kube);
  const restarted = await restartWorkloads(kube, config.namespace, config.restart, sources, written.action);
  return { ...written, restarted };
}

async function writeSecret(config: SyncConfig, desired: KubeSecret, sources: Record<string, number>, kube: KubeClient): Promise<Omit<SyncResult, "restarted">> {
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
      if (hasLastApplied(current)) log.info("Removed annotation that contains an earlier copy of the data", { secret: where, annotation: LAST_APPLIED_ANNOTATION });
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
  data: Map<string, Uint8Array>,
  sources: Record<string, number>,
  kube: KubeClient | undefined,
  print: (text: string) => void,
): Promise<SyncResult> {
  const where = `${config.namespace}/${config.secretName}`;
  const current = kube ? await kube.getSecret(config.namespace, config.secretName) : undefined;
  if (current) checkOwnership(config, current);

  const merged = current ? mergeSecret(current, desired) : desired;
  const changed = changedKeys(current, merged);
  const action = !current ? "created" : isUpToDate(current, merged) ? "unchanged" : "updated";
  const verb = { created: "create", updated: "update", unchanged: "leave unchanged" }[action];
  const note = kube ? "" : " (no Kubernetes API configured, so the current Secret was not read)";

  const header = [`# Dry run: sync would ${verb} Secret ${where}${note}`];
  if (changed.length) header.push(`# Keys that would change: ${changed.join(", ")}`);
  if (hasLastApplied(current)) header.push(`# The update would remove the annotation ${LAST_APPLIED_ANNOTATION}, which holds an earlier copy of the data`);
  if (current) header.push("# Shown: what sync sets. Labels and annotations that others set stay as they are");
  header.push(`# Data size: ${secretDataSize(data)} of at most ${MAX_SECRET_DATA_BYTES} bytes`);
  header.push(...(await restartPlan(config, sources, kube)));
  print(`${header.join("\n")}\n${redactedYaml(desired)}`);

  return { action, namespace: config.namespace, name: config.secretName, keys: Object.keys(desired.data ?? {}), sources, changedKeys: changed, restarted: [], dryRun: true };
}

/** Returns the dry run's lines about SYNC_RESTART. */
async function restartPlan(config: SyncConfig, sources: Record<string, number>, kube: KubeClient | undefined): Promise<string[]> {
  const hash = secretVersionsHash(sources);
  const lines: string[] = [];

  for (const target of config.restart) {
    const workload = formatTarget(target);
    if (!kube) {
      lines.push(`# Would restart ${workload} unless its pods already run these secret versions (not checked without a Kubernetes API)`);
      continue;
    }

    const decision = await checkRestart(kube, config.namespace, target, hash);
    if (decision === "restart") lines.push(`# Would restart ${workload}: its pod template lacks the secret versions ${hash}`);
    if (decision === "current") lines.push(`# Would leave ${workload} running: its pods run these secret versions`);
    if (decision === "missing") lines.push(`# Would leave ${workload} alone: it does not exist`);
  }
  return lines;
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
