import { createConsola, type ConsolaInstance, type ConsolaReporter, type LogObject } from "consola/core";
import { AgentError } from "./errors.ts";

export type LogFormat = "json" | "text";
export type LogLevelName = "silent" | "error" | "warn" | "info" | "debug" | "trace";

export interface LogOptions {
  /** @default "info" */
  level?: LogLevelName;
  /** `json` for containers, `text` for people. @default "text" on a terminal, else "json" */
  format?: LogFormat;
  /** Line writer. @default a write to standard error */
  write?: (line: string) => void;
}

/** A tagged logger. Callers pass a message and an object of fields: ids and paths, never values. */
export interface Logger {
  error(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  debug(message: string, fields?: Record<string, unknown>): void;
}

export const LOG_LEVELS: Record<LogLevelName, number> = {
  silent: -999,
  error: 0,
  warn: 1,
  info: 3,
  debug: 4,
  trace: 5,
};

let root: ConsolaInstance = buildRoot({});
let generation = 0;

/** Replaces the process-wide log settings. Loggers made earlier by `getLogger` follow. */
export function configureLogging(options: LogOptions): void {
  root = buildRoot(options);
  generation += 1;
}

/** Returns a logger whose lines carry `tag` (the module: `client`, `sidecar`, `leases`). */
export function getLogger(tag: string): Logger {
  let cached: ConsolaInstance | undefined;
  let cachedGeneration = -1;

  function current(): ConsolaInstance {
    if (cached === undefined || cachedGeneration !== generation) {
      cached = root.withTag(tag);
      cachedGeneration = generation;
    }
    return cached;
  }

  return {
    error: (message, fields) => current().error(message, ...(fields ? [fields] : [])),
    warn: (message, fields) => current().warn(message, ...(fields ? [fields] : [])),
    info: (message, fields) => current().info(message, ...(fields ? [fields] : [])),
    debug: (message, fields) => current().debug(message, ...(fields ? [fields] : [])),
  };
}

/** Turns an error into log fields: message, code, server code and request id, never a body. */
export function errorFields(error: unknown): Record<string, unknown> {
  if (error instanceof AgentError) {
    return {
      error: error.message,
      code: error.code,
      ...(error.serverCode ? { serverCode: error.serverCode } : {}),
      ...(error.requestId ? { requestId: error.requestId } : {}),
    };
  }
  return { error: error instanceof Error ? error.message : String(error) };
}

// ---------------------------------------------------------------------------------------------

function buildRoot(options: LogOptions): ConsolaInstance {
  const write = options.write ?? ((line: string) => process.stderr.write(line + "\n"));
  const format = options.format ?? (process.stderr.isTTY ? "text" : "json");
  const reporter = format === "json" ? jsonReporter(write) : textReporter(write);

  return createConsola({
    level: LOG_LEVELS[options.level ?? "info"],
    reporters: [reporter],
    // Repeated identical lines within this window collapse into one with a count.
    throttle: 1000,
    throttleMin: 5,
  });
}

function splitArgs(args: unknown[]): { message: string; fields: Record<string, unknown> } {
  const words: string[] = [];
  const fields: Record<string, unknown> = {};

  for (const arg of args) {
    if (typeof arg === "string") words.push(arg);
    else if (arg instanceof Error) Object.assign(fields, errorFields(arg));
    else if (arg && typeof arg === "object") Object.assign(fields, arg);
    else if (arg !== undefined) words.push(String(arg));
  }
  return { message: words.join(" "), fields };
}

function jsonReporter(write: (line: string) => void): ConsolaReporter {
  return {
    log(entry: LogObject) {
      const { message, fields } = splitArgs(entry.args);
      const line = {
        time: entry.date.toISOString(),
        level: entry.type === "log" ? "info" : entry.type,
        ...(entry.tag ? { component: entry.tag } : {}),
        msg: message,
        ...fields,
      };
      write(JSON.stringify(line));
    },
  };
}

function textReporter(write: (line: string) => void): ConsolaReporter {
  return {
    log(entry: LogObject) {
      const { message, fields } = splitArgs(entry.args);
      const pairs = Object.entries(fields).map(([key, value]) => `${key}=${formatValue(value)}`);
      const tag = entry.tag ? ` [${entry.tag}]` : "";
      const level = (entry.type === "log" ? "info" : entry.type).toUpperCase().padEnd(5);
      write(`${entry.date.toISOString()} ${level}${tag} ${message}${pairs.length ? " " + pairs.join(" ") : ""}`);
    },
  };
}

function formatValue(value: unknown): string {
  if (typeof value === "string") return /[\s"=]/.test(value) ? JSON.stringify(value) : value;
  return JSON.stringify(value);
}
