/** Builds the ScaiVault client and its token source from connection settings. */
import { existsSync } from "node:fs";
import { AgentError } from "./errors.ts";
import { clientCredentialsSource, exchangeTokenSource, fallbackTokenSource, staticTokenSource } from "./auth.ts";
import { ScaiVaultClient, type RequestRecord, type TokenSource } from "./client.ts";
import type { ConnectionConfig } from "./config.ts";
import { createFetch, type FetchFunction } from "./runtime.ts";

export interface ConnectOptions {
  /** Ends all requests: the command's deadline or shutdown. */
  signal?: AbortSignal;
  onRequest?: (record: RequestRecord) => void;
}

/**
 * Returns a client with the configured token source. `SCAIVAULT_TOKEN` comes first. Otherwise the
 * exchange of `SCAIVAULT_TOKEN_FILE` is used, and ScaiKey client credentials are its fallback when
 * they are set too.
 *
 * @throws AgentError `config` when no token source is configured or the CA file is unreadable.
 */
export function connect(config: ConnectionConfig, options: ConnectOptions = {}): ScaiVaultClient {
  let fetchFunction;
  try {
    fetchFunction = createFetch(config.caFile);
  } catch (error) {
    throw new AgentError("config", `Cannot read SCAIVAULT_CA_FILE "${config.caFile}": ${(error as NodeJS.ErrnoException).code ?? "error"}`, {
      cause: error,
    });
  }

  const base = new ScaiVaultClient({
    baseUrl: config.url,
    tenantId: config.tenantId,
    fetch: fetchFunction,
    signal: options.signal,
    maxAttempts: config.maxAttempts,
    requestTimeoutMs: config.requestTimeoutMs,
    onRequest: options.onRequest,
  });
  return base.withTokens(tokenSourceFor(config, base, fetchFunction));
}

/** Chooses the token source for `config`; see `connect`. */
export function tokenSourceFor(config: ConnectionConfig, client: ScaiVaultClient, fetchFunction: FetchFunction): TokenSource {
  if (config.token) return staticTokenSource(config.token);

  const hasClientCredentials =
    (config.clientId !== undefined || config.clientIdFile !== undefined) &&
    (config.clientSecret !== undefined || config.clientSecretFile !== undefined);
  const credentials = hasClientCredentials
    ? clientCredentialsSource({
        tokenUrl: config.tokenUrl,
        clientId: config.clientId,
        clientIdFile: config.clientIdFile,
        clientSecret: config.clientSecret,
        clientSecretFile: config.clientSecretFile,
        scope: config.scope,
        fetch: fetchFunction,
      })
    : undefined;

  const useExchange = config.tokenFileExplicit || existsSync(config.tokenFile) || !credentials;
  const exchange = useExchange
    ? exchangeTokenSource(client, { tokenFile: config.tokenFile, audience: config.audience, role: config.role })
    : undefined;

  if (exchange && credentials) return fallbackTokenSource([exchange, credentials]);
  return exchange ?? credentials!;
}
