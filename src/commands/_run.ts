/** The frame of every command: logging set-up, shutdown signals and the exit code of an error. */
import { AgentError, exitCodeOf } from "../errors.ts";
import { configureLogging, errorFields, getLogger, type LogFormat, type LogLevelName } from "../log.ts";

const log = getLogger("cli");

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

  const controller = new AbortController();
  const onSignal = (name: NodeJS.Signals): void => {
    if (controller.signal.aborted) {
      log.warn("Second signal, exiting now", { signal: name });
      process.exit(130);
    }
    log.info("Received signal, shutting down", { signal: name });
    controller.abort(new AgentError("timeout", `Stopped by ${name}`));
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);

  let status: number;
  try {
    status = (await action({ signal: controller.signal, env })) ?? 0;
  } catch (error) {
    status = exitCodeOf(error);
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

function flushStreams(): Promise<void> {
  return new Promise((resolve) => {
    if (process.stderr.writableLength === 0 && process.stdout.writableLength === 0) resolve();
    else process.stderr.write("", () => process.stdout.write("", () => resolve()));
  });
}
