/**
 * Shared parts of the CSI provider benchmarks: the dev server and the compiled provider as their
 * own processes, a @grpc/grpc-js client on the provider's socket, and Mount attributes for pods.
 */
import * as grpc from "@grpc/grpc-js";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { CSI_DRIVER_PROVIDER_SERVICE } from "../src/csi/server.ts";
import type { MountRequest, MountResponse, VersionResponse } from "../src/csi/proto.ts";
import { projectedToken } from "../src/dev/guide.ts";

export const ROOT = resolve(import.meta.dirname, "..");
export const BINARY = join(ROOT, "dist/scaivault-agent");
export const ROOT_TOKEN = "bench-root-token";

/** Creates a scratch directory, on tmpfs where there is one. */
export function workDir(prefix: string): string {
  return mkdtempSync(join(existsSync("/dev/shm") ? "/dev/shm" : tmpdir(), prefix));
}

/** Starts the dev server from `mod.ts` with `seed`, rate limits off, as its own process. */
export async function startDevProcess(work: string, seed: Record<string, Record<string, unknown>>): Promise<{ url: string; child: ChildProcess }> {
  writeFileSync(join(work, "seed.json"), JSON.stringify(seed));
  const child = spawn(process.execPath, [join(ROOT, "mod.ts"), "dev", "--port", "0", "--seed", join(work, "seed.json"), "--rate-limits", "off"], {
    env: { PATH: process.env.PATH!, HOME: process.env.HOME!, SCAIVAULT_DEV_ROOT_TOKEN: ROOT_TOKEN, LOG_LEVEL: "warn" },
    stdio: ["ignore", "pipe", "ignore"],
  });

  const url = await new Promise<string>((resolveUrl, reject) => {
    let output = "";
    child.stdout!.on("data", (chunk) => {
      output += chunk;
      const match = output.match(/listening on (http:\/\/\S+)/);
      if (match) resolveUrl(match[1]!);
    });
    child.on("close", () => reject(new Error("dev server exited before listening")));
  });
  return { url, child };
}

/** Starts the compiled provider on a socket in `work`, allowing only `devUrl`, and waits for its socket. */
export async function startProviderProcess(work: string, devUrl: string): Promise<{ socket: string; child: ChildProcess }> {
  if (!existsSync(BINARY)) throw new Error(`${BINARY} is missing: run \`bun run build\` first`);

  const socket = join(work, "scaivault.sock");
  const child = spawn(BINARY, ["csi-provider"], {
    env: { PATH: process.env.PATH!, CSI_SOCKET: socket, SCAIVAULT_ALLOWED_URLS: devUrl, HEALTH_ADDR: "off", LOG_LEVEL: "warn", LOG_FORMAT: "json" },
    stdio: ["ignore", "ignore", "inherit"],
  });

  const deadline = Date.now() + 20_000;
  while (!existsSync(socket)) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error("provider did not start");
    await new Promise((resolveWait) => setTimeout(resolveWait, 20));
  }
  return { socket, child };
}

/** Connects a Version and Mount client to `socket`. */
export function mountClient(socket: string): { version(): Promise<VersionResponse>; mount(attributes: string): Promise<MountResponse>; close(): void } {
  const Client = grpc.makeGenericClientConstructor(CSI_DRIVER_PROVIDER_SERVICE, "CSIDriverProvider");
  const client = new Client(`unix://${socket}`, grpc.credentials.createInsecure(), { "grpc.max_receive_message_length": 8 * 1024 * 1024 }) as grpc.Client &
    Record<string, Function>;

  return {
    version: () =>
      new Promise((resolveVersion, reject) => {
        client.Version!({ version: "v1alpha1" }, { deadline: new Date(Date.now() + 10_000) }, (error: grpc.ServiceError | null, response: VersionResponse) =>
          error ? reject(error) : resolveVersion(response),
        );
      }),
    mount: (attributes) =>
      new Promise((resolveMount, reject) => {
        const request: MountRequest = { attributes, secrets: "{}", targetPath: "/bench", permission: "420", currentObjectVersion: [] };
        client.Mount!(request, { deadline: new Date(Date.now() + 60_000) }, (error: grpc.ServiceError | null, response: MountResponse) =>
          error ? reject(error) : resolveMount(response),
        );
      }),
    close: () => client.close(),
  };
}

/** Mount attributes of pod `pod` of service account `account`, reading `paths` (one file each). */
export function podAttributes(baseUrl: string, paths: string[], account: string, pod: string): string {
  const objects = paths.map((path, index) => `- path: ${path}\n  file: file-${index}.json\n`).join("");
  return JSON.stringify({
    secretProviderClass: "bench",
    base_url: baseUrl,
    objects,
    "csi.storage.k8s.io/pod.name": pod,
    "csi.storage.k8s.io/pod.namespace": "bench",
    "csi.storage.k8s.io/pod.uid": `uid-${pod}`,
    "csi.storage.k8s.io/serviceAccount.name": account,
    "csi.storage.k8s.io/serviceAccount.tokens": JSON.stringify({
      scaivault: { token: projectedToken({ namespace: "bench", name: account, lifetimeSeconds: 7200 }) },
    }),
  });
}

/** Secrets `bench/app/secret-N` with a few fields each, as the seed of the dev server. */
export function benchSeed(count: number): Record<string, Record<string, unknown>> {
  const seed: Record<string, Record<string, unknown>> = {};
  for (let index = 0; index < count; index++) {
    seed[`bench/app/secret-${index}`] = { username: `user-${index}`, password: `password-${index}-${"x".repeat(24)}`, port: 5432 };
  }
  return seed;
}

/** Request counts of the dev server per route; `reset` clears them afterwards. */
export async function devStats(url: string, reset = false): Promise<Record<string, number>> {
  const headers = { authorization: `Bearer ${ROOT_TOKEN}` };
  const body = (await (await fetch(`${url}/v1/dev/stats`, { headers })).json()) as { requests: Record<string, number> };
  if (reset) await fetch(`${url}/v1/dev/stats`, { method: "DELETE", headers });
  return body.requests;
}

/** Resident and peak memory of `pid` in MB, from /proc. */
export function memoryOf(pid: number): { rssMb: number; hwmMb: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN) / 1024;
  return { rssMb: field("VmRSS"), hwmMb: field("VmHWM") };
}

/** Returns the value at `fraction` (0 to 1) of the sorted `values`. */
export function percentile(values: number[], fraction: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))]!;
}
