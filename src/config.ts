/**
 * Turns settings (flags over environment over defaults) into typed configuration, validated once
 * with valibot. Every invalid setting is reported in one error, by its variable name.
 */
import * as v from "valibot";
import { AgentError } from "./errors.ts";
import { parseDuration } from "./duration.ts";
import { SETTINGS, readSettings } from "./options.ts";
import { parseDynamicMappings, parseSecretMappings, type DynamicMapping, type SecretMapping } from "./mapping.ts";
import type { OutputLayout } from "./files.ts";
import type { LogFormat, LogLevelName } from "./log.ts";

export type Env = Record<string, string | undefined>;
export type Args = Record<string, unknown>;

export interface ConnectionConfig {
  url: string;
  token?: string;
  tokenFile: string;
  /** True when SCAIVAULT_TOKEN_FILE was set rather than defaulted. */
  tokenFileExplicit: boolean;
  audience: string;
  role?: string;
  tenantId?: string;
  caFile?: string;
  clientId?: string;
  clientIdFile?: string;
  clientSecret?: string;
  clientSecretFile?: string;
  tokenUrl: string;
  scope?: string;
  requestTimeoutMs: number;
  maxAttempts: number;
  logLevel: LogLevelName;
  logFormat?: LogFormat;
}

export interface OutputConfig {
  layout: OutputLayout;
  /** Mode for files whose line sets none. */
  fileMode: number;
}

export interface InitConfig {
  connection: ConnectionConfig;
  output: OutputConfig;
  secrets: SecretMapping[];
  dynamic: DynamicMapping[];
  timeoutMs: number;
  failOpen: boolean;
}

/**
 * Reads the connection settings.
 *
 * @throws AgentError `config` listing every invalid setting.
 */
export function loadConnection(args: Args, env: Env): ConnectionConfig {
  const raw = readSettings(SETTINGS.connection, args, env);
  return validate(ConnectionSchema, raw, "connection", { tokenFileExplicit: Boolean(args["token-file"] ?? env.SCAIVAULT_TOKEN_FILE) });
}

/** Reads the output settings. */
export function loadOutput(args: Args, env: Env): OutputConfig {
  const raw = readSettings(SETTINGS.output, args, env);
  return validate(OutputSchema, raw, "output", {});
}

/**
 * Reads everything `init` needs. Lines of SECRETS and DYNAMIC are checked before any request.
 *
 * @throws AgentError `config` listing every invalid setting and line.
 */
export function loadInitConfig(args: Args, env: Env): InitConfig {
  const problems: string[] = [];
  const attempt = <T>(load: () => T): T | undefined => {
    try {
      return load();
    } catch (error) {
      if (!(error instanceof AgentError) || error.code !== "config") throw error;
      problems.push(error.message);
      return undefined;
    }
  };

  const connection = attempt(() => loadConnection(args, env));
  const output = attempt(() => loadOutput(args, env));
  const raw = readSettings(SETTINGS.init, args, env);
  const secrets = attempt(() => parseSecretMappings(raw.secrets ?? "", { variable: "SECRETS" })) ?? [];
  const dynamic = attempt(() => parseDynamicMappings(raw.dynamic ?? "", { variable: "DYNAMIC" })) ?? [];
  const timeoutMs = attempt(() => positiveDuration(raw.timeout!, "INIT_TIMEOUT"));
  const failOpen = attempt(() => parseBoolean(raw.failOpen!, "FAIL_OPEN"));

  if (secrets.length === 0 && dynamic.length === 0 && raw.secrets !== undefined) {
    problems.push("SECRETS has no lines: write one `path -> file` per line");
  } else if (raw.secrets === undefined && raw.dynamic === undefined) {
    problems.push("SECRETS is not set: write one `path -> file` per line, for example\n    environments/production/billing/database -> /run/secrets/db.json");
  }

  const secretTargets = new Map(secrets.map((mapping) => [mapping.target, mapping.line]));
  for (const mapping of dynamic) {
    const line = secretTargets.get(mapping.target);
    if (line !== undefined) problems.push(`DYNAMIC line ${mapping.line}: "${mapping.target}" is already written by SECRETS line ${line}; give each its own file`);
  }

  if (problems.length) throw new AgentError("config", problems.join("\n"));
  return { connection: connection!, output: output!, secrets, dynamic, timeoutMs: timeoutMs!, failOpen: failOpen! };
}

/** Parses `true`/`false` (also 1/0, yes/no). */
export function parseBoolean(value: string, name: string): boolean {
  const text = value.trim().toLowerCase();
  if (["true", "1", "yes", "on"].includes(text)) return true;
  if (["false", "0", "no", "off", ""].includes(text)) return false;
  throw new AgentError("config", `Invalid ${name}: "${value}". Use true or false`);
}

/** Parses a duration that must be greater than zero. */
export function positiveDuration(value: string, name: string): number {
  const ms = parseDuration(value, name);
  if (ms <= 0) throw new AgentError("config", `Invalid ${name}: "${value}" must be longer than zero`);
  return ms;
}

/** Parses an octal file mode such as `0644`. */
export function parseMode(value: string, name: string): number {
  if (!/^0?[0-7]{3}$/.test(value.trim())) throw new AgentError("config", `Invalid ${name}: "${value}". Write an octal mode such as 0644 or 0400`);
  return Number.parseInt(value.trim(), 8);
}

// ---------------------------------------------------------------------------------------------

const optional = v.optional(v.string());

/** Wraps a throwing parser as a valibot transform that reports its message as the issue. */
function parsed<T>(parse: (value: string) => T) {
  return v.rawTransform<string, T>(({ dataset, addIssue, NEVER }) => {
    try {
      return parse(dataset.value);
    } catch (error) {
      addIssue({ message: (error as Error).message });
      return NEVER;
    }
  });
}

const ConnectionSchema = v.object({
  url: v.pipe(
    v.string("SCAIVAULT_URL is not set: set it to the ScaiVault base URL, such as https://scaivault.scailabs.ai"),
    v.check((value) => /^https?:\/\/[^\s/]+/.test(value), "Invalid SCAIVAULT_URL: write an http:// or https:// URL"),
  ),
  token: optional,
  tokenFile: v.string(),
  audience: v.string(),
  role: optional,
  tenantId: v.optional(v.pipe(v.string(), v.regex(/^[A-Za-z0-9_\-]+$/, "Invalid SCAIVAULT_TENANT_ID: use the tnt_... id"))),
  caFile: optional,
  clientId: optional,
  clientIdFile: optional,
  clientSecret: optional,
  clientSecretFile: optional,
  tokenUrl: v.pipe(v.string(), v.check((value) => /^https?:\/\//.test(value), "Invalid SCAIKEY_TOKEN_URL: write an http:// or https:// URL")),
  scope: optional,
  requestTimeout: v.pipe(v.string(), parsed((value) => positiveDuration(value, "REQUEST_TIMEOUT"))),
  maxAttempts: v.pipe(
    v.string(),
    v.regex(/^[1-9]\d*$/, "Invalid RETRY_MAX_ATTEMPTS: write a whole number of 1 or more"),
    v.transform(Number),
  ),
  logLevel: v.picklist(["silent", "error", "warn", "info", "debug", "trace"], "Invalid LOG_LEVEL: use error, warn, info or debug"),
  logFormat: v.optional(v.picklist(["json", "text"], "Invalid LOG_FORMAT: use json or text")),
});

const OutputSchema = v.object({
  outputDirs: v.pipe(
    v.string(),
    v.transform((value) => value.split(",").map((dir) => dir.trim()).filter(Boolean)),
    v.check((dirs) => dirs.length > 0, "OUTPUT_DIRS is empty: name at least one directory"),
    v.check((dirs) => dirs.every((dir) => dir.startsWith("/")), "Invalid OUTPUT_DIRS: every directory must be an absolute path"),
  ),
  outputPrefix: optional,
  fileMode: v.pipe(v.string(), parsed((value) => parseMode(value, "FILE_MODE"))),
});

function validate<S extends v.GenericSchema>(schema: S, raw: unknown, _group: string, extra: Record<string, unknown>): any {
  const result = v.safeParse(schema, raw);
  if (!result.success) {
    const messages = [...new Set(result.issues.map((issue) => issue.message))];
    throw new AgentError("config", messages.join("\n"));
  }

  const output = { ...(result.output as Record<string, unknown>), ...extra };
  if ("requestTimeout" in output) {
    output.requestTimeoutMs = output.requestTimeout;
    delete output.requestTimeout;
  }
  if ("outputDirs" in output) {
    output.layout = { dirs: output.outputDirs, prefix: output.outputPrefix ?? "" };
    delete output.outputDirs;
    delete output.outputPrefix;
  }
  return output;
}
