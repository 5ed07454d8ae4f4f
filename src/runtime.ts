/**
 * The one place that touches `Bun.*` and `Deno.*`. Everything else uses web `fetch` and `node:`
 * built-ins, so that `bun run mod.ts` and `deno run -A mod.ts` behave the same.
 */
import { readFileSync } from "node:fs";

export type FetchFunction = (input: string | URL | Request, init?: RequestInit) => Promise<Response>;

export interface HttpServer {
  /** `http://host:port` or `https://host:port` with the port actually bound. */
  url: string;
  port: number;
  stop(): Promise<void>;
}

interface BunLike {
  version: string;
  gc(force: boolean): void;
  serve(options: {
    hostname: string;
    port: number;
    idleTimeout?: number;
    maxRequestBodySize?: number;
    tls?: { cert: string; key: string };
    fetch: (request: Request) => Response | Promise<Response>;
  }): { port: number; stop(closeActive?: boolean): void | Promise<void> };
}

interface DenoLike {
  version: { deno: string };
  serve(
    options: { hostname: string; port: number; onListen?: (addr: unknown) => void; cert?: string; key?: string },
    handler: (request: Request) => Response | Promise<Response>,
  ): { addr: { port: number }; shutdown(): Promise<void> };
  createHttpClient(options: { caCerts: string[] }): unknown;
}

const bun = (globalThis as { Bun?: BunLike }).Bun;
const deno = (globalThis as { Deno?: DenoLike }).Deno;

/** `bun`, `deno` or `node`, for the CSI `Version` response and logs. */
export const runtimeName: string = detectRuntime().name;

/** Version of the running runtime. */
export const runtimeVersion: string = detectRuntime().version;

function detectRuntime(): { name: string; version: string } {
  if (bun) return { name: "bun", version: bun.version };
  if (deno) return { name: "deno", version: deno.version.deno };
  return { name: "node", version: process.versions.node };
}

/**
 * Serves `handler` on `hostname:port` (port 0 picks a free one), over HTTPS when `tls` contains a PEM
 * certificate chain and key. Long-polling handlers need idle connections kept open, so Bun's idle
 * timeout is raised to its maximum of 255 seconds. `maxRequestBodySize` sets Bun's own body limit in
 * bytes (128 MB by default), above which Bun responds 413 before `handler` runs. Deno ignores the option.
 */
export async function serveHttp(
  handler: (request: Request) => Response | Promise<Response>,
  options: { hostname: string; port: number; tls?: { cert: string; key: string }; maxRequestBodySize?: number },
): Promise<HttpServer> {
  const host = options.hostname.includes(":") ? `[${options.hostname}]` : options.hostname;
  const scheme = options.tls ? "https" : "http";

  if (bun) {
    const server = bun.serve({
      hostname: options.hostname,
      port: options.port,
      idleTimeout: 255,
      fetch: handler,
      tls: options.tls,
      ...(options.maxRequestBodySize === undefined ? {} : { maxRequestBodySize: options.maxRequestBodySize }),
    });
    return {
      url: `${scheme}://${host}:${server.port}`,
      port: server.port,
      stop: async () => {
        await server.stop(true);
      },
    };
  }

  if (deno) {
    const server = deno.serve({ hostname: options.hostname, port: options.port, onListen: () => {}, ...options.tls }, handler);
    return {
      url: `${scheme}://${host}:${server.addr.port}`,
      port: server.addr.port,
      stop: () => server.shutdown(),
    };
  }

  throw new Error("serveHttp needs Bun or Deno; run with `bun run mod.ts` or `deno run -A mod.ts`");
}

/**
 * Returns a `fetch` that trusts the PEM bundle in `caFile` in addition to the system roots, or the
 * global `fetch` when no bundle is configured.
 */
export function createFetch(caFile?: string): FetchFunction {
  if (!caFile) return globalThis.fetch.bind(globalThis);

  const pem = readFileSync(caFile, "utf8");

  if (bun) {
    return (input, init) => fetch(input, { ...init, tls: { ca: pem } } as RequestInit);
  }

  if (deno) {
    const client = deno.createHttpClient({ caCerts: [pem] });
    return (input, init) => fetch(input, { ...init, client } as RequestInit);
  }

  // NOTE: plain Node.js has no per-request CA option in fetch; NODE_EXTRA_CA_CERTS applies there.
  return globalThis.fetch.bind(globalThis);
}

/**
 * Runs a full garbage collection under Bun, which lets the allocator return freed pages to the
 * system. Does nothing under Deno and Node.js, which offer no such call without extra flags.
 */
export function collectGarbage(): void {
  bun?.gc(true);
}
