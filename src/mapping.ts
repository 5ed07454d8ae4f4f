/**
 * The line grammars of `SECRETS`, `WATCH_PATHS`, `DYNAMIC` and the `sync` mapping.
 *
 *   environments/production/billing/database -> /run/secrets/db.json
 *   environments/production/billing/stripe#secret_key -> /run/secrets/stripe.key mode=0400
 *   environments/production/billing/database -> /run/secrets/db.env format=env
 *   engine=postgres-prod role=readonly ttl=2h -> /run/secrets/db.json field=password
 *
 * Blank lines, lines starting with `#` and the rest of a line after a space and `#` are skipped. Whitespace around `->` and at the ends of a
 * line is free, so YAML block scalars with aligned columns and a trailing newline parse as written.
 * Options follow the target as `key=value` words: `mode` (octal), `format` (`json`, `env`, `raw`),
 * `field`, `encoding` (`utf8` or `base64`, for a field that contains base64 of binary content).
 */
import { AgentError } from "./errors.ts";
import { parseDuration } from "./duration.ts";
import { secretPathProblem } from "./paths.ts";
import { secretKeyProblem } from "./kube-secret-rules.ts";

export type FileFormat = "json" | "env" | "raw";
export type FieldEncoding = "utf8" | "base64";

/** Rendering options of one line: format, field, encoding and file mode. */
export interface FileOptions {
  format: FileFormat;
  /** Write the raw value of this one field of `data`. */
  field?: string;
  encoding: FieldEncoding;
  /** File mode; undefined means the command's default mode. */
  mode?: number;
}

/** One `path[#field] -> target [options]` line. */
export interface SecretMapping extends FileOptions {
  /** 1-based line number in the variable's value, for error messages. */
  line: number;
  path: string;
  /** The target as written: a file path for files, a key name for `sync`. */
  target: string;
}

/** One `engine=... role=... [ttl=...] -> target [options]` line. */
export interface DynamicMapping extends FileOptions {
  line: number;
  engine: string;
  role: string;
  /** Requested lease duration in milliseconds; the role's default applies when undefined. */
  ttlMs?: number;
  target: string;
}

export interface ParseOptions {
  /** Variable or flag name for messages. @default "SECRETS" */
  variable?: string;
  /** Kind of target: a file path (no spaces) or a Kubernetes Secret key. @default "file" */
  targetKind?: "file" | "key";
}

/**
 * Parses `SECRETS`/`WATCH_PATHS` text. Every bad line is reported, each with its number.
 *
 * @throws AgentError `config` listing every invalid line and every target named twice.
 */
export function parseSecretMappings(text: string, options: ParseOptions = {}): SecretMapping[] {
  const variable = options.variable ?? "SECRETS";
  const problems: string[] = [];
  const mappings: SecretMapping[] = [];

  for (const { number, content } of meaningfulLines(text)) {
    try {
      mappings.push(parseSecretLine(content, number, options.targetKind ?? "file"));
    } catch (error) {
      problems.push(`${variable} line ${number}: ${(error as Error).message}`);
    }
  }

  // Several `path -> *` lines may each copy every field; clashing keys are found once data is read.
  const named = mappings.filter((mapping) => !(options.targetKind === "key" && mapping.target === ALL_FIELDS));
  problems.push(...duplicateTargets(named, variable));
  throwIfProblems(problems, variable);
  return mappings;
}

/** The `sync` target `*`: every field of the secret's data becomes a key of the same name. */
export const ALL_FIELDS = "*";

/**
 * Parses `DYNAMIC` text.
 *
 * @throws AgentError `config` listing every invalid line and every target named twice.
 */
export function parseDynamicMappings(text: string, options: ParseOptions = {}): DynamicMapping[] {
  const variable = options.variable ?? "DYNAMIC";
  const problems: string[] = [];
  const mappings: DynamicMapping[] = [];

  for (const { number, content } of meaningfulLines(text)) {
    try {
      mappings.push(parseDynamicLine(content, number));
    } catch (error) {
      problems.push(`${variable} line ${number}: ${(error as Error).message}`);
    }
  }

  problems.push(...duplicateTargets(mappings, variable));
  throwIfProblems(problems, variable);
  return mappings;
}

/** Reports targets that two lines, possibly of different variables, would both write. */
export function duplicateTargets(
  mappings: ReadonlyArray<{ target: string; line: number }>,
  variable: string,
): string[] {
  const firstLine = new Map<string, number>();
  const problems: string[] = [];

  for (const mapping of mappings) {
    const earlier = firstLine.get(mapping.target);
    if (earlier === undefined) firstLine.set(mapping.target, mapping.line);
    else problems.push(`${variable} line ${mapping.line}: "${mapping.target}" is already written by line ${earlier}; give each line its own target`);
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------

const FIELD_PATTERN = /^[A-Za-z0-9_.\-]+$/;
const NAME_PATTERN = /^[a-z0-9][a-z0-9\-_]*$/;

function* meaningfulLines(text: string): Generator<{ number: number; content: string }> {
  const lines = text.split(/\r?\n/);
  for (let index = 0; index < lines.length; index++) {
    // A `#` after whitespace starts a comment; `path#field` has no space before its `#`.
    const content = lines[index]!.replace(/\s#.*$/, "").trim();
    if (content === "" || content.startsWith("#")) continue;
    yield { number: index + 1, content };
  }
}

function splitArrow(content: string): [string, string] {
  const parts = content.split("->");
  if (parts.length === 1) throw new Error(`expected "source -> target" but found no "->" in "${content}"`);
  if (parts.length > 2) throw new Error(`expected one "->" but found ${parts.length - 1}`);

  const left = parts[0]!.trim();
  const right = parts[1]!.trim();
  if (left === "") throw new Error("nothing before \"->\"; write the secret path there");
  if (right === "") throw new Error("nothing after \"->\"; write the target file there");
  return [left, right];
}

function parseSecretLine(content: string, line: number, targetKind: "file" | "key"): SecretMapping {
  const [left, right] = splitArrow(content);

  if (/\s/.test(left)) throw new Error(`the source "${left}" contains a space; write one secret path per line`);

  const hash = left.indexOf("#");
  const path = hash === -1 ? left : left.slice(0, hash);
  const inlineField = hash === -1 ? undefined : left.slice(hash + 1);

  const pathProblem = secretPathProblem(path);
  if (pathProblem) throw new Error(`invalid secret path "${path}": ${pathProblem}`);
  if (inlineField !== undefined && !FIELD_PATTERN.test(inlineField)) {
    throw new Error(`invalid field "${inlineField}" after "#": use letters, digits, "_", "-" or "."`);
  }

  const [target, ...words] = right.split(/\s+/);
  if (targetKind === "key" && target === ALL_FIELDS) {
    if (inlineField !== undefined || words.length > 0) throw new Error(`"-> *" copies every field as it is; remove the field and the options, or name one key`);
    return { line, path, target: ALL_FIELDS, format: "json", encoding: "utf8" };
  }
  checkTarget(target!, targetKind);
  const options = parseOptions(words, inlineField);
  return { line, path, target: target!, ...options };
}

function parseDynamicLine(content: string, line: number): DynamicMapping {
  const [left, right] = splitArrow(content);
  const keys: Record<string, string> = {};

  for (const word of left.split(/\s+/)) {
    const [key, value] = splitOption(word);
    if (key !== "engine" && key !== "role" && key !== "ttl") {
      throw new Error(`unknown key "${key}" before "->"; use engine=, role= and optionally ttl=`);
    }
    if (key in keys) throw new Error(`"${key}" is given twice`);
    keys[key] = value;
  }

  for (const required of ["engine", "role"] as const) {
    const value = keys[required];
    if (value === undefined) throw new Error(`missing ${required}=; a line reads "engine=NAME role=NAME [ttl=2h] -> FILE"`);
    if (!NAME_PATTERN.test(value)) throw new Error(`invalid ${required} "${value}": use a-z, 0-9, "-" and "_"`);
  }

  const ttlMs = keys.ttl === undefined ? undefined : parseDuration(keys.ttl, `ttl on line ${line}`);
  if (ttlMs !== undefined && ttlMs < 1000) throw new Error(`ttl "${keys.ttl}" is shorter than one second`);

  const [target, ...words] = right.split(/\s+/);
  checkTarget(target!, "file");
  const options = parseOptions(words, undefined);
  return { line, engine: keys.engine!, role: keys.role!, ttlMs, target: target!, ...options };
}

function checkTarget(target: string, kind: "file" | "key"): void {
  if (kind === "key") {
    const problem = secretKeyProblem(target);
    if (problem) throw new Error(`invalid Secret key "${target}": ${problem}`);
    return;
  }

  if (target.includes("=")) throw new Error(`"${target}" looks like an option, but the target file must come first after "->"`);
  if (target.endsWith("/")) throw new Error(`the target "${target}" ends with "/"; name a file, not a directory`);
  if (target.includes("\0")) throw new Error("the target contains a NUL character");
  if (target.split("/").includes("..")) throw new Error(`the target "${target}" contains ".."; name a file inside the output directory`);
}

function splitOption(word: string): [string, string] {
  const equals = word.indexOf("=");
  if (equals <= 0 || equals === word.length - 1) throw new Error(`expected key=value but found "${word}"`);
  return [word.slice(0, equals), word.slice(equals + 1)];
}

function parseOptions(words: string[], inlineField: string | undefined): FileOptions {
  const seen = new Set<string>();
  let format: FileFormat | undefined;
  let field = inlineField;
  let encoding: FieldEncoding = "utf8";
  let mode: number | undefined;

  for (const word of words) {
    const [key, value] = splitOption(word);
    if (seen.has(key)) throw new Error(`option "${key}" is given twice`);
    seen.add(key);

    switch (key) {
      case "mode":
        if (!/^0?[0-7]{3}$/.test(value)) throw new Error(`invalid mode "${value}": write an octal file mode such as 0400 or 0640`);
        mode = Number.parseInt(value, 8);
        break;
      case "format":
        if (value !== "json" && value !== "env" && value !== "raw") throw new Error(`unknown format "${value}": use json, env or raw`);
        format = value;
        break;
      case "field":
        if (inlineField !== undefined) throw new Error(`the field is given twice, as "#${inlineField}" and as field=`);
        if (!FIELD_PATTERN.test(value)) throw new Error(`invalid field "${value}": use letters, digits, "_", "-" or "."`);
        field = value;
        break;
      case "encoding":
        if (value !== "utf8" && value !== "base64") throw new Error(`unknown encoding "${value}": use utf8 or base64`);
        encoding = value;
        break;
      default:
        throw new Error(`unknown option "${key}": use mode=, format=, field= or encoding=`);
    }
  }

  if (field !== undefined && format !== undefined && format !== "raw") {
    throw new Error(`format=${format} cannot be combined with a field; a field is written raw`);
  }
  if (field === undefined && format === "raw") throw new Error("format=raw needs a field: write path#field");
  if (field === undefined && encoding === "base64") throw new Error("encoding=base64 applies to one field: write path#field");

  return { format: field !== undefined ? "raw" : (format ?? "json"), field, encoding, mode };
}

function throwIfProblems(problems: string[], variable: string): void {
  if (problems.length === 0) return;
  const noun = problems.length === 1 ? "problem" : "problems";
  throw new AgentError("config", `Invalid ${variable}: ${problems.length} ${noun}\n  ${problems.join("\n  ")}`);
}
