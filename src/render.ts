/**
 * Secret data to file bytes. The formats:
 * - `json`: the `data` object as JSON, two-space indented, with a final newline.
 * - `raw`: the value of one field, byte for byte (base64-decoded with `encoding=base64`); a value
 *   that is not a string is written as JSON.
 * - `env`: one `KEY='value'` line per field, sorted by key, quoted so `. file` in a POSIX shell
 *   yields the exact value. Keys become upper case with other characters than A-Z, 0-9 and `_`
 *   replaced by `_`.
 */
import type { FileOptions } from "./mapping.ts";

const encoder = new TextEncoder();

/** The reason a secret cannot be rendered; never contains a value. */
export class RenderError extends Error {
  override readonly name = "RenderError";
  /** `missing_field` when the selected field is absent; `invalid_data` when the data cannot take the format. */
  readonly kind: "missing_field" | "invalid_data";

  constructor(message: string, kind: RenderError["kind"] = "invalid_data") {
    super(message);
    this.kind = kind;
  }
}

/**
 * Renders `data` as `options` ask.
 *
 * @throws RenderError when the field is missing, base64 is invalid, or env keys collide.
 */
export function renderSecret(data: Record<string, unknown>, options: Pick<FileOptions, "format" | "field" | "encoding">): Uint8Array {
  if (options.field !== undefined) return renderField(data, options.field, options.encoding);
  if (options.format === "env") return encoder.encode(renderEnv(data));
  return encoder.encode(JSON.stringify(data, null, 2) + "\n");
}

/** Quotes `value` for a POSIX shell: single quotes, with each `'` written as `'\''`. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

/** Returns the environment variable name that `env` format gives `key`. */
export function envName(key: string): string {
  const name = key.toUpperCase().replace(/[^A-Z0-9_]/g, "_");
  return /^[0-9]/.test(name) ? `_${name}` : name;
}

// ---------------------------------------------------------------------------------------------

/** Names that alter the sourcing shell itself or the programs it starts. */
const UNSAFE_ENV_NAMES = /^(PATH|IFS|ENV|BASH_ENV|CDPATH|PS4|SHELLOPTS|BASHOPTS|GLOBIGNORE|HOME|SHELL|LD_[A-Z_]+|DYLD_[A-Z_]+)$/;

function renderField(data: Record<string, unknown>, field: string, encoding: FileOptions["encoding"]): Uint8Array {
  if (!Object.hasOwn(data, field)) {
    const fields = Object.keys(data).sort().join(", ") || "none";
    throw new RenderError(`field "${field}" not found; the secret has the fields: ${fields}`, "missing_field");
  }

  const value = data[field];
  if (typeof value !== "string" && encoding === "base64") {
    throw new RenderError(`field "${field}" is not a string, but the line sets encoding=base64`);
  }
  if (typeof value !== "string") return encoder.encode(JSON.stringify(value));
  if (encoding !== "base64") return encoder.encode(value);

  const compact = value.replace(/\s+/g, "");
  // Standard and URL-safe alphabets, padded or not, as base64 tools write them.
  if (!/^[A-Za-z0-9+/\-_]*={0,2}$/.test(compact) || compact.length % 4 === 1) {
    throw new RenderError(`field "${field}" is not valid base64, but the line sets encoding=base64`);
  }
  return Uint8Array.from(Buffer.from(compact.replace(/-/g, "+").replace(/_/g, "/"), "base64"));
}

function renderEnv(data: Record<string, unknown>): string {
  const lines: string[] = [];
  const sources = new Map<string, string>();

  for (const key of Object.keys(data).sort()) {
    const name = envName(key);
    if (UNSAFE_ENV_NAMES.test(name)) {
      throw new RenderError(`field "${key}" would set ${name}, which changes how a shell that sources the file runs; select fields with path#field`);
    }
    const earlier = sources.get(name);
    if (earlier !== undefined) {
      throw new RenderError(`fields "${earlier}" and "${key}" both become ${name} in env format; select one field with path#field`);
    }
    sources.set(name, key);

    const value = data[key];
    const text = typeof value === "string" ? value : JSON.stringify(value);
    if (text.includes("\0")) throw new RenderError(`field "${key}" contains a NUL character, which a shell variable cannot hold`);
    lines.push(`${name}=${shellQuote(text)}`);
  }
  return lines.join("\n") + (lines.length ? "\n" : "");
}
