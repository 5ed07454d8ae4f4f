/**
 * SYNC_RESTART: after sync, roll out the pods of the named workloads whose pods may hold other
 * secret versions. An application that reads the Secret through `secretKeyRef` or `envFrom` gets
 * its values only when a container starts, so an updated Secret reaches it only through new pods.
 *
 * The pod template annotation SECRET_VERSIONS_ANNOTATION records a hash of the synced
 * `path@version` pairs. Sync patches it when it differs from the hash of this run, which changes
 * the pod template and makes the controller roll out new pods, as `kubectl rollout restart` does.
 * When the hash is already there, nothing is patched and no pod restarts.
 */
import { createHash } from "node:crypto";
import { AgentError } from "./errors.ts";
import type { KubeClient, WorkloadKind } from "./kube.ts";
import { getLogger } from "./log.ts";

const log = getLogger("sync");

/** Pod template annotation holding the hash of the secret versions the pods were started for. */
export const SECRET_VERSIONS_ANNOTATION = "scaivault.scailabs.ai/secret-versions";

/** A workload to restart, in the Secret's namespace. */
export interface RestartTarget {
  kind: WorkloadKind;
  name: string;
}

/** Outcome of the restart check of one workload. */
export type RestartDecision = "restart" | "current" | "missing";

/**
 * Parses SYNC_RESTART: `kind/name` items separated by commas or whitespace, with the kind names
 * kubectl accepts (`deployment`, `deploy`, `statefulset`, `sts`, `daemonset`, `ds`).
 *
 * @throws AgentError `config` listing every invalid item.
 */
export function parseRestartTargets(text: string | undefined): RestartTarget[] {
  const targets: RestartTarget[] = [];
  const problems: string[] = [];

  for (const item of (text ?? "").split(/[\s,]+/).filter(Boolean)) {
    const [kindName, name, ...rest] = item.split("/");
    const kind = KIND_NAMES[kindName!.toLowerCase()];

    if (kind === undefined || name === undefined || rest.length > 0) {
      problems.push(`"${item}" is not kind/name; write deployment/NAME, statefulset/NAME or daemonset/NAME`);
    } else if (name.length > 253 || !DNS_SUBDOMAIN.test(name)) {
      problems.push(`"${name}" in "${item}" is no valid name: use lower-case letters, digits, "-" and "."`);
    } else if (targets.some((target) => target.kind === kind && target.name === name)) {
      problems.push(`"${item}" is given twice`);
    } else {
      targets.push({ kind, name });
    }
  }

  if (problems.length) throw new AgentError("config", `Invalid SYNC_RESTART: ${problems.join("; ")}`);
  return targets;
}

/** Returns `deployment/billing` for a target, as kubectl writes it. */
export function formatTarget(target: RestartTarget): string {
  return `${target.kind.toLowerCase()}/${target.name}`;
}

/** Returns the annotation value for the synced versions: a SHA-256 of the sorted `path@version` lines. */
export function secretVersionsHash(sources: Record<string, number>): string {
  const lines = Object.keys(sources)
    .sort()
    .map((path) => `${path}@${sources[path]}\n`);
  return `sha256:${createHash("sha256").update(lines.join("")).digest("hex").slice(0, 32)}`;
}

/**
 * Reads the workload and decides: "missing" when it does not exist, "current" when its pod
 * template already carries `hash`, else "restart".
 */
export async function checkRestart(kube: KubeClient, namespace: string, target: RestartTarget, hash: string): Promise<RestartDecision> {
  const workload = await kube.getWorkload(namespace, target.kind, target.name);
  if (!workload) return "missing";
  return workload.spec?.template?.metadata?.annotations?.[SECRET_VERSIONS_ANNOTATION] === hash ? "current" : "restart";
}

/**
 * Restarts every target whose pods may hold other secret versions than `sources`.
 *
 * @returns the targets that were patched, as `kind/name`.
 * @throws AgentError of the failed request, its message saying that the Secret itself was written.
 */
export async function restartWorkloads(
  kube: KubeClient,
  namespace: string,
  targets: RestartTarget[],
  sources: Record<string, number>,
  secretState: string,
): Promise<string[]> {
  const hash = secretVersionsHash(sources);
  const restarted: string[] = [];

  for (const target of targets) {
    const workload = formatTarget(target);
    try {
      const decision = await checkRestart(kube, namespace, target, hash);

      if (decision === "missing") {
        // Pods that start later read the Secret as it is now, so there is nothing to restart.
        log.warn("Workload to restart not found, leaving it", { workload, namespace });
        continue;
      }
      if (decision === "current") {
        log.info("Workload already runs these secret versions", { workload, namespace, hash });
        continue;
      }

      const patched = await kube.patchPodTemplateAnnotations(namespace, target.kind, target.name, { [SECRET_VERSIONS_ANNOTATION]: hash });
      log.info("Patched pod template, so the workload rolls out new pods", { workload, namespace, hash, generation: patched.metadata.generation });
      restarted.push(workload);
    } catch (error) {
      if (!(error instanceof AgentError)) throw error;
      throw new AgentError(
        error.code,
        `${error.message}. The Secret is ${secretState}, but the pods of ${workload} keep the values they started with until they restart`,
        { cause: error, status: error.status, serverCode: error.serverCode },
      );
    }
  }

  return restarted;
}

// ---------------------------------------------------------------------------------------------

const KIND_NAMES: Record<string, WorkloadKind> = {
  deployment: "Deployment",
  deployments: "Deployment",
  deploy: "Deployment",
  statefulset: "StatefulSet",
  statefulsets: "StatefulSet",
  sts: "StatefulSet",
  daemonset: "DaemonSet",
  daemonsets: "DaemonSet",
  ds: "DaemonSet",
};

/** RFC 1123 subdomain: the rule for workload names. */
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
