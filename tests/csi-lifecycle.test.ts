/**
 * The provider's life cycle against the real dev server. Covered: Mount calls cut off by a stop, a
 * second provider on a live socket, and readiness after the socket file vanished. Also the version
 * key kept across restarts, and connections that break the `:authority` rewriter's HTTP/2 limits.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, unlinkSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseAllowedUrls } from "../src/csi/allowed-urls.ts";
import type { CsiConfig } from "../src/csi/config.ts";
import { AuthorityRewriter, FrameLimitError, MAX_HEADER_BLOCK_BYTES } from "../src/csi/authority.ts";
import { DEFAULT_MAX_RESPONSE_BYTES } from "../src/csi/mount.ts";
import { startCsiProvider, versionKeyPath } from "../src/csi/provider.ts";
import { startDevServer, type DevServer } from "../src/dev/server.ts";
import { configureLogging } from "../src/log.ts";
import { callError, connectCsi, mountAttributes } from "./helpers/csi.ts";

const UNAVAILABLE = 14;
const DATABASE = "environments/production/billing/database";
const STRIPE = "environments/production/billing/stripe";
const SEED = {
  [DATABASE]: { username: "billing", password: "life-db-Pa55-3Ke" },
  [STRIPE]: { secret_key: "sk_live_life_7Yt" },
};
const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

let dev: DevServer;
let dir: string;
const logs: string[] = [];

beforeAll(async () => {
  configureLogging({ level: "debug", format: "json", write: (line) => logs.push(line) });
  dev = await startDevServer({ port: 0, seed: SEED, rateLimits: false });
  dir = mkdtempSync(join(tmpdir(), "csi-life-"));
});

afterAll(async () => {
  await dev.stop();
  rmSync(dir, { recursive: true, force: true });
  configureLogging({ level: "warn" });
});

function config(name: string, overrides: Partial<CsiConfig> = {}): CsiConfig {
  return {
    socketPath: join(dir, name, "scaivault.sock"),
    socketMode: 0o600,
    health: { hostname: "127.0.0.1", port: 0 },
    allowedUrls: parseAllowedUrls(dev.url),
    mountTimeoutMs: 20_000,
    mountConcurrency: 4,
    maxResponseBytes: DEFAULT_MAX_RESPONSE_BYTES,
    maxMounts: 4,
    mountQueue: 32,
    requestTimeoutMs: 15_000,
    maxAttempts: 1,
    ...overrides,
  };
}

async function addFault(fault: Record<string, unknown>): Promise<void> {
  await fetch(`${dev.url}/v1/dev/faults`, {
    method: "POST",
    headers: { authorization: `Bearer ${dev.rootToken}`, "content-type": "application/json" },
    body: JSON.stringify(fault),
  });
}

async function clearFaults(): Promise<void> {
  await fetch(`${dev.url}/v1/dev/faults`, { method: "DELETE", headers: { authorization: `Bearer ${dev.rootToken}` } });
}

/** Sends `bytes` on a fresh connection and resolves once the provider closes it, or "open" after `waitMs`. */
function sendRaw(socketPath: string, bytes: Buffer, waitMs = 5_000): Promise<"closed" | "open"> {
  return new Promise((resolve) => {
    const socket = connect(socketPath, () => socket.write(bytes));
    const timer = setTimeout(() => {
      socket.destroy();
      resolve("open");
    }, waitMs);
    socket.on("error", () => undefined);
    socket.on("close", () => {
      clearTimeout(timer);
      resolve("closed");
    });
    socket.resume();
  });
}

function frameHeader(length: number, type: number, flags: number, stream: number): Buffer {
  const header = Buffer.alloc(9);
  header.writeUIntBE(length, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(stream, 5);
  return header;
}

describe("csi provider life cycle", () => {
  test("a stop answers Mount calls past the grace period with UNAVAILABLE", async () => {
    const provider = await startCsiProvider(config("stop"));
    const client = connectCsi(join(dir, "stop", "scaivault.sock"));
    await addFault({ method: "POST", path_prefix: "/v1/secrets/batch", delay_ms: 8_000, count: 1 });
    try {
      const pending = callError(() => client.mount({ attributes: mountAttributes({ baseUrl: dev.url }) }));
      for (let tries = 0; tries < 100 && provider.mounter.limiter.stats().active === 0; tries++) await Bun.sleep(20);
      await Bun.sleep(200);

      await provider.stop(300);
      const error = await pending;

      expect(error.code).toBe(UNAVAILABLE);
      expect(error.details).toContain("The ScaiVault provider stopped before the Mount finished");
      expect(provider.metrics.mountsAborted.get()).toBe(1);
    } finally {
      client.close();
      await clearFaults();
    }
  }, 30_000);

  test("a second provider on a live socket fails and leaves the socket alone", async () => {
    const first = await startCsiProvider(config("twice"));
    try {
      await expect(startCsiProvider(config("twice"))).rejects.toThrow("another process accepts connections on it");

      const client = connectCsi(join(dir, "twice", "scaivault.sock"));
      try {
        expect((await client.mount({ attributes: mountAttributes({ baseUrl: dev.url }) })).files).toHaveLength(2);
      } finally {
        client.close();
      }
    } finally {
      await first.stop();
    }
  });

  test("a stale socket is replaced", async () => {
    const socketPath = join(dir, "stale", "scaivault.sock");
    mkdirSync(join(dir, "stale"), { recursive: true });
    // A process that exits without closing its listener leaves a socket file that refuses connections.
    execFileSync(process.execPath, ["-e", `require("node:net").createServer().listen(${JSON.stringify(socketPath)}, () => process.exit(0))`]);
    expect(statSync(socketPath).isSocket()).toBe(true);

    const provider = await startCsiProvider(config("stale"));
    const client = connectCsi(socketPath);
    try {
      expect(logs.some((line) => line.includes('"msg":"Removed stale socket"') && line.includes('"probe":"stale"'))).toBe(true);
      expect((await client.version()).version).toBe("v1alpha1");
    } finally {
      client.close();
      await provider.stop();
    }
  });

  test("readiness fails once the socket file is gone", async () => {
    const provider = await startCsiProvider(config("ready"));
    try {
      expect((await fetch(`${provider.healthUrl}/readyz`)).status).toBe(200);
      unlinkSync(join(dir, "ready", "scaivault.sock"));
      expect((await fetch(`${provider.healthUrl}/readyz`)).status).toBe(503);
    } finally {
      await provider.stop();
    }
  });

  test("object versions stay the same across a restart", async () => {
    const attributes = mountAttributes({ baseUrl: dev.url });
    const first = await startCsiProvider(config("restart"));
    const client = connectCsi(join(dir, "restart", "scaivault.sock"));
    const before = await client.mount({ attributes });
    client.close();
    await first.stop();

    const keyFile = versionKeyPath(join(dir, "restart", "scaivault.sock"));
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    expect(readFileSync(keyFile, "utf8")).toMatch(/^[0-9a-f]{64}\n$/);

    const second = await startCsiProvider(config("restart"));
    const again = connectCsi(join(dir, "restart", "scaivault.sock"));
    try {
      expect((await again.mount({ attributes })).objectVersion).toEqual(before.objectVersion);
    } finally {
      again.close();
      await second.stop();
    }
  });

  test("a frame header claiming 16 MB closes the connection", async () => {
    const provider = await startCsiProvider(config("frame"));
    try {
      const result = await sendRaw(join(dir, "frame", "scaivault.sock"), Buffer.concat([PREFACE, frameHeader(16 * 1024 * 1024 - 1, 0x0, 0, 1)]));
      expect(result).toBe("closed");
      expect(provider.metrics.connectionsRejected.get()).toBe(1);

      // Other connections still work.
      const client = connectCsi(join(dir, "frame", "scaivault.sock"));
      try {
        expect((await client.version()).version).toBe("v1alpha1");
      } finally {
        client.close();
      }
    } finally {
      await provider.stop();
    }
  });

  test("a CONTINUATION flood closes the connection", async () => {
    const provider = await startCsiProvider(config("flood"));
    try {
      const payload = Buffer.alloc(16_384, 0x41);
      const frames = [PREFACE, frameHeader(payload.length, 0x1, 0, 1), payload];
      for (let index = 0; index < 8; index++) frames.push(frameHeader(payload.length, 0x9, 0, 1), payload);

      expect(await sendRaw(join(dir, "flood", "scaivault.sock"), Buffer.concat(frames))).toBe("closed");
      expect(provider.metrics.connectionsRejected.get()).toBe(1);
    } finally {
      await provider.stop();
    }
  });

  test("rewriter limits held header bytes and frame sizes", () => {
    const rewriter = new AuthorityRewriter();
    const payload = Buffer.alloc(16_384);
    rewriter.push(Buffer.concat([PREFACE, frameHeader(payload.length, 0x1, 0, 1), payload]));

    let thrown: unknown;
    try {
      for (let index = 0; index * payload.length <= MAX_HEADER_BLOCK_BYTES; index++) rewriter.push(Buffer.concat([frameHeader(payload.length, 0x9, 0, 1), payload]));
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(FrameLimitError);
    expect(() => new AuthorityRewriter().push(Buffer.concat([PREFACE, frameHeader(16_385, 0x0, 0, 1)]))).toThrow(FrameLimitError);
  });
});
