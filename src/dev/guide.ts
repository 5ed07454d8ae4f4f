/** The Kubernetes guide's billing example, shared by the demo, the runtime check and benchmarks. */
import seed from "./billing-seed.json" with { type: "json" };

/** SECRETS exactly as the guide's manifest writes it: aligned arrows, trailing newline. */
export const GUIDE_SECRETS =
  "environments/production/billing/database -> /run/secrets/db.json\n" +
  "environments/production/billing/stripe   -> /run/secrets/stripe.json\n";

/** Development values for the guide's two billing secrets. */
export const GUIDE_SEED: Record<string, Record<string, unknown>> = seed;

/**
 * Returns an unsigned JWT shaped like a Kubernetes projected service-account token for the
 * service account `namespace/name` with audience `scaivault`. The dev server accepts it because,
 * unless started with a public key or JWKS, it does not verify signatures.
 */
export function projectedToken(options: { lifetimeSeconds?: number; namespace?: string; name?: string; audience?: string } = {}): string {
  const now = Math.floor(Date.now() / 1000);
  const namespace = options.namespace ?? "billing";
  const name = options.name ?? "billing";
  const encode = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");

  const claims = {
    iss: "https://kubernetes.default.svc.cluster.local",
    sub: `system:serviceaccount:${namespace}:${name}`,
    aud: [options.audience ?? "scaivault"],
    iat: now,
    nbf: now,
    exp: now + (options.lifetimeSeconds ?? 3600),
    "kubernetes.io": { namespace, serviceaccount: { name } },
  };
  return `${encode({ alg: "none", typ: "JWT" })}.${encode(claims)}.`;
}
