/**
 * Parses the `attributes` of a Mount request: the SecretProviderClass parameters (`base_url`,
 * `audience`, `role`, `objects`), the pod context the kubelet adds, and the pod's
 * service-account tokens. Every problem is reported at once, each naming the object and the fix.
 * Messages name paths, files and audiences, never a token.
 *
 * `objects` is a YAML list:
 *
 *   - path: environments/production/billing/stripe   # required
 *     file: stripe.json       # file name in the volume; default: the path's last segment
 *     field: secret_key       # write only this field's raw value
 *     mode: 0400              # octal; default: the mount's permission
 *     version: 3              # pin a version; default: the current one
 *     format: env             # json (default) or env, for the whole data object
 *     encoding: base64        # for a field that holds base64 of binary content
 */
import { isMap, isScalar, isSeq, parseDocument, type Node } from "yaml";
import { AgentError } from "../errors.ts";
import { secretPathProblem } from "../paths.ts";
import type { FieldEncoding, FileFormat } from "../mapping.ts";
import { urlProblem, type UrlRule } from "./allowed-urls.ts";

/** Keys of the pod context that the kubelet adds to the volume attributes. */
export const POD_NAME = "csi.storage.k8s.io/pod.name";
export const POD_NAMESPACE = "csi.storage.k8s.io/pod.namespace";
export const POD_UID = "csi.storage.k8s.io/pod.uid";
export const SERVICE_ACCOUNT_NAME = "csi.storage.k8s.io/serviceAccount.name";
export const SERVICE_ACCOUNT_TOKENS = "csi.storage.k8s.io/serviceAccount.tokens";

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

/** The pod whose volume is mounted, as the kubelet describes it. */
export interface PodInfo {
  name: string;
  namespace: string;
  uid: string;
  serviceAccountName: string;
}

/** The pod's projected service-account token for the audience, as the kubelet issued it. */
export interface PodToken {
  /** The JWT. Never log it. */
  token: string;
  /** `expirationTimestamp` in epoch milliseconds, when the kubelet sent one. */
  expiresAt?: number;
}

/** Everything one Mount needs, checked. */
export interface MountSpec {
  /** SecretProviderClass name from the volume attributes, for messages; "" when absent. */
  secretProviderClass: string;
  baseUrl: string;
  audience: string;
  role?: string;
  objects: readonly MountObject[];
  pod: PodInfo;
  /** The pod's projected token for `audience`. Never log it. */
  podToken: PodToken;
  /** Mode of files whose object sets none, from the request's `permission`. */
  defaultMode: number;
}

/** Default audience of the projected token, as the guide's CSIDriver `tokenRequests` sets it. */
export const DEFAULT_AUDIENCE = "scaivault";

const NO_TOKEN: PodToken = { token: "" };
const OBJECT_KEYS = ["path", "file", "field", "mode", "version", "format", "encoding"];

/**
 * Parses and checks the attributes and permission of a Mount request.
 *
 * @throws AgentError `config` whose message lists every problem with its object and fix.
 */
export function parseMountAttributes(attributesJson: string, permission: string, allowedUrls: UrlRule[], secretsJson = ""): MountSpec {
  const attributes = parseAttributeMap(attributesJson);
  // NOTE: with `serviceAccountTokenInSecrets: true` on the CSIDriver (Kubernetes 1.35 and later),
  // the kubelet sends the tokens as a secret rather than a volume attribute, so they are looked
  // for in the request's secrets too. That this driver path forwards them there is untested.
  if (attributes[SERVICE_ACCOUNT_TOKENS] === undefined && secretsJson.trim() !== "") {
    const secrets = safeAttributeMap(secretsJson);
    if (secrets?.[SERVICE_ACCOUNT_TOKENS] !== undefined) attributes[SERVICE_ACCOUNT_TOKENS] = secrets[SERVICE_ACCOUNT_TOKENS];
  }
  const spc = attributes.secretProviderClass ?? "";
  const problems: string[] = [];

  const baseUrl = (attributes.base_url ?? "").trim();
  if (baseUrl === "") problems.push('parameter base_url is missing: set it to the ScaiVault URL, such as https://scaivault.scailabs.ai');
  else {
    const problem = urlProblem(baseUrl, allowedUrls);
    if (problem) problems.push(`parameter base_url "${baseUrl}" is not allowed: ${problem}`);
  }

  const audience = (attributes.audience ?? "").trim() || DEFAULT_AUDIENCE;
  const role = (attributes.role ?? "").trim() || undefined;
  const objects = parseObjects(attributes.objects, problems);
  const defaultMode = parsePermission(permission, problems);
  const pod = podInfo(attributes);
  const podToken = problems.length ? NO_TOKEN : selectToken(attributes, audience, problems);

  if (problems.length) throw new AgentError("config", describeProblems(spc, pod, problems));
  return { secretProviderClass: spc, baseUrl, audience, role, objects, pod, podToken, defaultMode };
}

/** Returns the opening of a SecretProviderClass error message: `Invalid SecretProviderClass "x" in namespace "y"`. */
export function describeProblems(spc: string, pod: Pick<PodInfo, "namespace">, problems: string[]): string {
  const name = spc ? ` "${spc}"` : "";
  const namespace = pod.namespace ? ` in namespace "${pod.namespace}"` : "";
  return `Invalid SecretProviderClass${name}${namespace}: ${problems.join("; ")}`;
}

// ---------------------------------------------------------------------------------------------

function parseAttributeMap(json: string): Record<string, string | undefined> {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    throw new AgentError("config", "Invalid Mount request: attributes is not JSON; the Secrets Store CSI driver sends a JSON object");
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) {
    throw new AgentError("config", "Invalid Mount request: attributes is not a JSON object");
  }

  const map: Record<string, string | undefined> = {};
  for (const [key, entry] of Object.entries(value)) map[key] = typeof entry === "string" ? entry : entry == null ? undefined : String(entry);
  return map;
}

function safeAttributeMap(json: string): Record<string, string | undefined> | undefined {
  try {
    return parseAttributeMap(json);
  } catch {
    return undefined;
  }
}

/** Parsed `objects` parameters by their text, because rotation polls send the same text again and again. */
const parsedObjects = new Map<string, { objects: MountObject[]; problems: string[] }>();
const PARSED_OBJECTS_KEPT = 256;

function parseObjects(text: string | undefined, problems: string[]): MountObject[] {
  if (text === undefined || text.trim() === "") {
    problems.push("parameter objects is missing: list the secrets as YAML, such as\n  - path: environments/production/billing/database\n    file: db.json");
    return [];
  }

  let parsed = parsedObjects.get(text);
  if (!parsed) {
    const found: string[] = [];
    parsed = { objects: parseObjectList(text, found), problems: found };
    // Map iteration follows insertion order, so the first key is the oldest.
    if (parsedObjects.size >= PARSED_OBJECTS_KEPT) parsedObjects.delete(parsedObjects.keys().next().value!);
    parsedObjects.set(text, parsed);
  }

  problems.push(...parsed.problems);
  return parsed.objects;
}

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
    values.set(key, { text: String(pair.value.value), source: pair.value.source ?? String(pair.value.value) });
  }

  const path = values.get("path")?.text.trim();
  const named = values.get("file")?.text.trim();
  const label = path ? `objects[${index}] (path "${path}")` : named ? `objects[${index}] (file "${named}")` : `objects[${index}]`;
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
  if (file.includes("\0")) return "contains a NUL character";

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

function parsePermission(permission: string, problems: string[]): number {
  const text = permission.trim();
  if (text === "") return 0o644;

  // The driver sends the volume's file permission as a decimal JSON number: "420" for 0644.
  if (!/^\d{1,4}$/.test(text) || Number(text) > 0o777) {
    problems.push(`permission "${permission}" is not a decimal file mode such as 420 (0644)`);
    return 0o644;
  }
  return Number(text);
}

function podInfo(attributes: Record<string, string | undefined>): PodInfo {
  return {
    name: attributes[POD_NAME] ?? "",
    namespace: attributes[POD_NAMESPACE] ?? "",
    uid: attributes[POD_UID] ?? "",
    serviceAccountName: attributes[SERVICE_ACCOUNT_NAME] ?? "",
  };
}

function selectToken(attributes: Record<string, string | undefined>, audience: string, problems: string[]): PodToken {
  const fix = `add tokenRequests with audience "${audience}" to the CSIDriver secrets-store.csi.k8s.io (Helm: --set tokenRequests[0].audience=${audience})`;
  const raw = attributes[SERVICE_ACCOUNT_TOKENS];
  if (raw === undefined || raw.trim() === "") {
    problems.push(`the Mount request has no service-account tokens: ${fix}`);
    return NO_TOKEN;
  }

  let tokens: unknown;
  try {
    tokens = JSON.parse(raw);
  } catch {
    problems.push(`${SERVICE_ACCOUNT_TOKENS} is not JSON; it should map each audience to {"token", "expirationTimestamp"}`);
    return NO_TOKEN;
  }

  const entry = tokens && typeof tokens === "object" ? (tokens as Record<string, unknown>)[audience] : undefined;
  const token = entry && typeof entry === "object" ? (entry as { token?: unknown }).token : undefined;
  if (typeof token !== "string" || token === "") {
    const present = tokens && typeof tokens === "object" ? Object.keys(tokens).map((key) => `"${key}"`).join(", ") : "";
    problems.push(`no service-account token for audience "${audience}"${present ? ` (the request has tokens for ${present})` : ""}: ${fix}, or set the parameter audience to the one the CSIDriver requests`);
    return NO_TOKEN;
  }

  const expires = (entry as { expirationTimestamp?: unknown }).expirationTimestamp;
  const expiresAt = typeof expires === "string" ? Date.parse(expires) : Number.NaN;
  return { token, expiresAt: Number.isNaN(expiresAt) ? undefined : expiresAt };
}
