/** The frame of every command: logging set-up, shutdown signals and the exit code of an error. */
import { AgentError, EXIT_CODES, exitCodeOf } from "../errors.ts";
import { configureLogging, errorFields, getLogger, type LogFormat, type LogLevelName } from "../log.ts";

const log = getLogger("cli");

/** Time that clean-up after an unexpected failure may take before the process exits anyway. */
const FATAL_EXIT_AFTER_MS = 15_000;

export interface ActionContext {
  /** Aborted on the first SIGTERM or SIGINT. */
  signal: AbortSignal;
  env: Record<string, string | undefined>;
}

/**
 * Sets up logging from `--log-level`/`--log-format` or LOG_LEVEL/LOG_FORMAT, runs `action` and
 * exits with its status: 0, or the exit code of the error it threw. A second signal exits at once.
 */
export async function runAction(args: Record<string, unknown>, action: (context: ActionContext) => Promise<number | void>): Promise<never> {
  const env = process.env as Record<string, string | undefined>;
  configureLogging({
    level: pick(args["log-level"], env.LOG_LEVEL, ["silent", "error", "warn", "info", "debug", "trace"]) as LogLevelName | undefined,
    format: pick(args["log-format"], env.LOG_FORMAT, ["json", "text"]) as LogFormat | undefined,
  });

  // A closed pipe or a full disk behind stdout/stderr must not crash the process with a stack trace.
  process.stdout.on("error", () => {});
  process.stderr.on("error", () => {});

  const controller = new AbortController();
  let stoppedBy: NodeJS.Signals | undefined;
  const onSignal = (name: NodeJS.Signals): void => {
    if (controller.signal.aborted) {
      log.warn("Second signal, exiting now", { signal: name });
      process.exit(130);
    }
    stoppedBy = name;
    log.info("Received signal, shutting down", { signal: name });
    controller.abort(new AgentError("timeout", `Stopped by ${name}`));
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);

  // A bug that escapes every handler still shuts down through the signal, so that long-running
  // commands run their clean-up (revoking leases, deleting the subscription) before exiting 1.
  let fatal: unknown;
  const onFatal = (error: unknown): void => {
    if (fatal !== undefined) return;
    fatal = error;
    log.error("Unexpected failure, shutting down", { ...errorFields(error), stack: (error as Error)?.stack });
    if (!controller.signal.aborted) controller.abort(new AgentError("internal", "Stopped by an unexpected failure"));
    setTimeout(() => process.exit(EXIT_CODES.internal), FATAL_EXIT_AFTER_MS).unref?.();
  };
  process.on("uncaughtException", onFatal);
  process.on("unhandledRejection", onFatal);

  let status: number;
  try {
    status = (await action({ signal: controller.signal, env })) ?? 0;
    if (fatal !== undefined) status = EXIT_CODES.internal;
  } catch (error) {
    // A run cut short by a signal exits as the shell reports a signal: 128 + its number.
    status = exitCodeOf(error);
    if (stoppedBy === "SIGINT") status = 130;
    if (stoppedBy === "SIGTERM") status = 143;
    if (fatal !== undefined) status = EXIT_CODES.internal;
    log.error(error instanceof AgentError ? "Command failed" : "Unexpected failure", {
      ...errorFields(error),
      exitCode: status,
      ...(error instanceof AgentError ? {} : { stack: (error as Error).stack }),
    });
  }

  await flushStreams();
  process.exit(status);
}

function pick(flag: unknown, env: string | undefined, allowed: string[]): string | undefined {
  const value = typeof flag === "string" ? flag : env;
  return value !== undefined && allowed.includes(value) ? value : undefined;
}

/** Waits until buffered output is written, for at most two seconds: a stuck pipe must not hold the exit. */
function flushStreams(): Promise<void> {
  const flushed = new Promise<void>((resolve) => {
    if (process.stderr.writableLength === 0 && process.stdout.writableLength === 0) resolve();
    else process.stderr.write("", () => process.stdout.write("", () => resolve()));
  });
  const limit = new Promise<void>((resolve) => setTimeout(resolve, 2000).unref?.());
  return Promise.race([flushed, limit]);
}
