/**
 * Loads the YAML under deploy/ the way Kubernetes reads it (YAML 1.1, so `0440` is octal), and
 * finds the pods, containers and volumes in it. The Helm chart's templates are left out: they are
 * Go templates, not YAML, until Helm renders them.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { parseAllDocuments } from "yaml";
import { ROOT } from "./cli.ts";

export const DEPLOY = join(ROOT, "deploy");

/** One YAML document of a file under deploy/. */
export interface ManifestDocument {
  /** Path relative to the repository root. */
  file: string;
  index: number;
  value: any;
  errors: string[];
}

/** Returns every `.yaml`/`.yml` file under `dir`, without Helm templates. */
export function yamlFiles(dir: string = DEPLOY): string[] {
  const files: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) {
      if (isHelmTemplates(path)) continue;
      files.push(...yamlFiles(path));
    } else if (/\.ya?ml$/.test(name)) {
      files.push(path);
    }
  }
  return files;
}

/** Parses every document of every file; empty documents are skipped. */
export function loadDocuments(files: string[] = yamlFiles()): ManifestDocument[] {
  const documents: ManifestDocument[] = [];
  for (const path of files) {
    const file = relative(ROOT, path);
    const parsed = parseAllDocuments(readFileSync(path, "utf8"), { version: "1.1" });
    const list = Array.isArray(parsed) ? parsed : [parsed];
    list.forEach((document, index) => {
      const errors = document.errors.map((error) => error.message);
      const value = document.toJS();
      if (value === null && errors.length === 0) return;
      documents.push({ file, index, value, errors });
    });
  }
  return documents;
}

/** Parses a multi-document YAML string, such as `kubectl kustomize` output. */
export function parseStream(text: string): any[] {
  return parseAllDocuments(text, { version: "1.1" })
    .map((document) => document.toJS())
    .filter((value) => value !== null);
}

/**
 * Returns the objects a kustomization includes through `resources`, following directories and
 * files recursively. Patches, generators and transformers are not applied: this finds what a
 * kustomization brings in, not what it renders.
 */
export function kustomizationResources(dir: string): any[] {
  const kustomization = parseStream(readFileSync(join(dir, "kustomization.yaml"), "utf8"))[0] ?? {};
  const objects: any[] = [];
  for (const resource of kustomization.resources ?? []) {
    const path = join(dir, resource);
    if (statSync(path).isDirectory()) objects.push(...kustomizationResources(path));
    else objects.push(...parseStream(readFileSync(path, "utf8")).filter(isKubernetesObject));
  }
  return objects;
}

/** True for a Kubernetes object (not a Kustomization, a Chart.yaml or a values file). */
export function isKubernetesObject(value: any): boolean {
  return typeof value?.apiVersion === "string" && typeof value?.kind === "string" && value.kind !== "Kustomization";
}

/** Returns the pod template spec of a Deployment, Job or CronJob, or undefined. */
export function podSpec(object: any): any | undefined {
  switch (object?.kind) {
    case "Deployment":
    case "Job":
      return object.spec?.template?.spec;
    case "CronJob":
      return object.spec?.jobTemplate?.spec?.template?.spec;
    default:
      return undefined;
  }
}

/** Returns every container of a pod spec, init containers first, each marked as init or not. */
export function containers(spec: any): Array<{ container: any; init: boolean }> {
  return [
    ...(spec?.initContainers ?? []).map((container: any) => ({ container, init: true })),
    ...(spec?.containers ?? []).map((container: any) => ({ container, init: false })),
  ];
}

/** True when the container runs one of the agent's images. */
export function isAgent(container: any): boolean {
  return /^scailabs\/(scaivault-|secrets-store-csi-driver-scaivault)/.test(String(container?.image ?? ""));
}

/** Returns the container's `env` as a map of literal values, leaving out entries with valueFrom. */
export function envOf(container: any): Record<string, string> {
  const env: Record<string, string> = {};
  for (const entry of container?.env ?? []) if (typeof entry.value === "string") env[entry.name] = entry.value;
  return env;
}

/** Returns the volume mounted at `mountPath` in `container`, with its mount. */
export function volumeAt(spec: any, container: any, mountPath: string): { mount: any; volume: any } | undefined {
  const mount = (container.volumeMounts ?? []).find((candidate: any) => candidate.mountPath === mountPath);
  if (!mount) return undefined;
  return { mount, volume: (spec.volumes ?? []).find((volume: any) => volume.name === mount.name) };
}

function isHelmTemplates(path: string): boolean {
  const parts = relative(DEPLOY, path).split("/");
  return parts[0] === "helm" && parts.includes("templates");
}
