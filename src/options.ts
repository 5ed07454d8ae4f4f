/**
 * The table of settings: each has an environment variable, usually a flag, a default and help
 * text. Commands pick the settings they use; `readSettings` merges flags over the environment.
 * Settings that carry a secret have no flag, because flags show in process listings.
 */
import type { ArgsDef } from "citty";

export interface Setting {
  env: string;
  /** Flag name without dashes; undefined for secrets. */
  flag?: string;
  description: string;
  default?: string;
  boolean?: boolean;
}

const connection = {
  url: { env: "SCAIVAULT_URL", flag: "url", description: "ScaiVault base URL, such as https://scaivault.scailabs.ai" },
  token: { env: "SCAIVAULT_TOKEN", description: "Static ScaiVault token (skt_...) for local use and CI; environment only" },
  tokenFile: {
    env: "SCAIVAULT_TOKEN_FILE",
    flag: "token-file",
    description: "Projected service-account token to exchange for a ScaiVault token",
    default: "/var/run/secrets/scaivault/token",
  },
  audience: { env: "SCAIVAULT_AUDIENCE", flag: "audience", description: "Audience sent with the exchange", default: "scaivault" },
  role: { env: "SCAIVAULT_ROLE", flag: "role", description: "ScaiKey role to request in the exchange, such as sa:billing-prod" },
  tenantId: { env: "SCAIVAULT_TENANT_ID", flag: "tenant-id", description: "Tenant override (tnt_...), for partner admins" },
  caFile: { env: "SCAIVAULT_CA_FILE", flag: "ca-file", description: "PEM bundle of extra CAs to trust for ScaiVault and ScaiKey" },
  clientId: { env: "SCAIKEY_CLIENT_ID", flag: "client-id", description: "ScaiKey client id for the client-credentials fallback" },
  clientIdFile: { env: "SCAIKEY_CLIENT_ID_FILE", flag: "client-id-file", description: "File holding the ScaiKey client id" },
  clientSecret: { env: "SCAIKEY_CLIENT_SECRET", description: "ScaiKey client secret; environment only" },
  clientSecretFile: { env: "SCAIKEY_CLIENT_SECRET_FILE", flag: "client-secret-file", description: "File holding the ScaiKey client secret" },
  tokenUrl: {
    env: "SCAIKEY_TOKEN_URL",
    flag: "token-url",
    description: "ScaiKey OAuth token endpoint for client credentials",
    default: "https://scaikey.scailabs.ai/oauth/token",
  },
  scope: { env: "SCAIKEY_SCOPE", flag: "scope", description: "OAuth scope for client credentials, such as secrets:read" },
  requestTimeout: { env: "REQUEST_TIMEOUT", flag: "request-timeout", description: "Timeout of one HTTP request", default: "15s" },
  maxAttempts: { env: "RETRY_MAX_ATTEMPTS", flag: "max-attempts", description: "Attempts per request, the first included", default: "6" },
  logLevel: { env: "LOG_LEVEL", flag: "log-level", description: "error, warn, info or debug", default: "info" },
  logFormat: { env: "LOG_FORMAT", flag: "log-format", description: "json (for containers) or text; default: text on a terminal, else json" },
} satisfies Record<string, Setting>;

const output = {
  outputDirs: {
    env: "OUTPUT_DIRS",
    flag: "output-dirs",
    description: "Comma-separated directories that files must stay inside; relative targets go under the first",
    default: "/run/secrets",
  },
  outputPrefix: {
    env: "OUTPUT_PREFIX",
    flag: "output-prefix",
    description: "Directory to resolve absolute targets under, to run manifest values outside a container",
  },
  fileMode: { env: "FILE_MODE", flag: "file-mode", description: "Mode of written files unless a line sets mode=", default: "0644" },
} satisfies Record<string, Setting>;

/** Every setting, grouped by the commands that read them. */
export const SETTINGS = {
  connection,
  output,
  init: {
    secrets: { env: "SECRETS", flag: "secrets", description: "Lines of `path[#field] -> file [options]` to write" },
    dynamic: { env: "DYNAMIC", flag: "dynamic", description: "Lines of `engine=... role=... [ttl=...] -> file [options]`" },
    timeout: { env: "INIT_TIMEOUT", flag: "timeout", description: "Deadline for the whole init run", default: "2m" },
    failOpen: {
      env: "FAIL_OPEN",
      flag: "fail-open",
      description: "Exit 0 with a warning when secrets cannot be read",
      default: "false",
      boolean: true,
    },
  },
} satisfies Record<string, Record<string, Setting>>;

/** Returns citty argument definitions for the given groups of settings. */
export function settingsArgs(...groups: Array<Record<string, Setting>>): ArgsDef {
  const args: ArgsDef = {};
  for (const group of groups) {
    for (const setting of Object.values(group)) {
      if (!setting.flag) continue;
      const suffix = setting.default !== undefined ? ` (default: ${setting.default})` : "";
      args[setting.flag] = { type: "string", description: `${setting.description}; env ${setting.env}${suffix}` };
    }
  }
  return args;
}

/**
 * Reads settings: a flag wins over its variable, a variable over the default. Values are raw
 * strings, or undefined when unset; `config.ts` validates them.
 */
export function readSettings<T extends Record<string, Setting>>(
  group: T,
  args: Record<string, unknown>,
  env: Record<string, string | undefined>,
): { [K in keyof T]: string | undefined } {
  const values = {} as { [K in keyof T]: string | undefined };
  for (const [key, setting] of Object.entries(group) as Array<[keyof T, Setting]>) {
    const flagValue = setting.flag ? args[setting.flag] : undefined;
    const envValue = env[setting.env];
    const chosen = typeof flagValue === "string" ? flagValue : envValue !== undefined && envValue !== "" ? envValue : setting.default;
    values[key] = chosen;
  }
  return values;
}
