/**
 * Rules for the ScaiVault base URLs that a SecretProviderClass may name. The provider runs on
 * every node with the pods' tokens in hand, and the driver merges a pod's own volume attributes over the
 * SecretProviderClass parameters, so any pod author can choose `base_url`. Without a limit, a pod
 * could make the node's provider send its service-account token to any host, or probe the
 * node's network. `SCAIVAULT_ALLOWED_URLS` is that limit.
 *
 * Rules, comma-separated:
 * - `https://*` allows every https URL (the default); `http://*` every http URL.
 * - `https://*.example.com` allows every host under example.com, on the scheme's default port.
 * - `https://vault.example.com:8443` allows that origin with any path.
 * - `https://vault.example.com/scaivault` allows that origin with paths under `/scaivault`.
 */
import { AgentError } from "../errors.ts";

/** One parsed rule. */
export interface UrlRule {
  /** The rule as written, for messages. */
  text: string;
  protocol: "http:" | "https:";
  /** Lower-case host with port, `*` for any, or `*.domain` for any subdomain. */
  host: string;
  /** Path prefix without a trailing slash; "" allows every path. */
  pathPrefix: string;
}

/**
 * Parses `SCAIVAULT_ALLOWED_URLS`.
 *
 * @throws AgentError `config` listing every invalid rule.
 */
export function parseAllowedUrls(text: string, name = "SCAIVAULT_ALLOWED_URLS"): UrlRule[] {
  const entries = text.split(",").map((entry) => entry.trim()).filter(Boolean);
  const problems: string[] = [];
  const rules: UrlRule[] = [];

  for (const entry of entries) {
    try {
      rules.push(parseRule(entry));
    } catch (error) {
      problems.push(`Invalid ${name} entry "${entry}": ${(error as Error).message}`);
    }
  }

  if (rules.length === 0 && problems.length === 0) problems.push(`${name} is empty: name at least one base URL, or https://* for any https URL`);
  if (problems.length) throw new AgentError("config", problems.join("\n"));
  return rules;
}

/**
 * Returns why `baseUrl` may not be used, or undefined when a rule allows it. URLs with
 * credentials, a query or a fragment are never allowed.
 */
export function urlProblem(baseUrl: string, rules: UrlRule[]): string | undefined {
  let url: URL;
  try {
    url = new URL(baseUrl);
  } catch {
    return "it is not a URL; write one such as https://scaivault.scailabs.ai";
  }

  if (url.protocol !== "https:" && url.protocol !== "http:") return "use an https:// URL";
  if (url.username || url.password) return "it must not contain a user name or password";
  // URL drops an empty query or fragment (`https://host/?`), so the text is checked too.
  if (url.search || url.hash || /[?#]/.test(baseUrl)) return "it must not contain a query or a fragment";

  const path = url.pathname.replace(/\/+$/, "");
  const allowed = rules.some((rule) => rule.protocol === url.protocol && hostMatches(rule.host, url.host) && pathMatches(rule.pathPrefix, path));
  if (allowed) return undefined;

  const list = rules.map((rule) => rule.text).join(", ");
  return `this provider only allows ${list} (SCAIVAULT_ALLOWED_URLS); ask the cluster operator to add the URL`;
}

// ---------------------------------------------------------------------------------------------

function parseRule(entry: string): UrlRule {
  const match = /^(https?):\/\/(\*|\*\.[^/\s*]+|[^/\s*]+)(\/[^\s*]*)?$/i.exec(entry);
  if (!match) throw new Error("write a base URL such as https://scaivault.example.com, https://*.example.com or https://*");

  const protocol = `${match[1]!.toLowerCase()}:` as UrlRule["protocol"];
  const rawHost = match[2]!.toLowerCase();
  const pathPrefix = (match[3] ?? "").replace(/\/+$/, "");

  if (rawHost === "*") return { text: entry, protocol, host: "*", pathPrefix };

  // Normalise the host the way URL does (default ports dropped, IPv6 brackets kept).
  const wildcard = rawHost.startsWith("*.");
  const probe = new URL(`${protocol}//${wildcard ? `x${rawHost.slice(1)}` : rawHost}`);
  const host = wildcard ? `*${probe.host.slice(1)}` : probe.host;
  return { text: entry, protocol, host, pathPrefix };
}

function hostMatches(ruleHost: string, host: string): boolean {
  if (ruleHost === "*") return true;
  if (ruleHost.startsWith("*.")) return host.endsWith(ruleHost.slice(1)) && !host.includes(":");
  return host === ruleHost;
}

function pathMatches(prefix: string, path: string): boolean {
  return prefix === "" || path === prefix || path.startsWith(`${prefix}/`);
}
