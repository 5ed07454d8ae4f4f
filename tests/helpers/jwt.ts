/**
 * JWTs for tests: unsigned (`alg: none`), which the dev server accepts when it verifies nothing,
 * or signed RS256/ES256 with a key from `makeKeyPair`. Signing uses node:crypto, so `makeJwt` is
 * synchronous and independent of the server's WebCrypto verification.
 */
import { generateKeyPairSync, KeyObject, sign } from "node:crypto";

export interface MakeJwtOptions {
  /** Private key to sign with: RSA gives RS256, EC P-256 gives ES256. Unsigned without it. */
  key?: KeyObject | CryptoKey;
  /** `kid` header member. */
  kid?: string;
  /** Header members that replace the computed ones, such as `{ alg: "HS256" }`. */
  header?: Record<string, unknown>;
}

/** A key pair for signing test JWTs, with the public key in the two forms the dev server reads. */
export interface TestKeyPair {
  alg: "RS256" | "ES256";
  privateKey: KeyObject;
  /** `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo), for `--jwt-public-key`. */
  publicKeyPem: string;
  /** The public key as a JWK, for the `keys` array of a JWKS file. */
  publicJwk: JsonWebKey;
}

/**
 * Builds a compact JWT with `claims` as its payload.
 *
 * @example makeJwt({ sub: "system:serviceaccount:billing:billing", aud: ["scaivault"], exp: now + 3600 })
 */
export function makeJwt(claims: Record<string, unknown>, options: MakeJwtOptions = {}): string {
  const key = options.key instanceof KeyObject || options.key === undefined ? options.key : KeyObject.from(options.key);
  const alg = key ? algorithmOf(key) : "none";
  const header = { alg, typ: "JWT", ...(options.kid ? { kid: options.kid } : {}), ...options.header };
  const signingInput = `${base64Url(JSON.stringify(header))}.${base64Url(JSON.stringify(claims))}`;

  if (!key) return `${signingInput}.`;

  // JWS wants ECDSA signatures as raw r || s (IEEE P1363), not DER.
  const signature = sign("sha256", Buffer.from(signingInput), { key, dsaEncoding: "ieee-p1363" });
  return `${signingInput}.${signature.toString("base64url")}`;
}

/** Generates an RSA 2048 (RS256) or EC P-256 (ES256) key pair. */
export function makeKeyPair(alg: "RS256" | "ES256" = "RS256"): TestKeyPair {
  const { privateKey, publicKey } =
    alg === "RS256" ? generateKeyPairSync("rsa", { modulusLength: 2048 }) : generateKeyPairSync("ec", { namedCurve: "P-256" });

  return {
    alg,
    privateKey,
    publicKeyPem: publicKey.export({ type: "spki", format: "pem" }).toString(),
    publicJwk: publicKey.export({ format: "jwk" }) as JsonWebKey,
  };
}

/** Claims of a Kubernetes projected service-account token for `namespace:name`, valid for an hour. */
export function serviceAccountClaims(namespace: string, name: string, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000);

  return {
    iss: "https://kubernetes.default.svc",
    sub: `system:serviceaccount:${namespace}:${name}`,
    aud: ["scaivault"],
    iat: now,
    nbf: now,
    exp: now + 3600,
    ...overrides,
  };
}

// ---------------------------------------------------------------------------------------------

function algorithmOf(key: KeyObject): "RS256" | "ES256" {
  if (key.asymmetricKeyType === "rsa") return "RS256";
  if (key.asymmetricKeyType === "ec") return "ES256";
  throw new Error(`Cannot sign a test JWT with a ${key.asymmetricKeyType} key: use RSA or EC P-256`);
}

function base64Url(text: string): string {
  return Buffer.from(text).toString("base64url");
}
