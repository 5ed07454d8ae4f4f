/**
 * A stand-in for ScaiKey's OAuth token endpoint, `POST /oauth/token`, so that the agent's
 * client-credentials fallback runs against a real server here. It accepts the clients of the dev
 * config's `clients` key, with the client authenticated in the form or by HTTP Basic, and issues
 * the same opaque tokens as the exchange. Errors follow RFC 6749 section 5.2.
 */
import type { DevApp, DevContext } from "./context.ts";

export function registerScaiKeyRoutes(app: DevApp, context: DevContext): void {
  const clients = context.config.clients ?? {};

  app.post("/oauth/token", async function issueClientToken(c) {
    const form = await c.req.parseBody().catch(() => ({}) as Record<string, unknown>);
    const basic = parseBasic(c.req.header("authorization"));
    const clientId = basic?.id ?? (typeof form.client_id === "string" ? form.client_id : undefined);
    const clientSecret = basic?.secret ?? (typeof form.client_secret === "string" ? form.client_secret : undefined);

    if (form.grant_type !== "client_credentials") {
      return c.json({ error: "unsupported_grant_type", error_description: "Only grant_type=client_credentials is supported" }, 400);
    }

    const client = clientId === undefined ? undefined : clients[clientId];
    if (!client || client.secret !== clientSecret) {
      context.logger.warn("client credentials rejected", { clientId, requestId: c.get("requestId") });
      return c.json({ error: "invalid_client", error_description: "Unknown client or wrong secret" }, 401);
    }

    const issued = context.state.tokens.issue(client.identity, "service_account");
    context.logger.info("client token issued", { clientId, identity: client.identity, requestId: c.get("requestId") });
    return c.json({
      access_token: issued.token,
      token_type: "Bearer",
      expires_in: Math.round((issued.expiresAt - issued.issuedAt) / 1000),
      scope: typeof form.scope === "string" ? form.scope : undefined,
    });
  });
}

function parseBasic(header: string | undefined): { id: string; secret: string } | undefined {
  if (!header?.toLowerCase().startsWith("basic ")) return undefined;

  const decoded = Buffer.from(header.slice(6).trim(), "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  if (colon === -1) return undefined;
  return { id: decodeURIComponent(decoded.slice(0, colon)), secret: decodeURIComponent(decoded.slice(colon + 1)) };
}
