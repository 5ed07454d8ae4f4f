/**
 * The rules the Kubernetes API server applies to a Secret's data (`ValidateSecret` in
 * k8s.io/kubernetes pkg/apis/core/validation), checked here so that `sync` fails before a write
 * with a message that names the key, instead of a 422 from the server.
 */

/**
 * Maximum total size of a Secret's data: the sum of the decoded value bytes, keys not counted
 * (`MaxSecretSize`, 1 MiB). Kubernetes rejects a larger total and accepts exactly this many bytes.
 */
export const MAX_SECRET_DATA_BYTES = 1024 * 1024;

/** Longest Secret key: the length of a DNS-1123 subdomain. */
export const MAX_SECRET_KEY_LENGTH = 253;

/**
 * Returns why Kubernetes rejects `key` as a key of a Secret's data, or undefined when it accepts
 * it. The rule is `IsConfigMapKey`: letters, digits, `-`, `_` and `.`, at most 253 characters.
 * `.`, `..` and names starting with `..` are rejected too, because the kubelet writes each key as
 * a file name in a secret volume and uses `..`-prefixed names for its own entries.
 */
export function secretKeyProblem(key: string): string | undefined {
  if (key.length === 0) return "it is empty";
  if (key.length > MAX_SECRET_KEY_LENGTH) return `it is longer than ${MAX_SECRET_KEY_LENGTH} characters`;
  if (!KEY_CHARACTERS.test(key)) return 'use letters, digits, "-", "_" and "."';
  if (key === "." || key === "..") return `Kubernetes rejects "${key}" as a key`;
  if (key.startsWith("..")) return 'Kubernetes rejects keys that start with ".."';
  return undefined;
}

/** Returns the size of a Secret's data as Kubernetes counts it: the value bytes, without keys. */
export function secretDataSize(data: Map<string, Uint8Array>): number {
  let total = 0;
  for (const value of data.values()) total += value.byteLength;
  return total;
}

// ---------------------------------------------------------------------------------------------

const KEY_CHARACTERS = /^[-._a-zA-Z0-9]+$/;
