/**
 * Object versions of a Mount response. The driver compares them with the versions of the
 * previous Mount to decide which files changed, and records them in SecretProviderClassPodStatus,
 * which anyone allowed to read that resource can see.
 *
 * A version is `<ScaiVault version>-<16 hex digits>`, the digits being an HMAC-SHA256 over the
 * object's settings (path, file, mode) and its rendered bytes. So it changes whenever the file
 * would change: a secret deleted and recreated at version 1 with new content, another field,
 * format or encoding, a new mode. It stays the same while the file stays the same.
 *
 * The HMAC key, rather than a plain hash, matters for low-entropy secrets such as PINs: a plain
 * SHA-256 visible in the pod status could be brute-forced. The key is kept in a file next to the
 * socket (the provider directory on the node), so versions survive provider restarts and rolling
 * updates on that node. When that file cannot be written, a random key lives in memory only,
 * and every file is rewritten once after a restart.
 */
import { createHmac, randomBytes } from "node:crypto";
import { chmod, mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { getLogger, errorFields } from "../log.ts";

const log = getLogger("csi");

/** Bytes of a version key. */
const KEY_BYTES = 32;

/** What decides an object's version. */
export interface VersionInput {
  secretVersion: number;
  path: string;
  file: string;
  mode: number;
  contents: Uint8Array;
}

/** Returns the object version of one rendered file under `key`. */
export function objectVersion(key: Uint8Array, input: VersionInput): string {
  const hmac = createHmac("sha256", key);
  // Length-prefixed fields, so that no two different inputs produce the same HMAC input.
  for (const part of [input.path, input.file, String(input.mode)]) {
    const bytes = Buffer.from(part, "utf8");
    hmac.update(`${bytes.length}:`).update(bytes);
  }
  hmac.update(`${input.contents.byteLength}:`).update(input.contents);
  return `${input.secretVersion}-${hmac.digest("hex").slice(0, 16)}`;
}

/** Returns a fresh random key, for tests and as the fallback of `loadVersionKey`. */
export function randomVersionKey(): Uint8Array {
  return randomBytes(KEY_BYTES);
}

/**
 * Reads the version key from `file`, creating the file with a random key (mode 0600) when it is
 * missing or malformed. Falls back to an in-memory key, with a warning, when the file cannot be
 * written.
 */
export async function loadVersionKey(file: string): Promise<Uint8Array> {
  try {
    const text = (await readFile(file, "utf8")).trim();
    if (/^[0-9a-f]{64}$/.test(text)) return Buffer.from(text, "hex");
    log.warn("Version key file is malformed, replacing it", { file });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") log.warn("Cannot read the version key file, replacing it", { file, ...errorFields(error) });
  }

  const key = randomVersionKey();
  const temporary = `${file}.${process.pid}.tmp`;
  try {
    await mkdir(dirname(file), { recursive: true, mode: 0o755 });
    await writeFile(temporary, `${Buffer.from(key).toString("hex")}\n`, { mode: 0o600 });
    await chmod(temporary, 0o600);
    await rename(temporary, file);
    log.info("Created the object version key", { file });
  } catch (error) {
    log.warn("Cannot write the version key file; object versions change when the provider restarts", { file, ...errorFields(error) });
  }
  return key;
}
