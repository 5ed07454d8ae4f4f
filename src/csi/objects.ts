/**
 * The `objects` parameter of a SecretProviderClass: a YAML list of the secrets to mount.
 *
 *   - path: environments/production/billing/stripe   # required
 *     file: stripe.json       # file name in the volume; default: the path's last segment
 *     field: secret_key       # write only this field's raw value
 *     mode: 0400              # octal; default: the mount's permission
 *     version: 3              # pin a version; default: the current one
 *     format: env             # json (default) or env, for the whole data object
 *     encoding: base64        # for a field that contains base64 of binary content
 *
 * Every problem is reported, each naming the object's index, path or file, and the fix.
 */
import { isMap, isScalar, isSeq, parseDocument, type Node } from "yaml";
import { secretPathProblem } from "../paths.ts";
import type { FieldEncoding, FileFormat } from "../mapping.ts";

/** One entry of `objects`. Mounts of the same `objects` text share these, so they are read-only. */
export interface MountObject {
  /** 0-based position in `objects`, for messages. */
  readonly index: number;
  readonly path: string;
  /** Relative file path in the volume; also the object's id in `object_version`. */
  readonly file: string;
  readonly field?: string;
  readonly mode?: number;
  readonly version?: number;
  readonly format: FileFormat;
  readonly encoding: FieldEncoding;
}

const OBJECT_KEYS = ["path", "file", "field", "mode", "version", "format", "encoding"];

/** Keys whose values are text: a YAML number or boolean there is a mistake (`file: 0777`). */
const TEXT_KEYS = ["path", "file", "field", "format", "encoding"];

/** Largest `objects` text in UTF-16 code units, about 256 KiB; far above any real list. */
export const MAX_OBJECTS_TEXT = 256 * 1024;
/** Largest `objects` text that is cached. */
const MAX_CACHED_TEXT = 16 * 1024;
/** Total text of the cached entries, which bounds the cache with its objects to a few MiB (an estimate). */
const MAX_CACHED_TOTAL_TEXT = 1024 * 1024;

/**
 * Parsed `objects` parameters by their text, because rotation polls send the same text again and
 * again. Only accepted texts up to `MAX_CACHED_TEXT` are kept, up to `MAX_CACHED_TOTAL_TEXT` in all.
 */
const parsedObjects = new Map<string, MountObject[]>();
let cachedText = 0;

/**
 * Parses the `objects` parameter, adding each problem to `problems`, and returns the objects that
 * have none. Results are cached by text.
 */
export function parseObjects(text: string | undefined, problems: string[]): MountObject[] {
  if (text === undefined || text.trim() === "") {
    problems.push("parameter objects is missing: list the secrets as YAML, such as\n  - path: environments/production/billing/database\n    file: db.json");
    return [];
  }

  if (text.length > MAX_OBJECTS_TEXT) {
    problems.push(`parameter objects has ${text.length} characters, more than the ${MAX_OBJECTS_TEXT} allowed; split the objects over several SecretProviderClasses`);
    return [];
  }

  const cached = parsedObjects.get(text);
  if (cached) return cached;

  const found: string[] = [];
  const objects = parseObjectList(text, found);
  if (found.length) {
    problems.push(...found);
    return objects;
  }
  if (text.length <= MAX_CACHED_TEXT) {
    // Map iteration follows insertion order, so the first keys are the oldest.
    for (const oldest of parsedObjects.keys()) {
      if (cachedText + text.length <= MAX_CACHED_TOTAL_TEXT) break;
      parsedObjects.delete(oldest);
      cachedText -= oldest.length;
    }
    parsedObjects.set(text, objects);
    cachedText += text.length;
  }
  return objects;
}

/** Returns the number and total text length of cached `objects` texts, for tests. */
export function parsedObjectsCacheStats(): { entries: number; textLength: number } {
  return { entries: parsedObjects.size, textLength: cachedText };
}

// ---------------------------------------------------------------------------------------------

function parseObjectList(text: string, problems: string[]): MountObject[] {
  const document = parseDocument(text, { uniqueKeys: true });
  if (document.errors.length) {
    // The parser's first line names the problem and its position; the lines after it quote the source.
    const reason = document.errors[0]!.message.split("\n")[0]!.replace(/:$/, "");
    problems.push(`parameter objects is not valid YAML: ${reason}; write a YAML list of entries with path and file`);
    return [];
  }
  if (!isSeq(document.contents)) {
    problems.push("parameter objects must be a YAML list (entries starting with -), each with path and file");
    return [];
  }

  const objects: MountObject[] = [];
  const files = new Map<string, number>();
  document.contents.items.forEach((item, index) => {
    const object = parseObject(item as Node, index, problems);
    if (!object) return;

    const earlier = files.get(object.file);
    if (earlier !== undefined) {
      problems.push(`objects[${index}] (path "${object.path}"): file "${object.file}" is already used by objects[${earlier}]; give each object its own file`);
      return;
    }
    files.set(object.file, index);
    objects.push(object);
  });

  // A file cannot also be a directory of another: `certs` and `certs/tls.crt`.
  for (const object of objects) {
    const segments = object.file.split("/");
    for (let depth = 1; depth < segments.length; depth++) {
      const parent = files.get(segments.slice(0, depth).join("/"));
      if (parent === undefined) continue;
      problems.push(`objects[${object.index}] (path "${object.path}"): file "${object.file}" is inside "${segments.slice(0, depth).join("/")}", which objects[${parent}] writes as a file; rename one of them`);
      break;
    }
  }

  if (objects.length === 0 && document.contents.items.length === 0) problems.push("parameter objects is an empty list: add at least one entry with path and file");
  return objects;
}

function parseObject(node: Node, index: number, problems: string[]): MountObject | undefined {
  if (!isMap(node)) {
    problems.push(`objects[${index}] is not a mapping: write it as "- path: ...\\n  file: ..."`);
    return undefined;
  }

  const values = new Map<string, { text: string; source: string }>();
  for (const pair of node.items) {
    const key = isScalar(pair.key) ? String(pair.key.value) : String(pair.key);
    if (!OBJECT_KEYS.includes(key)) {
      problems.push(`objects[${index}]: unknown key "${key}"; the keys are ${OBJECT_KEYS.join(", ")}`);
      continue;
    }
    if (!isScalar(pair.value) || pair.value.value === null) {
      problems.push(`objects[${index}]: ${key} must be a single value`);
      continue;
    }
    if (TEXT_KEYS.includes(key) && typeof pair.value.value !== "string") {
      problems.push(`objects[${index}]: ${key} "${pair.value.source ?? String(pair.value.value)}" is a YAML ${typeof pair.value.value}; quote it to use it as text`);
      continue;
    }
    values.set(key, { text: String(pair.value.value), source: pair.value.source ?? String(pair.value.value) });
  }

  const path = values.get("path")?.text.trim();
  const named = values.get("file")?.text.trim();
  let label = `objects[${index}]`;
  if (path) label = `objects[${index}] (path "${path}")`;
  else if (named) label = `objects[${index}] (file "${named}")`;
  const before = problems.length;

  if (!path) problems.push(`${label}: path is missing; set it to the secret's path, such as environments/production/billing/database`);
  else {
    const problem = secretPathProblem(path);
    if (problem) problems.push(`${label}: invalid path: ${problem}`);
  }

  const file = values.get("file")?.text.trim() ?? path?.split("/").pop() ?? "";
  const fileProblem = path ? fileNameProblem(file) : undefined;
  if (fileProblem) problems.push(`${label}: file "${file}" ${fileProblem}`);

  const field = values.get("field")?.text;
  if (field !== undefined && field.trim() === "") problems.push(`${label}: field is empty; name a key of the secret's data or remove field`);

  const mode = parseObjectMode(values.get("mode"), label, problems);
  const version = parseObjectVersion(values.get("version"), label, problems);
  const format = parseChoice(values.get("format")?.text, ["json", "env"], "json", `${label}: format`, problems) as FileFormat;
  const encoding = parseChoice(values.get("encoding")?.text, ["utf8", "base64"], "utf8", `${label}: encoding`, problems) as FieldEncoding;
  if (field !== undefined && format === "env") problems.push(`${label}: format env writes the whole data object; remove field or format`);
  if (field === undefined && encoding === "base64") problems.push(`${label}: encoding base64 applies to one field; add field`);

  if (problems.length > before || !path) return undefined;
  return { index, path, file, field, mode, version, format, encoding };
}

/** Returns why `file` cannot be a file in the volume, or undefined when it can. */
function fileNameProblem(file: string): string | undefined {
  if (file === "") return "is empty; set file to a name such as db.json";
  if (file.startsWith("/")) return "is an absolute path; write a relative name such as db.json";
  if (file.includes("\\")) return "contains \\; separate directories with /";
  // Control characters, NUL included, break log lines and the tools that list the volume.
  if (/[\u0000-\u001f\u007f]/.test(file)) return "contains a control character; use printable characters only";

  const segments = file.split("/");
  if (segments.some((segment) => segment === ".." || segment.startsWith(".."))) return 'contains ".."; write a name inside the volume, such as db.json';
  if (segments.some((segment) => segment === "" || segment === ".")) return 'has an empty or "." segment; write a name such as certs/tls.crt';
  if (segments.some((segment) => segment.length > 255)) return "has a name longer than 255 characters";
  return undefined;
}

function parseObjectMode(value: { source: string } | undefined, label: string, problems: string[]): number | undefined {
  if (value === undefined) return undefined;

  // The YAML source decides: `0400` is octal here, as in YAML 1.1 and kubectl, while YAML 1.2
  // would read it as the decimal 400.
  const text = value.source.trim().replace(/^["']|["']$/g, "");
  const match = /^0o?([0-7]{1,4})$/i.exec(text);
  if (!match) {
    problems.push(`${label}: mode "${text}" must be octal with a leading zero, such as 0400 or 0644`);
    return undefined;
  }

  const mode = Number.parseInt(match[1]!, 8);
  if (mode > 0o777) {
    problems.push(`${label}: mode "${text}" is above 0777; use permission bits only`);
    return undefined;
  }
  // Without the owner's read bit only root could read the file, which is nearly always a typo
  // (0 or 044) rather than intent.
  if ((mode & 0o400) === 0) {
    problems.push(`${label}: mode "${text}" does not let the file's owner read it; use 0400 or more, such as 0440 or 0644`);
    return undefined;
  }
  return mode;
}

function parseObjectVersion(value: { text: string } | undefined, label: string, problems: string[]): number | undefined {
  if (value === undefined) return undefined;
  if (!/^[1-9]\d{0,9}$/.test(value.text.trim())) {
    problems.push(`${label}: version "${value.text}" must be a whole number of 1 or more; remove it to read the current version`);
    return undefined;
  }
  return Number(value.text.trim());
}

function parseChoice(value: string | undefined, allowed: string[], fallback: string, what: string, problems: string[]): string {
  if (value === undefined) return fallback;
  if (allowed.includes(value.trim())) return value.trim();
  problems.push(`${what} "${value}" is not one of ${allowed.join(", ")}`);
  return fallback;
}
