/**
 * The table of settings: each has an environment variable, usually a flag, a default and help
 * text. Commands pick the settings they use; `readSettings` merges flags over the environment.
 * Settings that carry a secret have no flag, because flags show in process listings.
 */
import type { ArgsDef } from "citty";

export interface Setting {
  env: string;
  /** Flag name without dashes; undefined for secrets. */
  flag?: string;
  description: string;
  default?: string;
  boolean?: boolean;
}

const connection = {
  url: { env: "SCAIVAULT_URL", flag: "url", description: "ScaiVault base URL, such as https://scaivault.scailabs.ai" },
  token: { env: "SCAIVAULT_TOKEN", description: "Static ScaiVault token (skt_...) for local use and CI; environment only" },
  tokenFile: {
    env: "SCAIVAULT_TOKEN_FILE",
    flag: "token-file",
    description: "Projected service-account token to exchange for a ScaiVault token",
    default: "/var/run/secrets/scaivault/token",
  },
  audience: { env: "SCAIVAULT_AUDIENCE", flag: "audience", description: "Audience sent with the exchange", default: "scaivault" },
  role: { env: "SCAIVAULT_ROLE", flag: "role", description: "ScaiKey role to request in the exchange, such as sa:billing-prod" },
  tenantId: { env: "SCAIVAULT_TENANT_ID", flag: "tenant-id", description: "Tenant override (tnt_...), for partner admins" },
  caFile: { env: "SCAIVAULT_CA_FILE", flag: "ca-file", description: "PEM bundle of extra CAs to trust for ScaiVault and ScaiKey" },
  clientId: { env: "SCAIKEY_CLIENT_ID", flag: "client-id", description: "ScaiKey client id for the client-credentials fallback" },
  clientIdFile: { env: "SCAIKEY_CLIENT_ID_FILE", flag: "client-id-file", description: "File holding the ScaiKey client id" },
  clientSecret: { env: "SCAIKEY_CLIENT_SECRET", description: "ScaiKey client secret; environment only" },
  clientSecretFile: { env: "SCAIKEY_CLIENT_SECRET_FILE", flag: "client-secret-file", description: "File holding the ScaiKey client secret" },
  tokenUrl: {
    env: "SCAIKEY_TOKEN_URL",
    flag: "token-url",
    description: "ScaiKey OAuth token endpoint for client credentials",
    default: "https://scaikey.scailabs.ai/oauth/token",
  },
  scope: { env: "SCAIKEY_SCOPE", flag: "scope", description: "OAuth scope for client credentials, such as secrets:read" },
  requestTimeout: { env: "REQUEST_TIMEOUT", flag: "request-timeout", description: "Timeout of one HTTP request", default: "15s" },
  maxAttempts: { env: "RETRY_MAX_ATTEMPTS", flag: "max-attempts", description: "Attempts per request, the first included", default: "6" },
  logLevel: { env: "LOG_LEVEL", flag: "log-level", description: "error, warn, info or debug", default: "info" },
  logFormat: { env: "LOG_FORMAT", flag: "log-format", description: "json (for containers) or text; default: text on a terminal, else json" },
} satisfies Record<string, Setting>;

const output = {
  outputDirs: {
    env: "OUTPUT_DIRS",
    flag: "output-dirs",
    description: "Comma-separated directories that files must stay inside; relative targets go under the first",
    default: "/run/secrets",
  },
  outputPrefix: {
    env: "OUTPUT_PREFIX",
    flag: "output-prefix",
    description: "Directory to resolve absolute targets under, to run manifest values outside a container",
  },
  fileMode: { env: "FILE_MODE", flag: "file-mode", description: "Mode of written files unless a line sets mode=", default: "0644" },
} satisfies Record<string, Setting>;

/** Every setting, grouped by the commands that read them. */
export const SETTINGS = {
  connection,
  output,
  init: {
    secrets: { env: "SECRETS", flag: "secrets", description: "Lines of `path[#field] -> file [options]` to write" },
    dynamic: { env: "DYNAMIC", flag: "dynamic", description: "Lines of `engine=... role=... [ttl=...] -> file [options]`" },
    timeout: { env: "INIT_TIMEOUT", flag: "timeout", description: "Deadline for the whole init run", default: "2m" },
    failOpen: {
      env: "FAIL_OPEN",
      flag: "fail-open",
      description: "Exit 0 with a warning when secrets cannot be read",
      default: "false",
      boolean: true,
    },
  },
  sidecar: {
    watchPaths: { env: "WATCH_PATHS", flag: "watch-paths", description: "Lines of `path[#field] -> file [options]` to keep current (grammar of SECRETS)" },
    refreshInterval: { env: "REFRESH_INTERVAL", flag: "refresh-interval", description: "Time between two reads of every watched secret", default: "5m" },
    refreshJitter: {
      env: "REFRESH_JITTER",
      flag: "refresh-jitter",
      description: "Random spread of each interval, as a percentage (10%) or a fraction (0.1), at most 50%",
      default: "10%",
    },
    reloadSignal: { env: "RELOAD_SIGNAL", flag: "reload-signal", description: "Signal sent to RELOAD_TARGET after files changed", default: "SIGHUP" },
    reloadTarget: {
      env: "RELOAD_TARGET",
      flag: "reload-target",
      description: "Process name of the application to signal (its comm or the basename of argv[0]); unset: only files change",
    },
    reloadTargetWait: {
      env: "RELOAD_TARGET_WAIT",
      flag: "reload-target-wait",
      description: "How long to look for RELOAD_TARGET at start before warning that it is missing",
      default: "60s",
    },
    healthAddr: {
      env: "HEALTH_ADDR",
      flag: "health-addr",
      description: "host:port for /healthz, /readyz and /metrics, or off; [::] accepts IPv4 and IPv6 where the kernel allows both",
      default: "[::]:8099",
    },
    events: {
      env: "EVENTS",
      flag: "events",
      description: "Subscribe to ScaiVault events to refresh at once on rotation",
      default: "true",
      boolean: true,
    },
    startJitter: {
      env: "START_JITTER",
      flag: "start-jitter",
      description: "Upper bound of a random delay before the first read, applied only when every file already exists",
      default: "10s",
    },
    readyMaxStaleness: {
      env: "READY_MAX_STALENESS",
      flag: "ready-max-staleness",
      description: "Report not ready when the last successful refresh is older than this; unset: staleness is only reported",
    },
    dynamic: {
      env: "DYNAMIC",
      flag: "dynamic",
      description: "Lines of `engine=... role=... [ttl=...] -> file [options]`: leases to generate at start, renew, and revoke at exit",
    },
    leaseRevokeGrace: {
      env: "LEASE_REVOKE_GRACE",
      flag: "lease-revoke-grace",
      description: "Time the application gets to switch to new credentials before the replaced lease is revoked",
      default: "30s",
    },
  },
  csi: {
    socket: {
      env: "CSI_SOCKET",
      flag: "socket",
      description: "Unix socket the Secrets Store CSI driver calls: <provider directory>/scaivault.sock",
      default: "/etc/kubernetes/secrets-store-csi-providers/scaivault.sock",
    },
    socketMode: { env: "CSI_SOCKET_MODE", flag: "socket-mode", description: "Octal mode of the socket file", default: "0600" },
    healthAddr: {
      env: "HEALTH_ADDR",
      flag: "health-addr",
      description: "host:port for /healthz, /readyz and /metrics, or off; [::] accepts IPv4 and IPv6 where the kernel allows both",
      default: "[::]:8098",
    },
    allowedUrls: {
      env: "SCAIVAULT_ALLOWED_URLS",
      flag: "allowed-urls",
      description: "Comma-separated base URLs a SecretProviderClass may name; https://* allows any https URL",
      default: "https://*",
    },
    mountTimeout: { env: "CSI_MOUNT_TIMEOUT", flag: "mount-timeout", description: "Deadline of one Mount call", default: "30s" },
    mountConcurrency: {
      env: "CSI_MOUNT_CONCURRENCY",
      flag: "mount-concurrency",
      description: "ScaiVault requests one Mount call runs at the same time",
      default: "4",
    },
    maxResponseBytes: {
      env: "CSI_MAX_RESPONSE_BYTES",
      flag: "max-response-bytes",
      description: "Largest Mount response in bytes; the driver's gRPC client accepts 4 MiB unless --max-call-recv-msg-size raises it",
      default: "4194304",
    },
    maxMounts: {
      env: "CSI_MAX_MOUNTS",
      flag: "max-mounts",
      description: "Mount calls the provider runs at once; each takes up to about 25 MiB with the default limits, so size it with the memory limit",
      default: "4",
    },
    mountQueue: {
      env: "CSI_MOUNT_QUEUE",
      flag: "mount-queue",
      description: "Mount calls that wait for a slot; further calls get UNAVAILABLE and the driver retries them",
      default: "32",
    },
  },
  sync: {
    secretName: { env: "SYNC_SECRET_NAME", flag: "secret-name", description: "Name of the Kubernetes Secret to create or update" },
    namespace: { env: "SYNC_NAMESPACE", flag: "namespace", description: "Namespace of the Secret; default: the pod's own, from KUBERNETES_NAMESPACE_FILE" },
    mapping: {
      env: "SYNC_MAPPING",
      flag: "mapping",
      description: "Lines of `path -> KEY` (data as JSON), `path#field -> KEY` (one raw field) or `path -> *` (every field as a key)",
    },
    secretType: { env: "SYNC_SECRET_TYPE", flag: "secret-type", description: "Type of a Secret that sync creates", default: "Opaque" },
    labels: { env: "SYNC_LABELS", flag: "labels", description: "Extra labels of the Secret: key=value, separated by commas or lines" },
    annotations: { env: "SYNC_ANNOTATIONS", flag: "annotations", description: "Extra annotations of the Secret: key=value, separated by commas or lines" },
    adopt: {
      env: "SYNC_ADOPT",
      flag: "adopt",
      description: "Take over an existing Secret that sync did not create, replacing its data",
      default: "false",
      boolean: true,
    },
    restart: {
      env: "SYNC_RESTART",
      flag: "restart",
      description:
        "Workloads in the Secret's namespace to roll out when the synced versions change, such as deployment/billing; comma-separated, kinds deployment, statefulset and daemonset",
    },
    dryRun: {
      env: "SYNC_DRY_RUN",
      flag: "dry-run",
      description: "Print the Secret with values redacted instead of writing it",
      default: "false",
      boolean: true,
    },
    timeout: { env: "SYNC_TIMEOUT", flag: "timeout", description: "Deadline for the whole sync run", default: "2m" },
    apiUrl: {
      env: "KUBERNETES_API_URL",
      flag: "kube-api-url",
      description: "Kubernetes API base URL; default https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT, as in a pod",
    },
    tokenFile: {
      env: "KUBERNETES_TOKEN_FILE",
      flag: "kube-token-file",
      description: "Service-account token for the Kubernetes API",
      default: "/var/run/secrets/kubernetes.io/serviceaccount/token",
    },
    caFile: {
      env: "KUBERNETES_CA_FILE",
      flag: "kube-ca-file",
      description: "PEM bundle of the cluster CA that signed the API server's certificate",
      default: "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
    },
    namespaceFile: {
      env: "KUBERNETES_NAMESPACE_FILE",
      flag: "kube-namespace-file",
      description: "File holding the pod's namespace, read when SYNC_NAMESPACE is not set",
      default: "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
    },
  },
} satisfies Record<string, Record<string, Setting>>;

/** Returns citty argument definitions for the given groups of settings. */
export function settingsArgs(...groups: Array<Record<string, Setting>>): ArgsDef {
  const args: ArgsDef = {};
  for (const group of groups) {
    for (const setting of Object.values(group)) {
      if (!setting.flag) continue;
      const suffix = setting.default !== undefined ? ` (default: ${setting.default})` : "";
      const description = `${setting.description}; env ${setting.env}${suffix}`;
      args[setting.flag] = setting.boolean ? { type: "boolean", description } : { type: "string", description };
    }
  }
  return args;
}

/**
 * Reads settings: a flag wins over its variable, a variable over the default. Values are raw
 * strings, or undefined when unset; `config.ts` validates them.
 */
export function readSettings<T extends Record<string, Setting>>(
  group: T,
  args: Record<string, unknown>,
  env: Record<string, string | undefined>,
): { [K in keyof T]: string | undefined } {
  const values = {} as { [K in keyof T]: string | undefined };
  for (const [key, setting] of Object.entries(group) as Array<[keyof T, Setting]>) {
    const flagValue = setting.flag ? args[setting.flag] : undefined;
    const envValue = env[setting.env];
    let chosen = setting.default;
    if (envValue !== undefined && envValue !== "") chosen = envValue;
    if (typeof flagValue === "string") chosen = flagValue;
    if (typeof flagValue === "boolean") chosen = String(flagValue);
    values[key] = chosen;
  }
  return values;
}
