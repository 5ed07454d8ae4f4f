/**
 * Token sources, each behind `TokenSource`: the exchange of a Kubernetes projected service-account
 * token, ScaiKey client credentials, and a static token. Obtained tokens are reused until the
 * earlier of their expiry less a margin and 50 minutes after they were issued.
 */
import { readFile } from "node:fs/promises";
import { AgentError } from "./errors.ts";
import { errorFields, getLogger } from "./log.ts";
import type { FetchFunction } from "./runtime.ts";
import type { ScaiVaultClient, TokenSource } from "./client.ts";
import { ContractError, exchangeRequest, parseIssuedToken, parseWhoamiExpiry, type IssuedToken } from "./contract.ts";
import { VERSION } from "./version.ts";

const log = getLogger("auth");

/** Maximum reuse of an exchanged token after it was issued. */
export const MAX_TOKEN_REUSE_MS = 50 * 60_000;
/** Margin before expiry at which a token is replaced. Short-lived tokens use a fifth of their life. */
export const TOKEN_EXPIRY_MARGIN_MS = 5 * 60_000;

/**
 * Returns the time until which `token`, issued at `issuedAt`, may be reused: the earlier of
 * (expiry minus min(5 minutes, a fifth of its lifetime)) and 50 minutes after issue.
 */
export function reuseDeadline(token: IssuedToken, issuedAt: number): number {
  const byAge = issuedAt + MAX_TOKEN_REUSE_MS;
  if (token.expiresAt === undefined) return byAge;

  const lifetime = Math.max(0, token.expiresAt - issuedAt);
  const margin = Math.min(TOKEN_EXPIRY_MARGIN_MS, lifetime / 5);
  return Math.min(byAge, token.expiresAt - margin);
}

/**
 * Exchanges `subjectToken` (a projected service-account JWT) for a ScaiVault token. Reads whoami
 * for the expiry when the response states none.
 *
 * @throws AgentError `auth` or `forbidden` naming the identity source, never the token.
 */
export async function exchangeToken(
  client: ScaiVaultClient,
  subjectToken: string,
  options: { audience?: string; role?: string; signal?: AbortSignal },
): Promise<IssuedToken> {
  const now = Date.now();
  const response = await client.withoutTokens().request("POST", "/v1/auth/exchange", {
    route: "auth.exchange",
    auth: false,
    body: exchangeRequest(subjectToken, options.audience, options.role),
    signal: options.signal,
  });

  let issued: IssuedToken;
  try {
    issued = parseIssuedToken(response.body, now);
  } catch (error) {
    throw new AgentError("server", `Unexpected exchange response: ${(error as ContractError).message}`, { requestId: response.requestId });
  }

  if (issued.expiresAt === undefined) {
    const whoami = await client.withTokens(staticTokenSource(issued.token)).whoami();
    try {
      issued = { ...issued, expiresAt: parseWhoamiExpiry(whoami) };
    } catch (error) {
      throw new AgentError("server", `Unexpected whoami response: ${(error as ContractError).message}`);
    }
  }
  return issued;
}

/** Returns a source of one fixed token, such as a personal access token from `SCAIVAULT_TOKEN`. */
export function staticTokenSource(token: string): TokenSource {
  return {
    kind: "static",
    getToken: async () => token,
    invalidate: () => {},
  };
}

/**
 * Exchanges the projected service-account token in `tokenFile`, re-reading the file for every
 * exchange because the kubelet rewrites it before it expires.
 */
export function exchangeTokenSource(
  client: ScaiVaultClient,
  options: { tokenFile: string; audience?: string; role?: string },
): TokenSource {
  return cachedSource("exchange", async (signal) => {
    const subjectToken = await readTokenFile(options.tokenFile, "SCAIVAULT_TOKEN_FILE");
    const issued = await exchangeToken(client, subjectToken, { audience: options.audience, role: options.role, signal });
    log.info("Exchanged service-account token", {
      tokenFile: options.tokenFile,
      identity: issued.identityId,
      expiresAt: issued.expiresAt ? new Date(issued.expiresAt).toISOString() : undefined,
    });
    return issued;
  });
}

export interface ClientCredentials {
  tokenUrl: string;
  clientId?: string;
  clientIdFile?: string;
  clientSecret?: string;
  clientSecretFile?: string;
  scope?: string;
  fetch?: FetchFunction;
}

/** Obtains tokens from ScaiKey's OAuth token endpoint with the client-credentials grant. */
export function clientCredentialsSource(options: ClientCredentials): TokenSource {
  const fetchFunction = options.fetch ?? globalThis.fetch.bind(globalThis);

  return cachedSource("client_credentials", async (signal) => {
    const clientId = options.clientId ?? (await readTokenFile(options.clientIdFile!, "SCAIKEY_CLIENT_ID_FILE"));
    const clientSecret = options.clientSecret ?? (await readTokenFile(options.clientSecretFile!, "SCAIKEY_CLIENT_SECRET_FILE"));
    const form = new URLSearchParams({ grant_type: "client_credentials", client_id: clientId, client_secret: clientSecret });
    if (options.scope) form.set("scope", options.scope);

    const now = Date.now();
    let response: Response;
    try {
      response = await fetchFunction(options.tokenUrl, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", accept: "application/json", "user-agent": `scaivault-agent/${VERSION}` },
        body: form,
        signal: AbortSignal.any([AbortSignal.timeout(15_000), ...(signal ? [signal] : [])]),
      });
    } catch (error) {
      throw new AgentError("unreachable", `Cannot reach the token endpoint ${options.tokenUrl}: ${(error as Error).name}`, { cause: error });
    }

    const body = await response.json().catch(() => undefined);
    if (!response.ok) {
      let code: "auth" | "forbidden" | "server" = "server";
      if (response.status === 400 || response.status === 401) code = "auth";
      if (response.status === 403) code = "forbidden";
      throw new AgentError(code, `Token endpoint ${options.tokenUrl} rejected client "${clientId}": ${response.status}`, { status: response.status });
    }

    try {
      const issued = parseIssuedToken(body, now);
      log.info("Obtained token with client credentials", { clientId, tokenUrl: options.tokenUrl });
      return issued;
    } catch (error) {
      throw new AgentError("server", `Unexpected token endpoint response: ${(error as Error).message}`);
    }
  });
}

/**
 * Tries each source in order and uses the first that yields a token: the exchange, then client
 * credentials when the exchange is refused or its token file is missing.
 */
export function fallbackTokenSource(sources: TokenSource[]): TokenSource {
  let active = 0;

  return {
    kind: sources.map((source) => source.kind).join("+"),
    async getToken(signal) {
      let lastError: unknown;
      for (let index = 0; index < sources.length; index++) {
        const source = sources[(active + index) % sources.length]!;
        try {
          const token = await source.getToken(signal);
          active = (active + index) % sources.length;
          return token;
        } catch (error) {
          lastError = error;
          const canFallBack = error instanceof AgentError && ["auth", "forbidden", "config"].includes(error.code);
          if (!canFallBack || index === sources.length - 1) throw error;
          log.warn("Token source failed, trying the next one", { source: source.kind, ...errorFields(error) });
        }
      }
      throw lastError;
    },
    invalidate() {
      for (const source of sources) source.invalidate();
    },
  };
}

// ---------------------------------------------------------------------------------------------

/** Wraps `obtain` with the reuse rule and one shared in-flight request. */
function cachedSource(kind: string, obtain: (signal?: AbortSignal) => Promise<IssuedToken>): TokenSource {
  let cached: { token: string; reuseUntil: number } | undefined;
  let pending: Promise<string> | undefined;

  return {
    kind,
    getToken(signal) {
      if (cached && Date.now() < cached.reuseUntil) return Promise.resolve(cached.token);

      pending ??= (async () => {
        try {
          const issuedAt = Date.now();
          const issued = await obtain(signal);
          cached = { token: issued.token, reuseUntil: reuseDeadline(issued, issuedAt) };
          return issued.token;
        } finally {
          pending = undefined;
        }
      })();
      return pending;
    },
    invalidate() {
      cached = undefined;
    },
  };
}

async function readTokenFile(path: string, variable: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "error";
    throw new AgentError("auth", `Cannot read ${variable} "${path}": ${code}. Mount the file or set ${variable} to its path`, {
      cause: error,
    });
  }

  const value = text.trim();
  if (value === "") throw new AgentError("auth", `${variable} "${path}" is empty`);
  return value;
}
