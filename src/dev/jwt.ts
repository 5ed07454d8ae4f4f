/**
 * JSON Web Tokens for `POST /v1/auth/exchange`: decoding (RFC 7519, JWS compact form) and, when
 * the dev server has a key, RS256 and ES256 signature checks with WebCrypto. Messages never quote
 * the token itself.
 */
import { readFileSync } from "node:fs";
import { AgentError } from "../errors.ts";

/** A decoded JWT. */
export interface DecodedJwt {
  header: Record<string, unknown>;
  payload: Record<string, unknown>;
  /** `base64url(header) "." base64url(payload)`: the bytes the signature covers. */
  signingInput: Uint8Array<ArrayBuffer>;
  signature: Uint8Array<ArrayBuffer>;
}

/** A token that does not decode or verify. The message is safe to send back to the client. */
export class JwtError extends Error {
  override readonly name = "JwtError";
}

/** Checks JWT signatures against the keys of a PEM file or a JWKS file. */
export interface JwtVerifier {
  /** Source of the keys, for logs. */
  readonly source: string;
  /**
   * Imports the keys. `verify` calls it too, so the server only calls it to fail at start.
   *
   * @throws AgentError `config` when no key can be imported.
   */
  ready(): Promise<void>;
  /** @throws JwtError when the algorithm is not RS256 or ES256, no key fits or the signature is bad. */
  verify(token: DecodedJwt): Promise<void>;
}

/**
 * Splits and decodes a JWT without checking its signature.
 *
 * @throws JwtError when the token is not three base64url parts with JSON object header and payload.
 */
export function decodeJwt(token: string): DecodedJwt {
  const parts = token.split(".");
  if (parts.length !== 3) throw new JwtError(`expected 3 dot-separated parts, found ${parts.length}`);

  const [headerPart, payloadPart, signaturePart] = parts as [string, string, string];
  const header = decodeJsonPart(headerPart, "header");
  const payload = decodeJsonPart(payloadPart, "payload");

  return {
    header,
    payload,
    signingInput: new TextEncoder().encode(`${headerPart}.${payloadPart}`),
    signature: decodeBase64Url(signaturePart, "signature"),
  };
}

/**
 * Creates a verifier from a PEM public key file (`-----BEGIN PUBLIC KEY-----`, RSA or EC P-256)
 * or a JWKS file (`{"keys": [...]}`), or returns undefined when neither is given. The files are
 * read now, so a missing file fails at start.
 *
 * @throws AgentError `config` when both are given or a file cannot be read or parsed.
 */
export function createJwtVerifier(options: { publicKeyFile?: string; jwksFile?: string }): JwtVerifier | undefined {
  const { publicKeyFile, jwksFile } = options;
  if (publicKeyFile && jwksFile) {
    throw new AgentError("config", "Use either a JWT public key file or a JWKS file, not both");
  }

  if (publicKeyFile) {
    const der = readPemPublicKey(publicKeyFile);
    return buildVerifier(`public key file "${publicKeyFile}"`, () => importPemKey(der, publicKeyFile));
  }

  if (jwksFile) {
    const jwks = readJwks(jwksFile);
    return buildVerifier(`JWKS file "${jwksFile}"`, () => importJwks(jwks, jwksFile));
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------

type Algorithm = "RS256" | "ES256";

interface VerificationKey {
  alg: Algorithm;
  kid?: string;
  key: CryptoKey;
}

const IMPORT_PARAMS: Record<Algorithm, RsaHashedImportParams | EcKeyImportParams> = {
  RS256: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" },
  ES256: { name: "ECDSA", namedCurve: "P-256" },
};

const VERIFY_PARAMS: Record<Algorithm, AlgorithmIdentifier | EcdsaParams> = {
  RS256: { name: "RSASSA-PKCS1-v1_5" },
  ES256: { name: "ECDSA", hash: "SHA-256" },
};

function buildVerifier(source: string, importKeys: () => Promise<VerificationKey[]>): JwtVerifier {
  let keys: Promise<VerificationKey[]> | undefined;

  function ready(): Promise<VerificationKey[]> {
    keys ??= importKeys();
    return keys;
  }

  return {
    source,
    ready: async () => {
      await ready();
    },
    async verify(token: DecodedJwt): Promise<void> {
      const alg = token.header.alg;
      if (alg !== "RS256" && alg !== "ES256") {
        throw new JwtError(`algorithm ${JSON.stringify(alg)} is not accepted, use RS256 or ES256`);
      }

      const kid = typeof token.header.kid === "string" ? token.header.kid : undefined;
      const candidates = (await ready()).filter(
        (key) => key.alg === alg && (kid === undefined || key.kid === undefined || key.kid === kid),
      );
      if (candidates.length === 0) throw new JwtError(`no ${alg} key${kid ? ` with kid "${kid}"` : ""} is configured`);

      for (const candidate of candidates) {
        if (await crypto.subtle.verify(VERIFY_PARAMS[alg], candidate.key, token.signature, token.signingInput)) return;
      }
      throw new JwtError("the signature does not verify");
    },
  };
}

function readPemPublicKey(file: string): Uint8Array<ArrayBuffer> {
  const text = readConfigFile(file, "JWT public key");
  const match = /-----BEGIN ([A-Z ]+)-----([\s\S]*?)-----END \1-----/.exec(text);

  if (!match) throw new AgentError("config", `Cannot read JWT public key file "${file}": no PEM block found`);
  if (match[1] !== "PUBLIC KEY") {
    throw new AgentError(
      "config",
      `Cannot use JWT public key file "${file}": found "${match[1]}", expected "PUBLIC KEY" (SubjectPublicKeyInfo); ` +
        "convert it with `openssl pkey -pubout` or `openssl x509 -pubkey -noout`",
    );
  }
  return Uint8Array.from(atob(match[2]!.replace(/\s+/g, "")), (char) => char.charCodeAt(0));
}

async function importPemKey(der: Uint8Array<ArrayBuffer>, file: string): Promise<VerificationKey[]> {
  for (const alg of ["RS256", "ES256"] as const) {
    try {
      const key = await crypto.subtle.importKey("spki", der, IMPORT_PARAMS[alg], false, ["verify"]);
      return [{ alg, key }];
    } catch {
      // Not a key of this algorithm: try the next one.
    }
  }
  throw new AgentError("config", `Cannot use JWT public key file "${file}": it is neither an RSA nor an EC P-256 key`);
}

function readJwks(file: string): JsonWebKey[] {
  const text = readConfigFile(file, "JWKS");

  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new AgentError("config", `Cannot parse JWKS file "${file}": it is not valid JSON`);
  }

  const keys = (value as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys) || keys.length === 0) {
    throw new AgentError("config", `Invalid JWKS file "${file}": expected {"keys": [...]} with at least one key`);
  }
  return keys as JsonWebKey[];
}

async function importJwks(jwks: JsonWebKey[], file: string): Promise<VerificationKey[]> {
  const imported: VerificationKey[] = [];
  const problems: string[] = [];

  for (const [index, jwk] of jwks.entries()) {
    const kid = typeof (jwk as { kid?: unknown }).kid === "string" ? (jwk as { kid: string }).kid : undefined;
    let alg: Algorithm | undefined;
    if (jwk.kty === "RSA") alg = "RS256";
    if (jwk.kty === "EC" && jwk.crv === "P-256") alg = "ES256";
    if (!alg) {
      problems.push(`key ${index}: kty ${JSON.stringify(jwk.kty)} / crv ${JSON.stringify(jwk.crv)} is not RSA or EC P-256`);
      continue;
    }

    // Only the public members: a stray `alg`, `use` or `key_ops` member can make importKey fail.
    const members = alg === "RS256" ? { kty: "RSA", n: jwk.n, e: jwk.e } : { kty: "EC", crv: "P-256", x: jwk.x, y: jwk.y };
    try {
      imported.push({ alg, kid, key: await crypto.subtle.importKey("jwk", members, IMPORT_PARAMS[alg], false, ["verify"]) });
    } catch (error) {
      problems.push(`key ${index}: ${(error as Error).message}`);
    }
  }

  if (imported.length === 0) {
    throw new AgentError("config", `Cannot use JWKS file "${file}": no usable key (${problems.join("; ")})`);
  }
  return imported;
}

function readConfigFile(file: string, kind: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (error) {
    throw new AgentError("config", `Cannot read ${kind} file "${file}": ${(error as Error).message}`, { cause: error });
  }
}

function decodeJsonPart(part: string, name: string): Record<string, unknown> {
  const bytes = decodeBase64Url(part, name);

  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new JwtError(`the ${name} is not JSON`);
  }

  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new JwtError(`the ${name} is not a JSON object`);
  }
  return value as Record<string, unknown>;
}

function decodeBase64Url(part: string, name: string): Uint8Array<ArrayBuffer> {
  if (!/^[A-Za-z0-9_-]*$/.test(part)) throw new JwtError(`the ${name} is not base64url`);

  const base64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
  try {
    return Uint8Array.from(atob(base64), (char) => char.charCodeAt(0));
  } catch {
    throw new JwtError(`the ${name} is not base64url`);
  }
}
