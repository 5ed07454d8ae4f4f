/**
 * The dev server's two input files: the config file (access rules per identity, and `engines`
 * for the dynamic-credentials routes) and the seed file (secret path to data object).
 */
import { readFileSync } from "node:fs";
import * as v from "valibot";
import { AgentError } from "../errors.ts";
import { secretPathProblem } from "../paths.ts";
import { globProblem } from "./glob.ts";

/** Path globs one identity may read and write, and who may request it as a role. Write does not imply read. */
export interface IdentityRules {
  read: string[];
  write: string[];
  /**
   * Service accounts that may request this identity as `role` in an exchange, as
   * `system:serviceaccount:NS:NAME` or `NS:NAME`. Service account `NAME` always gets `sa:NAME`.
   */
  subjects?: string[];
}

/** The parsed dev config file. */
export interface DevConfig {
  /**
   * Access rules per identity id (`sa:billing`). When present, only the listed identities may
   * exchange tokens or use roles, and each reaches only the paths its globs allow. When absent,
   * every authenticated identity may read and write every path.
   */
  identities?: Record<string, IdentityRules>;
  /** Dynamic-credential engines, passed through unparsed to the routes that serve them. */
  engines?: unknown;
  /**
   * OAuth clients that `POST /oauth/token` (the dev stand-in for ScaiKey's token endpoint)
   * accepts for the client-credentials grant, by client id.
   */
  clients?: Record<string, DevClient>;
}

/** One OAuth client of the dev token endpoint. */
export interface DevClient {
  secret: string;
  /** Identity that the issued token carries, such as `sa:billing-ci`. */
  identity: string;
}

/** Secrets to load at start: secret path to its `data` object. */
export type DevSeed = Record<string, Record<string, unknown>>;

/**
 * Validates a dev config value, such as the parsed JSON of a `--config` file.
 *
 * @param source names the value in error messages, usually the file name.
 * @throws AgentError `config` listing every invalid key.
 */
export function parseDevConfig(value: unknown, source: string): DevConfig {
  const result = v.safeParse(DevConfigSchema, value);
  const problems = isObject(value) ? [...reservedKeyProblems(value.identities, "identities"), ...reservedKeyProblems(value.clients, "clients")] : [];

  if (!result.success) {
    problems.push(...result.issues.map((issue) => `${v.getDotPath(issue) ?? "(top level)"}: ${issue.message}`));
  }
  if (problems.length > 0 || !result.success) {
    throw new AgentError("config", `Invalid dev config ${source}: ${problems.join("; ")}`);
  }
  return result.output;
}

/**
 * Returns a problem for each key of the object `value` that valibot's `record` drops without an
 * issue (`__proto__`, `prototype`, `constructor`), so that such an entry is rejected instead of
 * silently missing. `where` names the object in the message, such as `clients`.
 */
export function reservedKeyProblems(value: unknown, where: string): string[] {
  if (!isObject(value)) return [];
  return RESERVED_KEYS.filter((key) => Object.hasOwn(value, key)).map((key) => `${where}.${key}: the name "${key}" is reserved, choose another`);
}

/**
 * Reads and validates a dev config file (JSON).
 *
 * @throws AgentError `config` when the file cannot be read, is not JSON or is invalid.
 */
export function loadDevConfig(file: string): DevConfig {
  return parseDevConfig(readJsonFile(file, "dev config"), `"${file}"`);
}

/**
 * Validates a seed value: an object whose keys are valid secret paths and whose values are
 * objects. Errors name the bad paths, never the values.
 *
 * @throws AgentError `config` listing every invalid entry.
 */
export function parseSeed(value: unknown, source: string): DevSeed {
  if (!isObject(value)) {
    throw new AgentError("config", `Invalid seed ${source}: expected a JSON object of secret path to data object`);
  }

  const problems: string[] = [];
  for (const [path, data] of Object.entries(value)) {
    const pathProblem = secretPathProblem(path);
    if (pathProblem) problems.push(`"${path}": ${pathProblem}`);
    else if (!isObject(data)) problems.push(`"${path}": the data must be a JSON object`);
  }

  if (problems.length > 0) throw new AgentError("config", `Invalid seed ${source}: ${problems.join("; ")}`);
  return value as DevSeed;
}

/**
 * Reads and validates a seed file (JSON).
 *
 * @throws AgentError `config` when the file cannot be read, is not JSON or has an invalid entry.
 */
export function loadSeed(file: string): DevSeed {
  return parseSeed(readJsonFile(file, "seed"), `file "${file}"`);
}

// ---------------------------------------------------------------------------------------------

const GlobSchema = v.pipe(
  v.string(),
  v.check(
    (pattern) => globProblem(pattern) === undefined,
    (issue) => `invalid glob "${String(issue.input)}": ${globProblem(String(issue.input))}`,
  ),
);

const RESERVED_KEYS = ["__proto__", "prototype", "constructor"] as const;

const SubjectSchema = v.pipe(
  v.string(),
  v.regex(
    /^(system:serviceaccount:)?[^:\s]+:[^:\s]+$/,
    (issue) => `invalid subject "${String(issue.input)}": write system:serviceaccount:NAMESPACE:NAME or NAMESPACE:NAME`,
  ),
);

const IdentityRulesSchema = v.strictObject({
  read: v.optional(v.array(GlobSchema), []),
  write: v.optional(v.array(GlobSchema), []),
  subjects: v.optional(v.array(SubjectSchema), []),
});

const IdentityIdSchema = v.pipe(
  v.string(),
  v.regex(/^\S{1,128}$/, (issue) => `invalid identity id "${String(issue.input)}": use 1 to 128 non-space characters`),
);

const DevClientSchema = v.strictObject({
  secret: v.pipe(v.string(), v.minLength(1, "the client secret is empty")),
  identity: IdentityIdSchema,
});

const DevConfigSchema = v.strictObject({
  identities: v.optional(v.record(IdentityIdSchema, IdentityRulesSchema)),
  engines: v.optional(v.unknown()),
  clients: v.optional(v.record(IdentityIdSchema, DevClientSchema)),
});

function readJsonFile(file: string, kind: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    throw new AgentError("config", `Cannot read ${kind} file "${file}": ${(error as Error).message}`, { cause: error });
  }

  try {
    return JSON.parse(text);
  } catch {
    // The parser's message quotes the text near the error, which may be a secret value, so it
    // is neither shown nor kept as the cause.
    throw new AgentError("config", `Cannot parse ${kind} file "${file}": it is not valid JSON`);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
