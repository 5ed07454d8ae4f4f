/**
 * The `engines` key of the dev config: dynamic-credential engines, each with a plugin and roles.
 *
 *   {"engines": {"postgres-prod": {
 *     "plugin": "postgresql",
 *     "connection_url": "postgres://admin:PASSWORD@127.0.0.1:5432/billing",
 *     "max_ttl": "24h",
 *     "roles": {"readonly": {
 *       "default_ttl": "1h",
 *       "creation_statements": ["GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\""]}}}}}
 *
 * Engine keys: `plugin` (`postgresql` or `static`), `connection_url` (postgresql only), `max_ttl`
 * (default 24h), `default_ttl` (default 1h, for roles that set none), `data` (fields every
 * credential of the engine carries, such as host and port). Role keys: `default_ttl`, `max_ttl`
 * (capped by the engine's), `creation_statements`, `revocation_statements`, `renew_statements`,
 * `data`. Statements may use `{{name}}` (the generated role name) and `{{expiration}}` (ISO time).
 * Messages never quote a connection URL, because it usually contains a password.
 */
import * as v from "valibot";
import { AgentError } from "../errors.ts";
import { parseDuration } from "../duration.ts";
import { reservedKeyProblems } from "./config.ts";

export type PluginName = "postgresql" | "static";

/** One role of an engine, with durations in milliseconds. */
export interface RoleConfig {
  name: string;
  defaultTtlMs: number;
  /** Lifetime after which a lease of this role cannot be renewed: the smaller of role and engine `max_ttl`. */
  maxTtlMs: number;
  creationStatements: string[];
  /** Statements run before the role is dropped; empty means REASSIGN OWNED and DROP OWNED. */
  revocationStatements: string[];
  /** Statements run after VALID UNTIL is moved on renew. */
  renewStatements: string[];
  /** Fields added to every credential, under the generated `username` and `password`. */
  data: Record<string, unknown>;
}

/** One engine of the dev config. */
export interface EngineConfig {
  name: string;
  plugin: PluginName;
  /** postgresql only: the admin connection URL. Never logged. */
  connectionUrl?: string;
  maxTtlMs: number;
  roles: Map<string, RoleConfig>;
}

/** Engine and role names: the characters the agent's DYNAMIC lines allow. */
export const ENGINE_NAME = /^[a-z0-9][a-z0-9\-_]*$/;

/**
 * Validates the `engines` value of the dev config. Undefined gives no engines.
 *
 * @throws AgentError `config` listing every invalid engine and role key.
 */
export function parseEngines(value: unknown): Map<string, EngineConfig> {
  const engines = new Map<string, EngineConfig>();
  if (value === undefined) return engines;

  const result = v.safeParse(EnginesSchema, value);
  const reserved = reservedEngineKeys(value);
  if (!result.success || reserved.length > 0) {
    const issues = result.success ? [] : result.issues.map((issue) => `engines.${v.getDotPath(issue) ?? ""}: ${issue.message}`.replace(/\.:/, ":"));
    throw new AgentError("config", `Invalid dev config: ${[...new Set([...reserved, ...issues])].join("; ")}`);
  }

  const problems: string[] = [];
  for (const [name, raw] of Object.entries(result.output)) {
    if (!ENGINE_NAME.test(name)) problems.push(`engine "${name}": use a-z, 0-9, "-" and "_" in engine names`);
    if (raw.plugin === "postgresql" && !raw.connection_url) problems.push(`engine "${name}": the postgresql plugin needs connection_url`);
    if (raw.plugin === "postgresql" && raw.connection_url && !/^postgres(ql)?:\/\//.test(raw.connection_url)) {
      problems.push(`engine "${name}": connection_url must start with postgres:// or postgresql://`);
    }

    const engineMaxMs = duration(raw.max_ttl ?? "24h", `engine "${name}" max_ttl`, problems);
    const engineDefaultMs = duration(raw.default_ttl ?? "1h", `engine "${name}" default_ttl`, problems);
    const roles = new Map<string, RoleConfig>();

    for (const [roleName, role] of Object.entries(raw.roles)) {
      const where = `engine "${name}" role "${roleName}"`;
      if (!ENGINE_NAME.test(roleName)) problems.push(`${where}: use a-z, 0-9, "-" and "_" in role names`);

      const maxTtlMs = Math.min(engineMaxMs, role.max_ttl === undefined ? Infinity : duration(role.max_ttl, `${where} max_ttl`, problems));
      const defaultTtlMs = Math.min(maxTtlMs, role.default_ttl === undefined ? engineDefaultMs : duration(role.default_ttl, `${where} default_ttl`, problems));
      roles.set(roleName, {
        name: roleName,
        defaultTtlMs,
        maxTtlMs,
        creationStatements: role.creation_statements ?? [],
        revocationStatements: role.revocation_statements ?? [],
        renewStatements: role.renew_statements ?? [],
        data: { ...(raw.data ?? {}), ...(role.data ?? {}) },
      });
    }

    engines.set(name, { name, plugin: raw.plugin, connectionUrl: raw.connection_url, maxTtlMs: engineMaxMs, roles });
  }

  if (problems.length) throw new AgentError("config", `Invalid dev config: ${problems.join("; ")}`);
  return engines;
}

// ---------------------------------------------------------------------------------------------

const Statements = v.array(v.pipe(v.string(), v.minLength(1, "a statement must not be empty")));
const Data = v.record(v.string(), v.unknown());

const RoleSchema = v.strictObject({
  default_ttl: v.optional(v.string()),
  max_ttl: v.optional(v.string()),
  creation_statements: v.optional(Statements),
  revocation_statements: v.optional(Statements),
  renew_statements: v.optional(Statements),
  data: v.optional(Data),
});

const EngineSchema = v.strictObject({
  plugin: v.picklist(["postgresql", "static"], "plugin must be postgresql or static"),
  // The URL is checked by hand above, so that no valibot message can quote it.
  connection_url: v.optional(v.string("connection_url must be a string")),
  max_ttl: v.optional(v.string()),
  default_ttl: v.optional(v.string()),
  data: v.optional(Data),
  roles: v.record(v.string(), RoleSchema),
});

const EnginesSchema = v.record(v.string(), EngineSchema);

/** Names that valibot's `record` would drop silently: engines, roles and `data` fields. */
function reservedEngineKeys(engines: unknown): string[] {
  const problems = reservedKeyProblems(engines, "engines");
  if (!isRecord(engines)) return problems;

  for (const [name, engine] of Object.entries(engines)) {
    if (!isRecord(engine)) continue;
    problems.push(...reservedKeyProblems(engine.roles, `engines.${name}.roles`), ...reservedKeyProblems(engine.data, `engines.${name}.data`));

    if (!isRecord(engine.roles)) continue;
    for (const [roleName, role] of Object.entries(engine.roles)) {
      if (isRecord(role)) problems.push(...reservedKeyProblems(role.data, `engines.${name}.roles.${roleName}.data`));
    }
  }
  return problems;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function duration(value: string, name: string, problems: string[]): number {
  try {
    const ms = parseDuration(value, name);
    if (ms < 1000) problems.push(`${name} "${value}" is shorter than one second`);
    return ms;
  } catch (error) {
    problems.push((error as Error).message);
    return 0;
  }
}
