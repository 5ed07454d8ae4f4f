/**
 * `scaivault-agent dev`: runs the local ScaiVault-compatible server until SIGTERM or SIGINT.
 * Standard output gets exactly one `ScaiVault dev server listening on <url>` line, plus a
 * `Root token: <token>` line when the token was generated. Logs go to standard error.
 */
import { readFileSync } from "node:fs";
import { defineCommand } from "citty";
import { AgentError } from "../errors.ts";
import { parseDuration } from "../duration.ts";
import { runAction } from "../commands/_run.ts";
import { loadDevConfig, loadSeed } from "./config.ts";
import { startDevServer, type DevServerOptions } from "./server.ts";
import { randomToken } from "./tokens.ts";

/** Environment variable for the root token, which keeps it out of process listings. */
export const ROOT_TOKEN_ENV = "SCAIVAULT_DEV_ROOT_TOKEN";

/** The `dev` command for the CLI's command tree. */
export const devCommand = defineCommand({
  meta: {
    name: "dev",
    description: "Run a local ScaiVault-compatible server with in-memory state, for development and tests (not for production)",
  },
  args: {
    host: { type: "string", description: "Address to listen on (default: 127.0.0.1)", valueHint: "ADDRESS" },
    port: { type: "string", description: "Port to listen on; 0 picks a free port (default: 8200)", valueHint: "PORT" },
    seed: { type: "string", description: "JSON file of secret path to data object, loaded at start", valueHint: "FILE" },
    config: {
      type: "string",
      description: "JSON file with read and write path globs per identity, and engines for dynamic credentials",
      valueHint: "FILE",
    },
    "root-token": {
      type: "string",
      description: `Root token; env ${ROOT_TOKEN_ENV} keeps it out of process listings (default: generated and printed once)`,
      valueHint: "TOKEN",
    },
    audience: { type: "string", description: "Audience that exchanged JWTs must carry (default: scaivault)" },
    "token-ttl": { type: "string", description: "Lifetime of exchanged tokens, such as 1h or 30s (default: 1h)", valueHint: "DURATION" },
    "jwt-public-key": {
      type: "string",
      description: "PEM public key (RSA or EC P-256) that exchanged JWTs must be signed with; without it or --jwks, signatures are not checked",
      valueHint: "FILE",
    },
    jwks: { type: "string", description: "JWKS file whose keys exchanged JWTs must be signed with", valueHint: "FILE" },
    "tls-cert": { type: "string", description: "PEM certificate chain file: serve HTTPS (with --tls-key)", valueHint: "FILE" },
    "tls-key": { type: "string", description: "PEM private key file for --tls-cert", valueHint: "FILE" },
    "rate-limits": { type: "string", description: "on or off: enforce ScaiVault's per-minute rate limits (default: on)", valueHint: "on|off" },
    "log-level": { type: "string", description: "error, warn, info or debug; env LOG_LEVEL (default: info)" },
    "log-format": { type: "string", description: "json or text; env LOG_FORMAT (default: text on a terminal, else json)" },
  },
  run: ({ args }) =>
    runAction(args, async ({ signal, env }) => {
      await runDevServer(args, { signal, env });
    }),
});

export interface DevRunOptions {
  /** Aborted to stop the server, on SIGTERM or SIGINT. */
  signal: AbortSignal;
  env: Record<string, string | undefined>;
  /** Writes one line to standard output. */
  print?: (line: string) => void;
}

/**
 * Starts the dev server from command-line flags, prints its URL (and the root token when it was
 * generated), and stops it when `signal` aborts.
 *
 * @throws AgentError `config` for an invalid flag or file.
 */
export async function runDevServer(args: Record<string, unknown>, options: DevRunOptions): Promise<void> {
  const { signal, env, print = (line: string) => process.stdout.write(`${line}\n`) } = options;
  const serverOptions = devOptionsFromArgs(args, env);
  const generatedToken = serverOptions.rootToken === undefined;
  serverOptions.rootToken ??= `svt_${randomToken(24)}`;

  const server = await startDevServer(serverOptions);
  print(`ScaiVault dev server listening on ${server.url}`);
  // Printed once on purpose: a generated token is otherwise unknowable, and this is a dev tool.
  if (generatedToken) print(`Root token: ${server.rootToken}`);

  await new Promise<void>((resolve) => {
    if (signal.aborted) return resolve();
    signal.addEventListener("abort", () => resolve(), { once: true });
  });
  await server.stop();
}

/**
 * Turns the dev command's flags and environment into server options, reading the seed and config
 * files.
 *
 * @throws AgentError `config` naming the invalid flag and its value.
 */
export function devOptionsFromArgs(args: Record<string, unknown>, env: Record<string, string | undefined>): DevServerOptions {
  const text = (name: string): string | undefined => (typeof args[name] === "string" ? (args[name] as string) : undefined);
  const options: DevServerOptions = { host: text("host") ?? "127.0.0.1", port: 8200 };

  const port = text("port");
  if (port !== undefined) {
    if (!/^\d{1,5}$/.test(port) || Number(port) > 65535) {
      throw new AgentError("config", `Invalid --port "${port}": expected a whole number from 0 to 65535`);
    }
    options.port = Number(port);
  }

  const ttl = text("token-ttl");
  if (ttl !== undefined) {
    const ms = parseDuration(ttl, "--token-ttl");
    if (ms < 1000) throw new AgentError("config", `Invalid --token-ttl "${ttl}": expected at least 1s`);
    options.tokenTtlSeconds = Math.round(ms / 1000);
  }

  const rateLimits = text("rate-limits");
  if (rateLimits !== undefined && rateLimits !== "on" && rateLimits !== "off") {
    throw new AgentError("config", `Invalid --rate-limits "${rateLimits}": expected on or off`);
  }
  options.rateLimits = rateLimits !== "off";

  const rootToken = text("root-token") ?? (env[ROOT_TOKEN_ENV] || undefined);
  if (rootToken !== undefined) options.rootToken = rootToken;

  const audience = text("audience");
  if (audience !== undefined) options.audience = audience;

  const seedFile = text("seed");
  if (seedFile !== undefined) options.seed = loadSeed(seedFile);

  const configFile = text("config");
  if (configFile !== undefined) options.config = loadDevConfig(configFile);

  const tlsCert = text("tls-cert");
  const tlsKey = text("tls-key");
  if ((tlsCert === undefined) !== (tlsKey === undefined)) {
    throw new AgentError("config", "--tls-cert and --tls-key go together: give both to serve HTTPS, or neither");
  }
  if (tlsCert !== undefined && tlsKey !== undefined) options.tls = { cert: readPem(tlsCert, "--tls-cert"), key: readPem(tlsKey, "--tls-key") };

  options.jwtPublicKeyFile = text("jwt-public-key");
  options.jwksFile = text("jwks");
  return options;
}

function readPem(file: string, flag: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (error) {
    throw new AgentError("config", `Cannot read ${flag} file "${file}": ${(error as NodeJS.ErrnoException).code ?? "error"}`, { cause: error });
  }
}
