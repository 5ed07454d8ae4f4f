/**
 * Parses the `attributes` of a Mount request: the SecretProviderClass parameters (`base_url`,
 * `audience`, `role`, `objects`), the pod context the kubelet adds, and the pod's
 * service-account tokens. Every problem is reported at once, each naming the object and the fix.
 * Messages name paths, files and audiences, never a token. The `objects` grammar is in
 * `objects.ts`.
 */
import { AgentError } from "../errors.ts";
import { urlProblem, type UrlRule } from "./allowed-urls.ts";
import { parseObjects, type MountObject } from "./objects.ts";
import { joinProblems } from "./messages.ts";

export type { MountObject } from "./objects.ts";

/** Keys of the pod context that the kubelet adds to the volume attributes. */
export const POD_NAME = "csi.storage.k8s.io/pod.name";
export const POD_NAMESPACE = "csi.storage.k8s.io/pod.namespace";
export const POD_UID = "csi.storage.k8s.io/pod.uid";
export const SERVICE_ACCOUNT_NAME = "csi.storage.k8s.io/serviceAccount.name";
export const SERVICE_ACCOUNT_TOKENS = "csi.storage.k8s.io/serviceAccount.tokens";

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

/**
 * Parses and checks the attributes and permission of a Mount request.
 *
 * @throws AgentError `config` whose message lists every problem with its object and fix.
 */
export function parseMountAttributes(attributesJson: string, permission: string, allowedUrls: UrlRule[], secretsJson = ""): MountSpec {
  const attributes = parseAttributeMap(attributesJson);
  const spc = attributes.secretProviderClass ?? "";
  const problems: string[] = [];

  // The kubelet sends the tokens as a volume attribute, which the driver forwards in attributes,
  // or, with `serviceAccountTokenInSecrets: true` on the CSIDriver (Kubernetes 1.35 and later), as
  // a secret. Attributes also carry SecretProviderClass parameters, and secrets also carry the
  // nodePublishSecretRef Secret, so either could hold a value the kubelet did not send. Both
  // present and different is refused rather than guessed.
  // NOTE: that the driver forwards the kubelet's token secret in `secrets` is untested.
  const secrets = secretsJson.trim() === "" ? undefined : safeAttributeMap(secretsJson);
  const fromSecrets = secrets?.[SERVICE_ACCOUNT_TOKENS];
  if (fromSecrets !== undefined) {
    const fromAttributes = attributes[SERVICE_ACCOUNT_TOKENS];
    if (fromAttributes !== undefined && fromAttributes !== fromSecrets) {
      problems.push(`${SERVICE_ACCOUNT_TOKENS} is in both the attributes and the secrets of the request with different values; remove the parameter or the key of the nodePublishSecretRef Secret that sets it`);
    }
    attributes[SERVICE_ACCOUNT_TOKENS] = fromSecrets;
  }

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
  return `Invalid SecretProviderClass${name}${namespace}: ${joinProblems(problems)}`;
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
  for (const [key, entry] of Object.entries(value)) {
    if (typeof entry === "string") map[key] = entry;
    else if (entry !== null && entry !== undefined) map[key] = String(entry);
  }
  return map;
}

function safeAttributeMap(json: string): Record<string, string | undefined> | undefined {
  try {
    return parseAttributeMap(json);
  } catch {
    return undefined;
  }
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
