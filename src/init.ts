/**
 * The init command: read every secret of SECRETS within the deadline, then write all files, or
 * none when anything failed (unless FAIL_OPEN, which writes what it could and warns).
 */
import { AgentError, type ErrorCode } from "./errors.ts";
import { errorFields, getLogger } from "./log.ts";
import { connect } from "./connect.ts";
import type { InitConfig } from "./config.ts";
import { renderTarget, resolveTargets, type FileTarget } from "./deliver.ts";
import { writeFilesAtomic } from "./files.ts";
import type { ScaiVaultClient } from "./client.ts";

const log = getLogger("init");

/** Files of one init run: written, already current, and skipped under FAIL_OPEN. */
export interface InitResult {
  written: string[];
  unchanged: string[];
  /** Lines skipped under FAIL_OPEN, with the reason. */
  skipped: Array<{ path: string; file: string; reason: string }>;
}

/** Hook for DYNAMIC lines, set by the lease module so that `init` can generate leases. */
export type DynamicHook = (config: InitConfig, client: ScaiVaultClient, signal: AbortSignal) => Promise<string[]>;

export interface InitOptions {
  /** Aborted on SIGTERM/SIGINT. */
  signal?: AbortSignal;
  dynamic?: DynamicHook;
}

/** Order in which failures decide the exit code when several secrets fail differently. */
const SEVERITY: ErrorCode[] = ["unreachable", "timeout", "rate_limited", "auth", "forbidden", "not_found", "server", "config", "write"];

/**
 * Runs init.
 *
 * @throws AgentError of the most severe failure, unless `failOpen` is set and the failure is in
 * reaching or reading ScaiVault.
 */
export async function runInit(config: InitConfig, options: InitOptions = {}): Promise<InitResult> {
  const started = performance.now();
  const deadline = AbortSignal.timeout(config.timeoutMs);
  const signal = options.signal ? AbortSignal.any([deadline, options.signal]) : deadline;
  const targets = resolveTargets(config.secrets, config.output, "SECRETS");
  const result: InitResult = { written: [], unchanged: [], skipped: [] };

  log.info("Starting init", { secrets: targets.length, dynamic: config.dynamic.length, url: config.connection.url, timeoutMs: config.timeoutMs });

  const client = connect(config.connection, { signal });
  const rendered: Array<{ target: FileTarget; bytes: Uint8Array; version: number }> = [];
  const failures: Array<{ target: FileTarget; error: AgentError }> = [];

  try {
    const read = await client.readSecrets(targets.map((target) => target.mapping.path));

    for (const target of targets) {
      const path = target.mapping.path;
      const secret = read.secrets.get(path);
      if (!secret) {
        const error = read.errors.get(path) ?? new AgentError("not_found", `Cannot read secret "${path}"`);
        failures.push({ target, error: asAgentError(error, signal, deadline, config.timeoutMs) });
        continue;
      }

      try {
        rendered.push({ target, bytes: renderTarget(target, secret.data, path), version: secret.version });
      } catch (error) {
        failures.push({ target, error: error as AgentError });
      }
    }
  } catch (error) {
    const agentError = asAgentError(error, signal, deadline, config.timeoutMs);
    for (const target of targets) failures.push({ target, error: agentError });
  }

  for (const failure of failures) {
    log.error("Cannot deliver secret", { path: failure.target.mapping.path, file: failure.target.file, line: failure.target.mapping.line, ...errorFields(failure.error) });
  }

  if (failures.length && !config.failOpen) {
    throw mostSevere(failures.map((failure) => failure.error), failures.length, targets.length);
  }

  const writes = await writeFilesAtomic(
    rendered.map(({ target, bytes }) => ({ path: target.file, bytes, mode: target.mode })),
    config.output.layout,
  );
  rendered.forEach(({ target, version }, index) => {
    const changed = writes[index]!.changed;
    (changed ? result.written : result.unchanged).push(target.file);
    log.info(changed ? "Wrote file" : "File already current", { path: target.mapping.path, file: target.file, version });
  });

  if (config.dynamic.length) {
    if (!options.dynamic) throw new AgentError("config", "DYNAMIC is set, but this build has no lease support");
    try {
      result.written.push(...(await options.dynamic(config, client, signal)));
    } catch (error) {
      const agentError = asAgentError(error, signal, deadline, config.timeoutMs);
      if (!config.failOpen) throw agentError;
      for (const mapping of config.dynamic) {
        result.skipped.push({ path: `${mapping.engine}/${mapping.role}`, file: mapping.target, reason: agentError.message });
      }
    }
  }

  for (const failure of failures) {
    result.skipped.push({ path: failure.target.mapping.path, file: failure.target.file, reason: failure.error.message });
  }
  if (result.skipped.length) {
    log.warn("FAIL_OPEN is set: starting without some secrets", {
      skipped: result.skipped.map((entry) => `${entry.path} -> ${entry.file}`),
    });
  }

  log.info("Init finished", {
    written: result.written.length,
    unchanged: result.unchanged.length,
    skipped: result.skipped.length,
    durationMs: Math.round(performance.now() - started),
  });
  return result;
}

// ---------------------------------------------------------------------------------------------

function asAgentError(error: unknown, signal: AbortSignal, deadline: AbortSignal, timeoutMs: number): AgentError {
  if (error instanceof AgentError && error.code !== "timeout") return error;
  if (deadline.aborted) return new AgentError("timeout", `Init did not finish within INIT_TIMEOUT (${timeoutMs} ms)`, { cause: error });
  if (signal.aborted) return new AgentError("timeout", "Init was stopped by a signal before it finished", { cause: error });
  if (error instanceof AgentError) return error;
  return new AgentError("internal", `Init failed: ${(error as Error).message}`, { cause: error });
}

function mostSevere(errors: AgentError[], failed: number, total: number): AgentError {
  const ranked = [...errors].sort((a, b) => rank(a.code) - rank(b.code));
  const first = ranked[0]!;
  const lines = [...new Set(errors.map((error) => error.message))];
  const summary = `${failed} of ${total} secrets could not be delivered:\n  ${lines.join("\n  ")}`;
  return new AgentError(first.code, summary, { cause: first, serverCode: first.serverCode, requestId: first.requestId });
}

function rank(code: ErrorCode): number {
  const index = SEVERITY.indexOf(code);
  return index === -1 ? SEVERITY.length : index;
}
