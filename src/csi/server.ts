/**
 * The gRPC server the Secrets Store CSI driver calls: service `v1alpha1.CSIDriverProvider` on a
 * unix socket, with the socket's life cycle (a stale socket removed at start, the mode set after
 * binding, the file removed at stop). The server is @grpc/grpc-js over the hand-written codec of
 * `proto.ts`. It accepts the percent-encoded socket path that current grpc-go clients send as
 * `:authority`, and, through `authority.ts`, the raw path that older ones send.
 */
import * as grpc from "@grpc/grpc-js";
import { chmod, lstat, mkdir, unlink } from "node:fs/promises";
import { createServer, type Socket } from "node:net";
import type { Duplex } from "node:stream";
import { dirname } from "node:path";
import { AgentError, type ErrorCode } from "../errors.ts";
import { errorFields, getLogger } from "../log.ts";
import {
  decodeMountRequest,
  decodeMountResponse,
  decodeVersionRequest,
  decodeVersionResponse,
  encodeMountRequest,
  encodeVersionRequest,
  encodeVersionResponse,
  type MountRequest,
  type VersionResponse,
} from "./proto.ts";
import { ResponseTooLargeError, type MountResult } from "./mount.ts";
import { rewritingConnection } from "./authority.ts";

const log = getLogger("csi");

/** The service definition, for the server and for test clients (`grpc.makeGenericClientConstructor`). */
export const CSI_DRIVER_PROVIDER_SERVICE: grpc.ServiceDefinition = {
  Version: {
    path: "/v1alpha1.CSIDriverProvider/Version",
    requestStream: false,
    responseStream: false,
    requestSerialize: (message) => toBuffer(encodeVersionRequest(message)),
    requestDeserialize: (bytes: Buffer) => decodeVersionRequest(bytes),
    responseSerialize: (message) => toBuffer(encodeVersionResponse(message)),
    responseDeserialize: (bytes: Buffer) => decodeVersionResponse(bytes),
  },
  Mount: {
    path: "/v1alpha1.CSIDriverProvider/Mount",
    requestStream: false,
    responseStream: false,
    requestSerialize: (message) => toBuffer(encodeMountRequest(message)),
    requestDeserialize: (bytes: Buffer) => decodeMountRequest(bytes),
    // The handler passes the bytes it measured against the size limit, so they go out as they are.
    responseSerialize: (encoded: Uint8Array) => toBuffer(encoded),
    responseDeserialize: (bytes: Buffer) => decodeMountResponse(bytes),
  },
};

export interface ProviderServerOptions {
  socketPath: string;
  /** @default 0o600 */
  socketMode?: number;
  version: VersionResponse;
  mount: (request: MountRequest, signal: AbortSignal) => Promise<MountResult>;
  /** Largest response the server sends; a little above the mount limit. */
  maxSendBytes: number;
  /** Called after every Mount with the gRPC status name (`OK`, `INVALID_ARGUMENT`, ...) and its duration. */
  onMount?: (status: string, durationMs: number) => void;
}

/** A listening provider server. */
export interface ProviderServer {
  socketPath: string;
  /** Finishes calls in progress for up to `graceMs`, cancels the rest, and removes the socket. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Binds the socket and serves Version and Mount.
 *
 * @throws AgentError `config` when the path is taken by something that is not a socket or cannot be bound.
 */
export async function startProviderServer(options: ProviderServerOptions): Promise<ProviderServer> {
  const { socketPath } = options;
  await prepareSocketPath(socketPath);

  const server = new grpc.Server({
    "grpc.max_send_message_length": options.maxSendBytes,
    "grpc.max_receive_message_length": 4 * 1024 * 1024,
  });
  const calls = new CallTracker();
  server.addService(CSI_DRIVER_PROVIDER_SERVICE, {
    Version: function version(_call: grpc.ServerUnaryCall<unknown, VersionResponse>, callback: grpc.sendUnaryData<VersionResponse>) {
      callback(null, options.version);
    },
    Mount: function mount(call: grpc.ServerUnaryCall<MountRequest, Uint8Array>, callback: grpc.sendUnaryData<Uint8Array>) {
      if (calls.draining) {
        callback({ code: grpc.status.UNAVAILABLE, details: "The ScaiVault provider is stopping; the driver retries the Mount" });
        return;
      }
      calls.started();
      serveMount(call, callback, options).finally(() => calls.finished());
    },
  });

  // The socket is ours, not grpc-js's, so that each connection passes the authority rewriter.
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const connections = new Set<{ socket: Socket; duplex: Duplex }>();
  const listener = createServer(function acceptConnection(socket) {
    const duplex = rewritingConnection(socket, (count) => log.debug("Rewrote a raw socket path in :authority", { count }));
    const connection = { socket, duplex };
    connections.add(connection);
    socket.once("close", () => connections.delete(connection));
    injector.injectConnection(duplex);
  });

  await new Promise<void>((resolve, reject) => {
    listener.once("error", (error) => reject(new AgentError("config", `Cannot listen on socket "${socketPath}": ${error.message}`, { cause: error })));
    listener.listen(socketPath, () => resolve());
  });
  listener.on("error", (error) => log.error("Socket failed", { socket: socketPath, ...errorFields(error) }));

  // NOTE: until this chmod the socket has the mode that the process umask gives it. In that
  // moment only the provider directory, writable by root alone, keeps others out.
  await chmod(socketPath, options.socketMode ?? 0o600);
  const { ino } = await lstat(socketPath);
  log.info("Provider listening", { socket: socketPath, mode: (options.socketMode ?? 0o600).toString(8) });

  let stopping: Promise<void> | undefined;
  return {
    socketPath,
    stop(graceMs = 10_000) {
      stopping ??= (async () => {
        // Some HTTP/2 servers (Bun's) close a session without waiting for its open streams, so
        // the Mount calls in progress are awaited here before the gRPC server shuts down.
        listener.close();
        const deadline = performance.now() + graceMs;
        if (!(await calls.drain(graceMs))) log.warn("Mount calls still running after the grace period", { graceMs, calls: calls.active });
        await flushConnections(connections, deadline);
        await shutdown(server, Math.max(0, deadline - performance.now()));
        await removeOwnSocket(socketPath, ino);
        log.info("Provider stopped", { socket: socketPath });
      })();
      return stopping;
    },
  };
}

/** Maps an agent error code to the gRPC status the driver receives. The driver retries UNAVAILABLE only. */
export function grpcStatusFor(error: unknown): grpc.status {
  if (error instanceof ResponseTooLargeError) return grpc.status.RESOURCE_EXHAUSTED;
  if (!(error instanceof AgentError)) return grpc.status.INTERNAL;

  const statuses: Record<ErrorCode, grpc.status> = {
    config: grpc.status.INVALID_ARGUMENT,
    auth: grpc.status.UNAUTHENTICATED,
    forbidden: grpc.status.PERMISSION_DENIED,
    not_found: grpc.status.NOT_FOUND,
    unreachable: grpc.status.UNAVAILABLE,
    rate_limited: grpc.status.UNAVAILABLE,
    timeout: grpc.status.DEADLINE_EXCEEDED,
    server: grpc.status.UNAVAILABLE,
    write: grpc.status.INTERNAL,
    lease: grpc.status.INTERNAL,
    internal: grpc.status.INTERNAL,
  };
  return statuses[error.code];
}

// ---------------------------------------------------------------------------------------------

/** Counts Mount calls in progress, so that a stop can wait for them. */
class CallTracker {
  active = 0;
  draining = false;
  #idle: Array<() => void> = [];

  started(): void {
    this.active += 1;
  }

  finished(): void {
    this.active -= 1;
    if (this.active === 0) for (const resolve of this.#idle.splice(0)) resolve();
  }

  /** Rejects new calls from now on and resolves true once none runs, or false after `graceMs`. */
  drain(graceMs: number): Promise<boolean> {
    this.draining = true;
    if (this.active === 0) return Promise.resolve(true);

    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), graceMs);
      this.#idle.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }
}

function serveMount(
  call: grpc.ServerUnaryCall<MountRequest, Uint8Array>,
  callback: grpc.sendUnaryData<Uint8Array>,
  options: ProviderServerOptions,
): Promise<void> {
  const started = performance.now();
  const controller = new AbortController();
  call.on("cancelled", () => controller.abort(new AgentError("timeout", "The driver cancelled the Mount call")));

  return options.mount(call.request, controller.signal).then(
    (result) => {
      options.onMount?.("OK", performance.now() - started);
      callback(null, result.encoded);
    },
    (error: unknown) => {
      const code = grpcStatusFor(error);
      const statusName = grpc.status[code] ?? String(code);
      options.onMount?.(statusName, performance.now() - started);

      if (error instanceof AgentError) {
        log.error("Mount failed", { status: statusName, ...errorFields(error) });
        callback({ code, details: error.message });
        return;
      }

      // An unexpected failure: its message is logged with the stack, and the driver gets a
      // fixed text, because a library's message could quote request data.
      log.error("Mount failed unexpectedly", { status: statusName, ...errorFields(error), stack: (error as Error).stack });
      callback({ code, details: "Internal error in the ScaiVault provider; see the provider's log" });
    },
  );
}

/**
 * Waits until the responses of finished calls have left every connection, or until `deadline`.
 * The HTTP/2 layer may write a response a few turns of the event loop after the handler returned.
 */
async function flushConnections(connections: Set<{ socket: Socket; duplex: Duplex }>, deadline: number): Promise<void> {
  for (let turn = 0; turn < 3; turn++) await new Promise((resolve) => setImmediate(resolve));

  const pending = () => [...connections].some(({ socket, duplex }) => duplex.writableLength > 0 || socket.writableLength > 0);
  while (pending() && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
}

async function prepareSocketPath(socketPath: string): Promise<void> {
  await mkdir(dirname(socketPath), { recursive: true, mode: 0o755 });

  let stats;
  try {
    stats = await lstat(socketPath);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
    throw new AgentError("config", `Cannot inspect socket path "${socketPath}": ${(error as NodeJS.ErrnoException).code}`, { cause: error });
  }

  if (!stats.isSocket()) {
    throw new AgentError("config", `Cannot listen on "${socketPath}": it exists and is not a socket; remove it or choose another CSI_SOCKET`);
  }
  await unlink(socketPath);
  log.info("Removed stale socket", { socket: socketPath });
}

function shutdown(server: grpc.Server, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      log.warn("Calls still running after the grace period, cancelling them", { graceMs });
      server.forceShutdown();
      resolve();
    }, graceMs);

    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Removes the socket unless another process replaced it meanwhile (a new pod on the node). */
async function removeOwnSocket(socketPath: string, ino: number): Promise<void> {
  try {
    const stats = await lstat(socketPath);
    if (stats.isSocket() && stats.ino === ino) await unlink(socketPath);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") log.warn("Cannot remove socket", { socket: socketPath, ...errorFields(error) });
  }
}

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
