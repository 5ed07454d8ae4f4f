/**
 * The gRPC server the Secrets Store CSI driver calls: service `v1alpha1.CSIDriverProvider` on a
 * unix socket, with the socket's life cycle (a stale socket removed at start, the mode set after
 * binding, the file removed at stop). The server is @grpc/grpc-js over the hand-written codec of
 * `proto.ts`. It accepts the percent-encoded socket path that current grpc-go clients send as
 * `:authority`, and, through `authority.ts`, the raw path that older ones send.
 */
import * as grpc from "@grpc/grpc-js";
import { lstatSync } from "node:fs";
import { chmod, lstat, mkdir, unlink } from "node:fs/promises";
import { connect, createServer, type Socket } from "node:net";
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
import { capStatusMessage } from "./messages.ts";

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
  /** Called for each Mount that a stop cancelled after the grace period. */
  onAbortedByStop?: () => void;
  /** Called for each connection closed for breaking the HTTP/2 frame limits. */
  onConnectionRejected?: () => void;
}

/** A listening provider server. */
export interface ProviderServer {
  socketPath: string;
  /** Whether the socket file this server bound is still at `socketPath`, for readiness. */
  socketPresent(): boolean;
  /**
   * Finishes calls in progress for up to `graceMs`, then fails the rest with UNAVAILABLE so the
   * driver retries them, and removes the socket.
   */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Binds the socket and serves Version and Mount.
 *
 * @throws AgentError `config` when the path is taken by something that is not a socket, by a
 *   socket another process listens on, or cannot be bound.
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
      const controller = new AbortController();
      calls.started(controller);
      serveMount(call, callback, options, controller).finally(() => calls.finished(controller));
    },
  });

  // The socket is ours, not grpc-js's, so that each connection passes the authority rewriter.
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const connections = new Set<{ socket: Socket; duplex: Duplex }>();
  const listener = createServer(function acceptConnection(socket) {
    const duplex = rewritingConnection(
      socket,
      (count) => log.debug("Rewrote a raw socket path in :authority", { count }),
      (reason) => {
        log.warn("Closed a connection that broke the HTTP/2 frame limits", { socket: socketPath, reason });
        options.onConnectionRejected?.();
      },
    );
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
    socketPresent() {
      try {
        const stats = lstatSync(socketPath);
        return stats.isSocket() && stats.ino === ino;
      } catch {
        return false;
      }
    },
    stop(graceMs = 10_000) {
      stopping ??= (async () => {
        // Some HTTP/2 servers (Bun's) close a session without waiting for its open streams, so
        // the Mount calls in progress are awaited here before the gRPC server shuts down.
        listener.close();
        const deadline = performance.now() + graceMs;
        if (!(await calls.drain(graceMs))) {
          // Each aborted call returns UNAVAILABLE at once (see serveMount), so the driver
          // retries it against the next provider instead of seeing a reset stream.
          log.warn("Mount calls still running after the grace period, failing them with UNAVAILABLE", { graceMs, calls: calls.active });
          calls.abortAll();
        }
        await flushConnections(connections, performance.now() + STOP_FLUSH_MS);
        await shutdown(server, Math.max(STOP_FLUSH_MS, deadline - performance.now()));
        await removeOwnSocket(socketPath, ino);
        log.info("Provider stopped", { socket: socketPath });
      })();
      return stopping;
    },
  };
}

/** Time a stop gives the responses of aborted calls to leave the connections. */
const STOP_FLUSH_MS = 1_000;

/** Reason of a Mount aborted by a stop. */
class StopAbort extends AgentError {
  constructor() {
    super("unreachable", "The ScaiVault provider stopped before the Mount finished; the driver retries the Mount");
  }
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

/** Tracks Mount calls in progress, so that a stop can wait for them or abort them. */
class CallTracker {
  draining = false;
  readonly #calls = new Set<AbortController>();
  #idle: Array<() => void> = [];

  get active(): number {
    return this.#calls.size;
  }

  started(controller: AbortController): void {
    this.#calls.add(controller);
  }

  finished(controller: AbortController): void {
    this.#calls.delete(controller);
    if (this.#calls.size === 0) for (const resolve of this.#idle.splice(0)) resolve();
  }

  /** Aborts every call in progress with a `StopAbort`. */
  abortAll(): void {
    for (const controller of this.#calls) controller.abort(new StopAbort());
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

/**
 * Runs one Mount and responds to it exactly once. An abort by a stop responds UNAVAILABLE at
 * once, even when the mount does not end promptly. Every status message is capped by
 * `capStatusMessage`, because trailers over the client's limit close the whole connection.
 */
function serveMount(
  call: grpc.ServerUnaryCall<MountRequest, Uint8Array>,
  callback: grpc.sendUnaryData<Uint8Array>,
  options: ProviderServerOptions,
  controller: AbortController,
): Promise<void> {
  const started = performance.now();
  let answered = false;
  const answer = (status: string, reply: () => void) => {
    if (answered) return;
    answered = true;
    options.onMount?.(status, performance.now() - started);
    try {
      reply();
    } catch (error) {
      log.error("Cannot send the Mount response", { status, ...errorFields(error) });
    }
  };
  const fail = (error: unknown) => {
    const code = grpcStatusFor(error);
    const statusName = grpc.status[code] ?? String(code);

    if (error instanceof AgentError) {
      log.error("Mount failed", { status: statusName, ...errorFields(error) });
      answer(statusName, () => callback({ code, details: capStatusMessage(error.message) }));
      return;
    }

    // An unexpected failure: its message is logged with the stack, and the driver gets a
    // fixed text, because a library's message could quote request data.
    log.error("Mount failed unexpectedly", { status: statusName, ...errorFields(error), stack: (error as Error).stack });
    answer(statusName, () => callback({ code, details: "Internal error in the ScaiVault provider; see the provider's log" }));
  };

  call.on("cancelled", () => controller.abort(new AgentError("timeout", "The driver cancelled the Mount call")));
  controller.signal.addEventListener("abort", function answerStopAbort() {
    if (!(controller.signal.reason instanceof StopAbort) || answered) return;
    options.onAbortedByStop?.();
    fail(controller.signal.reason);
  }, { once: true });

  // `then` on a resolved promise turns a synchronous throw of `mount` into a rejection.
  return Promise.resolve()
    .then(() => options.mount(call.request, controller.signal))
    .then(
      (result) => answer("OK", () => callback(null, result.encoded)),
      (error: unknown) => fail(controller.signal.reason instanceof StopAbort ? controller.signal.reason : error),
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

  // Only a socket that refuses connections is stale. A live one belongs to another provider,
  // such as a second DaemonSet on the same host path, whose mounts would break if removed.
  const probe = await probeSocket(socketPath);
  if (probe === "live") {
    throw new AgentError(
      "config",
      `Cannot listen on "${socketPath}": another process accepts connections on it; stop the other provider or choose another CSI_SOCKET`,
    );
  }
  await unlink(socketPath).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== "ENOENT") throw error;
  });
  log.info("Removed stale socket", { socket: socketPath, probe });
}

/** Time a connection attempt to an existing socket may take before it counts as live. */
const SOCKET_PROBE_MS = 2_000;

/**
 * Connects to the socket: "stale" when the connection is refused or the file vanished, "live"
 * when it is accepted. Other failures, and a connection that neither opens nor fails in time
 * (a listener with a full backlog), count as live, so the socket is kept.
 */
function probeSocket(socketPath: string): Promise<"stale" | "live"> {
  return new Promise((resolve) => {
    const socket = connect(socketPath);
    const finish = (result: "stale" | "live") => {
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => finish("live"), SOCKET_PROBE_MS);
    socket.once("connect", () => finish("live"));
    socket.once("error", (error: NodeJS.ErrnoException) => finish(error.code === "ECONNREFUSED" || error.code === "ENOENT" ? "stale" : "live"));
  });
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
