/**
 * The Secret that `sync` writes, as pure functions. They build its data from the mapping lines and
 * the object to create, merge it with the Secret that exists, and decide whether to write. They
 * also run the checks before a write and render the redacted printout of a dry run.
 */
import { stringify } from "yaml";
import { AgentError } from "./errors.ts";
import type { Secret } from "./contract.ts";
import type { KubeSecret } from "./kube.ts";
import { MAX_SECRET_DATA_BYTES, secretDataSize, secretKeyProblem } from "./kube-secret-rules.ts";
import type { SecretMapping } from "./mapping.ts";
import { RenderError, renderSecret } from "./render.ts";
import { copiesAllFields, MANAGED_BY_LABEL, MANAGED_BY_VALUE, type SyncConfig } from "./sync-config.ts";

/** Annotation holding `{"<path>": <version>}` of every ScaiVault secret the data came from. */
export const SOURCES_ANNOTATION = "scaivault.scailabs.ai/sources";

/**
 * Annotation that `kubectl apply` writes: the whole object as last applied, data included. An
 * update removes it, so that values from before a rotation do not stay in the Secret.
 */
export const LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration";

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
      const problem = secretKeyProblem(field);
      if (problem) {
        throw new AgentError(
          "config",
          `Cannot copy field "${field}" of "${mapping.path}" (SYNC_MAPPING line ${mapping.line}): it is no valid Secret key (${problem}); map it with path#field -> KEY`,
        );
      }
      put(field, render(secret, { ...mapping, field, format: "raw", encoding: "utf8" }, field), mapping);
    }
  }

  return { data, sources: sortedRecord(sources) };
}

/**
 * Checks the size of the data against the limit of the Kubernetes API, before any write.
 *
 * @throws AgentError `config` naming the total and the largest keys, never a value.
 */
export function checkSecretSize(config: SyncConfig, data: Map<string, Uint8Array>): void {
  const total = secretDataSize(data);
  if (total <= MAX_SECRET_DATA_BYTES) return;

  const largest = [...data]
    .sort(([, a], [, b]) => b.byteLength - a.byteLength)
    .slice(0, 3)
    .map(([key, value]) => `${key} (${value.byteLength} bytes)`);
  throw new AgentError(
    "config",
    `Cannot write Secret "${config.namespace}/${config.secretName}": its data would be ${total} bytes, more than the ${MAX_SECRET_DATA_BYTES} bytes (1 MiB) ` +
      `that Kubernetes allows in one Secret. Largest keys: ${largest.join(", ")}. Split SYNC_MAPPING across several Secrets, or map single fields with path#field -> KEY`,
  );
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
 * annotations that others set stay, except LAST_APPLIED_ANNOTATION; the data is replaced as a whole.
 */
export function mergeSecret(current: KubeSecret, desired: KubeSecret): KubeSecret {
  const { managedFields: _managedFields, ...metadata } = current.metadata;
  const { [LAST_APPLIED_ANNOTATION]: _lastApplied, ...annotations } = current.metadata.annotations ?? {};
  return {
    ...current,
    metadata: {
      ...metadata,
      labels: { ...current.metadata.labels, ...desired.metadata.labels },
      annotations: { ...annotations, ...desired.metadata.annotations },
    },
    type: current.type ?? desired.type,
    data: desired.data,
  };
}

/** Returns true when the Secret has the annotation that `kubectl apply` fills with old data. */
export function hasLastApplied(secret: KubeSecret | undefined): boolean {
  return secret?.metadata.annotations?.[LAST_APPLIED_ANNOTATION] !== undefined;
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

/**
 * Checks that sync may write over `current`.
 *
 * @throws AgentError `config` for an immutable Secret, another type, or a Secret that sync did
 * not create unless SYNC_ADOPT is set.
 */
export function checkOwnership(config: SyncConfig, current: KubeSecret): void {
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

/**
 * Returns the dry run's printout of `desired`: name, namespace, the labels and annotations that
 * sync sets, the type, and every value replaced by its size. Nothing of the current Secret is
 * printed, because its other annotations may hold values (see LAST_APPLIED_ANNOTATION).
 */
export function redactedYaml(desired: KubeSecret): string {
  const data: Record<string, string> = {};
  for (const [key, value] of Object.entries(desired.data ?? {})) data[key] = `<redacted, ${Buffer.from(value, "base64").length} bytes>`;

  const { name, namespace, labels, annotations } = desired.metadata;
  return stringify({ apiVersion: desired.apiVersion, kind: desired.kind, metadata: { name, namespace, labels, annotations }, type: desired.type, data });
}

// ---------------------------------------------------------------------------------------------

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

function sortedRecord<T>(record: Record<string, T>): Record<string, T> {
  return Object.fromEntries(Object.keys(record).sort().map((key) => [key, record[key]!]));
}

function sameRecord(a: Record<string, string> | undefined, b: Record<string, string> | undefined): boolean {
  const left = a ?? {};
  const right = b ?? {};
  const keys = new Set([...Object.keys(left), ...Object.keys(right)]);
  return [...keys].every((key) => left[key] === right[key]);
}
