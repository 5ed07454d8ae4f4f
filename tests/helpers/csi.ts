/**
 * A gRPC client of the provider API (@grpc/grpc-js over the provider's own service definition)
 * and builders of the Mount request attributes that the Secrets Store CSI driver sends.
 */
import * as grpc from "@grpc/grpc-js";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseAllowedUrls } from "../../src/csi/allowed-urls.ts";
import type { CsiConfig } from "../../src/csi/config.ts";
import { DEFAULT_MAX_RESPONSE_BYTES } from "../../src/csi/mount.ts";
import { startCsiProvider, type RunningProvider } from "../../src/csi/provider.ts";
import { startDevServer, type DevServer, type DevServerOptions } from "../../src/dev/server.ts";
import { configureLogging } from "../../src/log.ts";
import { CSI_DRIVER_PROVIDER_SERVICE } from "../../src/csi/server.ts";
import type { MountRequest, MountResponse, VersionResponse } from "../../src/csi/proto.ts";
import { makeJwt, serviceAccountClaims } from "./jwt.ts";

/** The guide's SecretProviderClass `objects` parameter. */
export const GUIDE_OBJECTS = `- path: environments/production/billing/database
  file: db.json
- path: environments/production/billing/stripe
  file: stripe.json
  field: secret_key
`;

export interface CsiClient {
  version(): Promise<VersionResponse>;
  mount(request: Partial<MountRequest> & { attributes: string }): Promise<MountResponse>;
  close(): void;
}

/** A failed call: the gRPC status code and message. */
export interface CallError extends Error {
  code: grpc.status;
  details: string;
}

const Client = grpc.makeGenericClientConstructor(CSI_DRIVER_PROVIDER_SERVICE, "CSIDriverProvider");

/** Connects to the provider on `socketPath` the way grpc-js clients name unix sockets. */
export function connectCsi(socketPath: string, deadlineMs = 30_000): CsiClient {
  const client = new Client(`unix://${socketPath}`, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
  }) as grpc.Client & Record<string, Function>;
  const deadline = () => new Date(Date.now() + deadlineMs);

  return {
    version: () =>
      new Promise((resolve, reject) => {
        client.Version!({ version: "v1alpha1" }, { deadline: deadline() }, (error: grpc.ServiceError | null, response: VersionResponse) =>
          error ? reject(error) : resolve(response),
        );
      }),
    mount: (request) =>
      new Promise((resolve, reject) => {
        const full: MountRequest = { secrets: "{}", targetPath: "/var/lib/kubelet/pods/x/volumes/v", permission: "420", currentObjectVersion: [], ...request };
        client.Mount!(full, { deadline: deadline() }, (error: grpc.ServiceError | null, response: MountResponse) =>
          error ? reject(error) : resolve(response),
        );
      }),
    close: () => client.close(),
  };
}

export interface PodOptions {
  baseUrl: string;
  objects?: string;
  namespace?: string;
  pod?: string;
  serviceAccount?: string;
  audience?: string;
  role?: string;
  /** Tokens by audience; default: a fresh token of the pod's service account for "scaivault". */
  tokens?: Record<string, { token: string; expirationTimestamp?: string }> | null;
  /** Extra or overriding attributes. */
  extra?: Record<string, string>;
}

/** Builds the attributes JSON of a Mount request for one pod. */
export function mountAttributes(options: PodOptions): string {
  const namespace = options.namespace ?? "billing";
  const serviceAccount = options.serviceAccount ?? "billing";
  const pod = options.pod ?? "billing-0";
  const tokens = options.tokens === undefined ? { scaivault: podToken(namespace, serviceAccount) } : options.tokens;

  const attributes: Record<string, string> = {
    secretProviderClass: "scaivault-billing",
    base_url: options.baseUrl,
    objects: options.objects ?? GUIDE_OBJECTS,
    "csi.storage.k8s.io/pod.name": pod,
    "csi.storage.k8s.io/pod.namespace": namespace,
    "csi.storage.k8s.io/pod.uid": `uid-${namespace}-${pod}`,
    "csi.storage.k8s.io/serviceAccount.name": serviceAccount,
    "csi.storage.k8s.io/ephemeral": "true",
    ...(options.audience ? { audience: options.audience } : {}),
    ...(options.role ? { role: options.role } : {}),
    ...(tokens === null ? {} : { "csi.storage.k8s.io/serviceAccount.tokens": JSON.stringify(tokens) }),
    ...options.extra,
  };
  return JSON.stringify(attributes);
}

/** Returns a projected token of `namespace/name` for audience "scaivault", as the kubelet's tokenRequests entry carries it. */
export function podToken(namespace: string, name: string, overrides: Record<string, unknown> = {}): { token: string; expirationTimestamp: string } {
  const claims = serviceAccountClaims(namespace, name, overrides);
  return { token: makeJwt(claims), expirationTimestamp: new Date((claims.exp as number) * 1000).toISOString() };
}

/** Decodes file contents as UTF-8, by file path. */
export function filesByPath(response: MountResponse): Map<string, { mode: number; text: string }> {
  return new Map(response.files.map((file) => [file.path, { mode: file.mode, text: Buffer.from(file.contents).toString("utf8") }]));
}

export interface ProviderFixture {
  dev: DevServer;
  provider: RunningProvider;
  socketPath: string;
  dir: string;
  client: CsiClient;
  /** Log lines of the provider and the dev server since the fixture started. */
  logs: string[];
  stop(): Promise<void>;
}

/**
 * Starts the dev server and an in-process provider on a socket in a temp dir, with logs captured.
 * The provider allows only the dev server's URL.
 */
export async function startProviderFixture(options: {
  seed: Record<string, Record<string, unknown>>;
  config?: DevServerOptions["config"];
  provider?: Partial<CsiConfig>;
  /** Base URLs allowed besides the dev server's. */
  extraAllowedUrls?: string[];
}): Promise<ProviderFixture> {
  const logs: string[] = [];
  configureLogging({ level: "debug", format: "json", write: (line) => logs.push(line) });

  const dev = await startDevServer({ port: 0, seed: options.seed, config: options.config, rateLimits: false });
  const dir = mkdtempSync(join(tmpdir(), "csi-"));
  const socketPath = join(dir, "providers", "scaivault.sock");
  const provider = await startCsiProvider({
    socketPath,
    socketMode: 0o600,
    health: { hostname: "127.0.0.1", port: 0 },
    allowedUrls: parseAllowedUrls([dev.url, ...(options.extraAllowedUrls ?? [])].join(",")),
    mountTimeoutMs: 20_000,
    mountConcurrency: 4,
    maxResponseBytes: DEFAULT_MAX_RESPONSE_BYTES,
    maxMounts: 4,
    mountQueue: 32,
    requestTimeoutMs: 10_000,
    maxAttempts: 3,
    ...options.provider,
  });
  const client = connectCsi(socketPath);

  return {
    dev,
    provider,
    socketPath,
    dir,
    client,
    logs,
    async stop() {
      client.close();
      await provider.stop();
      await dev.stop();
      rmSync(dir, { recursive: true, force: true });
      configureLogging({ level: "warn" });
    },
  };
}

/** Calls `run` and returns the gRPC error it rejects with; fails when it resolves. */
export async function callError(run: () => Promise<unknown>): Promise<CallError> {
  try {
    await run();
  } catch (error) {
    return error as CallError;
  }
  throw new Error("expected the call to fail, but it succeeded");
}
