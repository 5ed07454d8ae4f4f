/**
 * `csi-provider` as a real child process: the socket's life cycle (stale socket removed, mode set,
 * file removed on SIGTERM), a Mount in flight finishing during shutdown, the health endpoint, and
 * the same provider under Deno.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDevServer, type DevServer } from "../src/dev/server.ts";
import { configureLogging } from "../src/log.ts";
import { baseEnv, logLines, MOD, spawnCli } from "./helpers/cli.ts";
import { connectCsi, mountAttributes } from "./helpers/csi.ts";

const SEED = {
  "environments/production/billing/database": { username: "billing", password: "e2e-db-Pa55w0rd-1Qa" },
  "environments/production/billing/stripe": { secret_key: "sk_live_e2e_Str1pe_5Tg" },
};

let dev: DevServer;
let scratch: string;
let caseNumber = 0;
const outputs: string[] = [];

beforeAll(async () => {
  configureLogging({ level: "warn" });
  dev = await startDevServer({ port: 0, seed: SEED });
  scratch = mkdtempSync(join(tmpdir(), "csi-e2e-"));
});

afterAll(async () => {
  await dev.stop();
  rmSync(scratch, { recursive: true, force: true });
});

describe("csi-provider process", () => {
  test("csi-provider replaces a stale socket and sets its mode", async () => {
    const socket = socketPath();
    await leaveStaleSocket(socket);
    expect(lstatSync(socket).isSocket()).toBe(true);

    const provider = await startProvider(socket, { CSI_SOCKET_MODE: "0660" });
    const client = connectCsi(socket);
    try {
      expect((lstatSync(socket).mode & 0o777).toString(8)).toBe("660");
      expect((await client.version()).version).toBe("v1alpha1");
      expect(provider.stderr()).toContain('"msg":"Removed stale socket"');
    } finally {
      client.close();
      await provider.stop();
    }
  });

  test("csi-provider refuses a path that is not a socket", async () => {
    const socket = socketPath();
    writeFileSync(socket, "not a socket");

    const child = spawnCli(["csi-provider"], providerEnv(socket));
    const { code, stderr } = await finished(child);

    expect(code).toBe(2);
    expect(stderr).toContain(`Cannot listen on \\"${socket}\\": it exists and is not a socket; remove it or choose another CSI_SOCKET`);
  });

  test("csi-provider finishes a Mount in flight on SIGTERM and removes the socket", async () => {
    const socket = socketPath();
    const provider = await startProvider(socket);
    const client = connectCsi(socket);

    await fetch(`${dev.url}/v1/dev/faults`, {
      method: "POST",
      headers: { authorization: `Bearer ${dev.rootToken}`, "content-type": "application/json" },
      body: JSON.stringify({ method: "POST", path_prefix: "/v1/secrets/batch", delay_ms: 1500, count: 1 }),
    });

    const mount = client.mount({ attributes: mountAttributes({ baseUrl: dev.url }) });
    // The exchange comes before the delayed batch read: once it is logged, the Mount is in flight.
    await waitFor(() => provider.stderr().includes('"msg":"Exchanged service-account token"'));
    provider.child.kill("SIGTERM");

    const response = await mount;
    const { code } = await provider.exited;
    client.close();

    expect(response.files.map((file) => file.path)).toEqual(["db.json", "stripe.json"]);
    expect(code).toBe(0);
    expect(existsSync(socket)).toBe(false);
    expect(provider.stderr()).toContain('"msg":"CSI provider stopped"');
  });

  test("csi-provider serves health and metrics", async () => {
    const socket = socketPath();
    const provider = await startProvider(socket);
    try {
      const url = logLines(provider.stderr()).find((line) => line.msg === "Health server listening")!.url as string;
      const health = await fetch(`${url}/healthz`);
      const metrics = await (await fetch(`${url}/metrics`)).text();

      expect(health.status).toBe(200);
      expect(await health.json()).toEqual({ status: "ok" });
      expect(metrics).toContain("# TYPE scaivault_csi_mounts_total counter");
    } finally {
      await provider.stop();
    }
  });

  test.skipIf(!onPath("deno"))("csi-provider mounts under Deno", async () => {
    const socket = socketPath();
    const provider = await startProvider(socket, {}, ["deno", "run", "-A", MOD, "csi-provider"]);
    const client = connectCsi(socket);
    try {
      const response = await client.mount({ attributes: mountAttributes({ baseUrl: dev.url }) });

      expect(response.objectVersion.map((entry) => entry.id)).toEqual(["db.json", "stripe.json"]);
      expect(Buffer.from(response.files[1]!.contents).toString()).toBe("sk_live_e2e_Str1pe_5Tg");
      expect(provider.stderr()).toContain('"runtime":"deno ');
    } finally {
      client.close();
      await provider.stop();
    }
  });

  test("csi-provider output holds no secret value", () => {
    const text = outputs.join("\n");

    expect(text.length).toBeGreaterThan(0);
    for (const value of ["e2e-db-Pa55w0rd-1Qa", "sk_live_e2e_Str1pe_5Tg", dev.rootToken]) expect(text).not.toContain(value);
    expect(text).not.toMatch(/svt_[A-Za-z0-9_-]{16}|eyJ[A-Za-z0-9_-]{10}/);
  });
});

// ---------------------------------------------------------------------------------------------

interface ProviderProcess {
  child: ChildProcess;
  stderr(): string;
  exited: Promise<{ code: number | null; stderr: string }>;
  stop(): Promise<void>;
}

function socketPath(): string {
  const dir = join(scratch, `case-${++caseNumber}`);
  mkdirSync(dir, { recursive: true });
  return join(dir, "scaivault.sock");
}

function providerEnv(socket: string, extra: Record<string, string> = {}): Record<string, string> {
  return { CSI_SOCKET: socket, SCAIVAULT_ALLOWED_URLS: dev.url, HEALTH_ADDR: "127.0.0.1:0", LOG_FORMAT: "json", ...extra };
}

/** Starts the provider and resolves once it logs that it started. */
async function startProvider(socket: string, extra: Record<string, string> = {}, command?: string[]): Promise<ProviderProcess> {
  const child = command
    ? spawn(command[0]!, command.slice(1), { env: baseEnv(providerEnv(socket, extra)), stdio: ["ignore", "pipe", "pipe"] })
    : spawnCli(["csi-provider"], providerEnv(socket, extra));
  const exited = finished(child);
  let stderr = "";
  child.stderr!.on("data", (chunk) => (stderr += chunk));

  const deadline = Date.now() + 30_000;
  while (!stderr.includes('"msg":"CSI provider started"')) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`provider did not start:\n${stderr}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }

  return {
    child,
    stderr: () => stderr,
    exited,
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      await exited;
    },
  };
}

async function waitFor(condition: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function finished(child: ChildProcess): Promise<{ code: number | null; stderr: string }> {
  let stderr = "";
  child.stderr!.on("data", (chunk) => (stderr += chunk));
  const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);

  return new Promise((resolve) => {
    child.on("close", (code) => {
      clearTimeout(timer);
      outputs.push(stderr);
      resolve({ code, stderr });
    });
  });
}

/** Leaves a socket file with no listener behind, as a provider killed with SIGKILL does. */
async function leaveStaleSocket(socket: string): Promise<void> {
  const script = `require("node:net").createServer().listen(${JSON.stringify(socket)}, () => console.log("up"))`;
  const child = spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "ignore"] });
  await new Promise<void>((resolve) => child.stdout!.once("data", () => resolve()));
  child.kill("SIGKILL");
  await new Promise((resolve) => child.once("close", resolve));
}

function onPath(command: string): boolean {
  return (process.env.PATH ?? "").split(":").some((dir) => existsSync(join(dir, command)));
}
