/**
 * A stand-in for ScaiKey's OAuth token endpoint, `POST /oauth/token`, so that the agent's
 * client-credentials fallback runs against a real server here. It accepts the clients of the dev
 * config's `clients` key, with the client authenticated in the form or by HTTP Basic, and issues
 * the same opaque tokens as the exchange. Errors follow RFC 6749 section 5.2.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { DevClient } from "./config.ts";
import type { DevApp, DevContext } from "./context.ts";

/** Registers `POST /oauth/token` for the client-credentials grant. */
export function registerScaiKeyRoutes(app: DevApp, context: DevContext): void {
  const { logger, state } = context;
  // A Map, so that ids such as `constructor` or `__proto__` find no inherited property.
  const clients = new Map(Object.entries(context.config.clients ?? {}));

  app.post("/oauth/token", async function issueClientToken(c) {
    const requestId = c.get("requestId");
    const form = await c.req.parseBody().catch(() => ({}) as Record<string, unknown>);

    if (form.grant_type !== "client_credentials") {
      return c.json({ error: "unsupported_grant_type", error_description: "Only grant_type=client_credentials is supported" }, 400);
    }

    const credentials = readClientCredentials(c.req.header("authorization"), form);
    const client = credentials.clientId === undefined ? undefined : clients.get(credentials.clientId);
    const reason = credentials.problem ?? rejectionReason(credentials, client);

    if (reason !== undefined || client === undefined) {
      // The client id is logged to trace the caller, the secret never.
      logger.warn("client credentials rejected", { clientId: credentials.clientId?.slice(0, 128), reason, requestId });
      // RFC 6749 section 5.2: a client that tried Basic gets a matching WWW-Authenticate challenge.
      if (credentials.basic) c.header("WWW-Authenticate", 'Basic realm="scaivault-dev"');
      return c.json({ error: "invalid_client", error_description: "Unknown client, wrong secret or malformed client authentication" }, 401);
    }

    const issued = state.tokens.issue(client.identity, "service_account");
    logger.info("client token issued", { clientId: credentials.clientId, identity: client.identity, requestId });
    return c.json({
      access_token: issued.token,
      token_type: "Bearer",
      expires_in: Math.round((issued.expiresAt - issued.issuedAt) / 1000),
      scope: typeof form.scope === "string" ? form.scope : undefined,
    });
  });
}

// ---------------------------------------------------------------------------------------------

interface ClientCredentials {
  clientId?: string;
  clientSecret?: string;
  /** True when the client authenticated with HTTP Basic. */
  basic: boolean;
  /** Reason the client authentication is malformed, for the log. */
  problem?: string;
}

/** Reads the client from `Authorization: Basic`, which wins when present, or else from the form. */
function readClientCredentials(header: string | undefined, form: Record<string, unknown>): ClientCredentials {
  if (header !== undefined && /^basic(\s|$)/i.test(header)) {
    const basic = parseBasic(header);
    return basic ? { clientId: basic.id, clientSecret: basic.secret, basic: true } : { basic: true, problem: "malformed Basic header" };
  }

  return {
    clientId: typeof form.client_id === "string" ? form.client_id : undefined,
    clientSecret: typeof form.client_secret === "string" ? form.client_secret : undefined,
    basic: false,
  };
}

/**
 * Decodes `Basic base64(id ":" secret)`, where RFC 6749 section 2.3.1 form-encodes id and secret
 * first. Returns undefined for anything malformed: bad base64, no colon, invalid UTF-8 or percent-encoding.
 */
function parseBasic(header: string): { id: string; secret: string } | undefined {
  const match = /^basic\s+([A-Za-z0-9+/]+={0,2})\s*$/i.exec(header);
  if (!match) return undefined;

  let decoded: string;
  try {
    decoded = new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.from(atob(match[1]!), (char) => char.charCodeAt(0)));
  } catch {
    return undefined;
  }

  const colon = decoded.indexOf(":");
  if (colon === -1) return undefined;

  try {
    return { id: formDecode(decoded.slice(0, colon)), secret: formDecode(decoded.slice(colon + 1)) };
  } catch {
    return undefined;
  }
}

function formDecode(text: string): string {
  return decodeURIComponent(text.replace(/\+/g, " "));
}

/** Returns why the client is rejected, or undefined when its id and secret match the config. */
function rejectionReason(credentials: ClientCredentials, client: DevClient | undefined): string | undefined {
  if (credentials.clientId === undefined) return "no client_id";
  if (client === undefined) return "unknown client";
  if (!secretMatches(client, credentials.clientSecret)) return "wrong secret";
  return undefined;
}

/** Compares in constant time, over digests, so that neither the secret nor its length leaks through timing. */
function secretMatches(client: DevClient, secret: string | undefined): boolean {
  if (secret === undefined) return false;

  const digest = (text: string) => createHash("sha256").update(text).digest();
  return timingSafeEqual(digest(client.secret), digest(secret));
}
