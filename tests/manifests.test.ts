/**
 * The manifests under deploy/. Every document parses, validates against the Kubernetes schemas of
 * kubernetes-models (offline) and carries no field those schemas do not know. Every kustomization
 * renders where kubectl is present. The agent containers use the agent's own defaults and
 * configuration grammar, run hardened, and get only the RBAC their commands need.
 */
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { loadInitConfig, loadSidecarConfig } from "../src/config.ts";
import { parseAllowedUrls } from "../src/csi/allowed-urls.ts";
import { parseMountAttributes, POD_NAME, POD_NAMESPACE, POD_UID, SERVICE_ACCOUNT_NAME, SERVICE_ACCOUNT_TOKENS } from "../src/csi/attributes.ts";
import { resolveTarget } from "../src/files.ts";
import { parseDynamicMappings, parseSecretMappings } from "../src/mapping.ts";
import { SETTINGS } from "../src/options.ts";
import { EXIT_CODES } from "../src/errors.ts";
import { loadSyncConfig } from "../src/sync-config.ts";
import { formatTarget } from "../src/sync-restart.ts";
import { ROOT } from "./helpers/cli.ts";
import {
  containers,
  DEPLOY,
  envOf,
  isAgent,
  isKubernetesObject,
  kustomizationResources,
  loadDocuments,
  parseStream,
  podSpec,
  volumeAt,
  yamlFiles,
} from "./helpers/manifests.ts";

const documents = loadDocuments();
const kustomizations = documents.filter((document) => document.value?.kind === "Kustomization");
const kustomizationDirs = kustomizations.map((document) => dirname(join(ROOT, document.file)));
/** Files that kustomizations apply as patches: partial objects, checked as such. */
const patchFiles = new Set(
  kustomizations.flatMap((document) =>
    (document.value.patches ?? []).filter((patch: any) => patch.path).map((patch: any) => join(dirname(document.file), patch.path)),
  ),
);
const patches = documents.filter((document) => patchFiles.has(document.file));
const objects = documents.filter((document) => isKubernetesObject(document.value) && !patchFiles.has(document.file));
const HAS_KUBECTL = spawnSync("kubectl", ["version", "--client"], { stdio: "ignore" }).status === 0;

/** The agent's defaults, read from the settings table rather than repeated here. */
const TOKEN_FILE = SETTINGS.connection.tokenFile.default;
const AUDIENCE = SETTINGS.connection.audience.default;
const OUTPUT_DIR = SETTINGS.output.outputDirs.default.split(",")[0]!;
const FILE_MODE = Number.parseInt(SETTINGS.output.fileMode.default, 8);
const HEALTH_PORT = Number(SETTINGS.sidecar.healthAddr.default.split(":").at(-1));
const VERSION = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version as string;

/** Values that mark a Secret as a template to fill in, not one to apply. */
const PLACEHOLDER = /REPLACE_WITH_|CHANGE_?ME|<[^>]*>|\.\.\./i;

/** Returns the values of a Secret's data (decoded) and stringData. */
function secretValues(secret: any): string[] {
  return [
    ...Object.values(secret.data ?? {}).map((value) => Buffer.from(String(value), "base64").toString("utf8")),
    ...Object.values(secret.stringData ?? {}).map(String),
  ];
}

const GUIDE_SECRETS = "environments/production/billing/database -> /run/secrets/db.json\nenvironments/production/billing/stripe   -> /run/secrets/stripe.json\n";
const GUIDE_WATCH_PATHS = "environments/production/billing/database -> /run/secrets/db.json\n";
const GUIDE_DYNAMIC = "engine=postgres-prod role=readonly ttl=2h -> /run/secrets/db.json\n";

function object(file: string, kind: string): any {
  const found = objects.find((document) => document.file === file && document.value.kind === kind);
  if (!found) throw new Error(`no ${kind} in ${file}`);
  return found.value;
}

function agentContainers(spec: any): any[] {
  return containers(spec).map((entry) => entry.container).filter(isAgent);
}

/** Returns the kubernetes-models class for `apiVersion` and `kind`, or undefined. */
async function modelFor(apiVersion: string, kind: string): Promise<any> {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const module = group === "" ? `kubernetes-models/${version}/${kind}` : `kubernetes-models/${group}/${version}/${kind}`;
  try {
    return (await import(module))[kind];
  } catch {
    return undefined;
  }
}

/** Checks a SecretProviderClass, which has no built-in schema: its fields and its provider. */
function secretProviderClassProblems(value: any): string[] {
  const problems: string[] = [];
  if (value.apiVersion !== "secrets-store.csi.x-k8s.io/v1") problems.push(`apiVersion ${value.apiVersion}`);
  if (typeof value.metadata?.name !== "string") problems.push("metadata.name missing");
  const unknown = Object.keys(value.spec ?? {}).filter((key) => !["provider", "parameters", "secretObjects"].includes(key));
  if (unknown.length) problems.push(`unknown spec fields ${unknown.join(", ")}`);
  if (value.spec?.provider !== "scaivault") problems.push(`provider ${value.spec?.provider}`);
  for (const [key, parameter] of Object.entries(value.spec?.parameters ?? {})) {
    if (typeof parameter !== "string") problems.push(`parameter ${key} is not a string`);
  }
  return problems;
}

describe("manifest schemas", () => {
  test("deploy has manifests for every pattern", () => {
    const dirs = new Set(kustomizationDirs.map((dir) => dir.slice(DEPLOY.length + 1)));
    for (const name of ["init", "sidecar", "native-sidecar", "dynamic", "identity", "client-credentials", "rolling-restart", "sync-job", "csi"]) {
      expect(dirs.has(`base/${name}`)).toBe(true);
    }
    for (const name of ["init", "sidecar", "native-sidecar", "dynamic", "client-credentials", "rotation", "pre-deploy-sync", "csi"]) {
      expect(dirs.has(`examples/${name}`)).toBe(true);
    }
  });

  test("every YAML file parses", () => {
    expect(yamlFiles().length).toBeGreaterThan(20);
    const failures = documents.filter((document) => document.errors.length).map((document) => `${document.file}: ${document.errors.join("; ")}`);
    expect(failures).toEqual([]);
  });

  test("every document is an object or a kustomization", () => {
    const others = documents
      .filter((document) => !document.file.startsWith("deploy/helm/"))
      .filter((document) => !isKubernetesObject(document.value) && document.value?.kind !== "Kustomization");
    expect(others.map((document) => document.file)).toEqual([]);
  });

  test("every object validates against its schema", async () => {
    const failures: string[] = [];
    for (const { file, value } of objects) {
      if (value.kind === "SecretProviderClass") {
        failures.push(...secretProviderClassProblems(value).map((problem) => `${file}: ${problem}`));
        continue;
      }

      const Model = await modelFor(value.apiVersion, value.kind);
      if (!Model) {
        failures.push(`${file}: no schema for ${value.apiVersion} ${value.kind}`);
        continue;
      }
      try {
        new Model(value).validate();
      } catch (error) {
        failures.push(`${file}: ${(error as Error).message}`);
      }
    }
    expect(failures).toEqual([]);
  });

  test("schema validation rejects a broken object", async () => {
    const Deployment = await modelFor("apps/v1", "Deployment");
    const broken = structuredClone(object("deploy/base/init/deployment.yaml", "Deployment"));
    broken.spec.template.spec.containers[0].ports = [{ containerPort: "http" }];
    delete broken.spec.selector;

    expect(() => new Deployment(broken).validate()).toThrow();
    expect(() => new Deployment(object("deploy/base/init/deployment.yaml", "Deployment")).validate()).not.toThrow();
  });

  test("objects carry no unknown fields", () => {
    // TypeScript's excess-property check on object literals finds fields that the schema types of
    // kubernetes-models lack, which their JSON-schema validation lets through. The last entry is
    // a deliberate typo: tsc fails unless it reports it.
    // Patches are checked as deep partial objects: every field optional, none unknown.
    const checked = [...objects, ...patches].filter((document) => document.value.kind !== "SecretProviderClass");
    const lines = ["type DeepPartial<T> = T extends Array<infer E> ? Array<DeepPartial<E>> : T extends object ? { [K in keyof T]?: DeepPartial<T[K]> } : T;"];
    const imports = new Map<string, string>();
    const files: string[] = [];

    checked.forEach(({ file, value }, index) => {
      const [group, version] = value.apiVersion.includes("/") ? value.apiVersion.split("/") : ["", value.apiVersion];
      const module = group === "" ? `kubernetes-models/${version}/${value.kind}` : `kubernetes-models/${group}/${version}/${value.kind}`;
      const alias = `I${value.kind}_${imports.size}`;
      if (!imports.has(module)) imports.set(module, alias);
      const type = patchFiles.has(file) ? `DeepPartial<${imports.get(module)}>` : imports.get(module);
      lines.push(`export const object${index}: ${type} = ${JSON.stringify(value)};`);
      files.push(file);
    });
    imports.set("kubernetes-models/v1/Container", imports.get("kubernetes-models/v1/Container") ?? "IContainer_typo");
    lines.push(`// @ts-expect-error: the typo readOnlyRootFileSystem must be reported`);
    lines.push(`export const typo: ${imports.get("kubernetes-models/v1/Container")} = {name: "x", securityContext: {readOnlyRootFileSystem: true}};`);

    const header = [...imports].map(([module, alias]) => `import type { I${module.split("/").at(-1)} as ${alias} } from "${module}";`);
    mkdirSync(join(ROOT, ".tmp"), { recursive: true });
    const dir = mkdtempSync(join(ROOT, ".tmp", "manifest-types-"));
    try {
      writeFileSync(join(dir, "check.ts"), [...header, ...lines].join("\n") + "\n");
      writeFileSync(
        join(dir, "tsconfig.json"),
        JSON.stringify({ compilerOptions: { strict: true, noEmit: true, module: "esnext", moduleResolution: "bundler", target: "es2022", skipLibCheck: true, types: [] }, files: ["check.ts"] }),
      );
      const result = spawnSync(join(ROOT, "node_modules/.bin/tsc"), ["-p", dir], { encoding: "utf8" });
      // Name the manifest file instead of the line of check.ts that contains it.
      const report = `${result.stdout}${result.stderr}`.replace(/\S*check\.ts\((\d+),\d+\)/g, (_, line) => files[Number(line) - header.length - 2] ?? "check.ts");
      expect(report).toBe("");
      expect(result.status).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("kustomizations name files that exist", () => {
    const missing: string[] = [];
    for (const dir of kustomizationDirs) {
      const kustomization = parseStream(readFileSync(join(dir, "kustomization.yaml"), "utf8"))[0];
      const paths = [...(kustomization.resources ?? []), ...(kustomization.patches ?? []).map((patch: any) => patch.path).filter(Boolean)];
      for (const path of paths) if (!existsSync(join(dir, path))) missing.push(`${dir}: ${path}`);
    }
    expect(missing).toEqual([]);
  });

  test.skipIf(!HAS_KUBECTL)("kubectl kustomize renders every base and example", async () => {
    const failures: string[] = [];
    for (const dir of kustomizationDirs) {
      const result = spawnSync("kubectl", ["kustomize", dir], { encoding: "utf8", timeout: 60_000 });
      if (result.status !== 0) {
        failures.push(`${dir}: ${result.stderr}`);
        continue;
      }

      for (const rendered of parseStream(result.stdout)) {
        if (rendered.kind === "SecretProviderClass") continue;
        const Model = await modelFor(rendered.apiVersion, rendered.kind);
        try {
          new Model(rendered).validate();
        } catch (error) {
          failures.push(`${dir} ${rendered.kind}: ${(error as Error).message}`);
        }
        if (dir.includes("/examples/") && rendered.metadata?.namespace !== "billing") failures.push(`${dir} ${rendered.kind}: namespace is not billing`);
        if (dir.includes("/examples/") && rendered.kind === "Secret" && secretValues(rendered).some((value) => PLACEHOLDER.test(value))) {
          failures.push(`${dir}: renders the Secret ${rendered.metadata.name} with placeholder values`);
        }
      }
    }
    expect(failures).toEqual([]);
  });
});

describe("examples and Secrets", () => {
  const examples = kustomizationDirs.filter((dir) => dir.startsWith(join(DEPLOY, "examples") + "/"));

  test("placeholder check finds the client-credentials base", () => {
    const secrets = kustomizationResources(join(DEPLOY, "base/client-credentials")).filter((object) => object.kind === "Secret");

    expect(secrets.length).toBe(1);
    expect(secretValues(secrets[0]).every((value) => PLACEHOLDER.test(value))).toBe(true);
  });

  test("no example brings in a placeholder Secret", () => {
    expect(examples.length).toBeGreaterThan(5);
    const offending: string[] = [];
    for (const dir of examples) {
      for (const secret of kustomizationResources(dir).filter((object) => object.kind === "Secret")) {
        if (secretValues(secret).some((value) => PLACEHOLDER.test(value))) offending.push(`${dir}: ${secret.metadata.name}`);
      }
    }
    expect(offending).toEqual([]);
  });

  test("client-credentials example mounts the Secret made by hand", () => {
    const kustomization = parseStream(readFileSync(join(DEPLOY, "examples/client-credentials/kustomization.yaml"), "utf8"))[0];
    const patch = patches.find((document) => document.file === "deploy/examples/client-credentials/client-credentials-patch.yaml")!.value;

    expect(kustomization.resources).not.toContain("../../base/client-credentials");
    expect(patch.spec.template.spec.volumes[0].secret.secretName).toBe("scaivault-client-credentials");
    expect(readFileSync(join(DEPLOY, "examples/client-credentials/kustomization.yaml"), "utf8")).toContain("kubectl -n billing create secret generic scaivault-client-credentials");
  });
});

describe("manifests and the agent", () => {
  const patternFiles = ["deploy/base/init/deployment.yaml", "deploy/base/sidecar/deployment.yaml", "deploy/base/native-sidecar/deployment.yaml", "deploy/base/dynamic/deployment.yaml"];

  test("token volume matches the agent's defaults", () => {
    for (const file of [...patternFiles, "deploy/base/sync-job/job.yaml"]) {
      const workload = objects.find((document) => document.file === file)!.value;
      const spec = podSpec(workload);

      for (const container of agentContainers(spec)) {
        const env = envOf(container);
        expect(env.SCAIVAULT_TOKEN_FILE ?? TOKEN_FILE).toBe(TOKEN_FILE);
        expect(env.SCAIVAULT_AUDIENCE ?? AUDIENCE).toBe(AUDIENCE);

        const token = volumeAt(spec, container, dirname(TOKEN_FILE));
        expect(token?.mount.readOnly).toBe(true);
        const source = token?.volume?.projected?.sources?.[0]?.serviceAccountToken;
        expect(source?.audience).toBe(AUDIENCE);
        expect(source?.path).toBe(basename(TOKEN_FILE));
      }
    }
  });

  test("output volume matches the agent's defaults", () => {
    for (const file of patternFiles) {
      const spec = podSpec(objects.find((document) => document.file === file)!.value);

      for (const { container } of containers(spec)) {
        const output = volumeAt(spec, container, OUTPUT_DIR);
        expect(output?.volume?.emptyDir?.medium).toBe("Memory");
        // The agent writes; the application only reads.
        expect(output?.mount.readOnly ?? false).toBe(!isAgent(container));
      }
    }
  });

  test("init and sidecar share volume names and paths", () => {
    const layout = (file: string) => {
      const spec = podSpec(objects.find((document) => document.file === file)!.value);
      const pairs = new Set<string>();
      for (const { container } of containers(spec)) for (const mount of container.volumeMounts ?? []) pairs.add(`${mount.name} ${mount.mountPath}`);
      return [...pairs].sort();
    };

    const init = layout("deploy/base/init/deployment.yaml");
    expect(init).toEqual([`scaivault-secrets ${OUTPUT_DIR}`, `scaivault-token ${dirname(TOKEN_FILE)}`]);
    for (const file of patternFiles.slice(1)) expect(layout(file)).toEqual(init);
  });

  test("the guide's configuration appears as written", () => {
    const env = (file: string, name: string) => envOf(agentContainers(podSpec(objects.find((document) => document.file === file)!.value)).find((c) => c.name === name));

    const init = env("deploy/base/init/deployment.yaml", "scaivault-init");
    expect(init.SCAIVAULT_URL).toBe("https://scaivault.scailabs.ai");
    expect(init.SCAIVAULT_TOKEN_FILE).toBe("/var/run/secrets/scaivault/token");
    expect(init.SECRETS).toBe(GUIDE_SECRETS);

    for (const file of ["deploy/base/sidecar/deployment.yaml", "deploy/base/native-sidecar/deployment.yaml"]) {
      const sidecar = env(file, "scaivault-sidecar");
      expect(sidecar.WATCH_PATHS).toBe(GUIDE_WATCH_PATHS);
      expect(sidecar.REFRESH_INTERVAL).toBe("5m");
      expect(sidecar.RELOAD_SIGNAL).toBe("SIGHUP");
      expect(sidecar.RELOAD_TARGET).toBe("billing");
    }
    expect(env("deploy/base/dynamic/deployment.yaml", "scaivault-sidecar").DYNAMIC).toBe(GUIDE_DYNAMIC);
  });

  test("agent environments pass the agent's validation", () => {
    for (const { file, value } of objects) {
      const spec = podSpec(value);
      for (const container of agentContainers(spec)) {
        const env = envOf(container);
        const command = [...(container.command ?? []), ...(container.args ?? [])].join(" ");
        const layout = { dirs: [OUTPUT_DIR], prefix: "" };

        if (command.endsWith(" sync")) {
          const config = loadSyncConfig({}, { ...env, KUBERNETES_SERVICE_HOST: "10.96.0.1", KUBERNETES_SERVICE_PORT: "443", SYNC_NAMESPACE: "billing" });
          expect(config.mappings.length).toBeGreaterThan(0);
        } else if (String(container.image).includes("scaivault-init")) {
          const config = loadInitConfig({}, env);
          for (const mapping of config.secrets) expect(() => resolveTarget(mapping.target, layout)).not.toThrow();
        } else if (String(container.image).includes("scaivault-sidecar")) {
          loadSidecarConfig({}, env);
          const watched = parseSecretMappings(env.WATCH_PATHS ?? "", { variable: "WATCH_PATHS" });
          const dynamic = parseDynamicMappings(env.DYNAMIC ?? "");
          for (const mapping of [...watched, ...dynamic]) expect(() => resolveTarget(mapping.target, layout)).not.toThrow();
        } else {
          throw new Error(`${file}: no check for agent container ${container.name}`);
        }
      }
    }
  });

  test("sidecars can reach the application process", () => {
    for (const file of ["deploy/base/sidecar/deployment.yaml", "deploy/base/native-sidecar/deployment.yaml", "deploy/base/dynamic/deployment.yaml"]) {
      const spec = podSpec(objects.find((document) => document.file === file)!.value);
      const sidecar = agentContainers(spec).find((container) => container.name === "scaivault-sidecar");

      expect(envOf(sidecar).RELOAD_TARGET).toBe("billing");
      expect(spec.shareProcessNamespace).toBe(true);
      // Signals cross containers only between equal user ids when no container keeps CAP_KILL.
      for (const { container } of containers(spec)) expect(container.securityContext?.runAsUser ?? spec.securityContext.runAsUser).toBe(spec.securityContext.runAsUser);
    }
  });

  test("sidecars probe the agent's health port", () => {
    for (const file of ["deploy/base/sidecar/deployment.yaml", "deploy/base/native-sidecar/deployment.yaml", "deploy/base/dynamic/deployment.yaml"]) {
      const spec = podSpec(objects.find((document) => document.file === file)!.value);
      const sidecar = agentContainers(spec).find((container) => container.name === "scaivault-sidecar");

      expect(sidecar.ports).toEqual([{ name: "health", containerPort: HEALTH_PORT, protocol: "TCP" }]);
      expect(sidecar.livenessProbe.httpGet.path).toBe("/healthz");
      expect(sidecar.readinessProbe.httpGet.path).toBe("/readyz");
    }

    for (const file of ["deploy/base/native-sidecar/deployment.yaml", "deploy/base/dynamic/deployment.yaml"]) {
      const spec = podSpec(objects.find((document) => document.file === file)!.value);
      const sidecar = spec.initContainers.find((container: any) => container.name === "scaivault-sidecar");

      expect(sidecar.restartPolicy).toBe("Always");
      expect(sidecar.startupProbe.httpGet.path).toBe("/readyz");
    }
  });

  test("patches apply to objects of the bases", () => {
    expect(patches.length).toBeGreaterThan(0);
    for (const { value } of patches) {
      const target = objects.find((document) => document.value.kind === value.kind && document.value.metadata.name === value.metadata.name);
      expect(target).toBeDefined();
    }
  });

  test("every container runs hardened with sized resources", () => {
    const problems: string[] = [];
    for (const { file, value } of objects) {
      const spec = podSpec(value);
      if (!spec) continue;

      if (spec.securityContext?.runAsNonRoot !== true) problems.push(`${file}: pod runAsNonRoot`);
      if (spec.securityContext?.seccompProfile?.type !== "RuntimeDefault") problems.push(`${file}: pod seccompProfile`);
      for (const { container } of containers(spec)) {
        const context = container.securityContext ?? {};
        const where = `${file} ${container.name}`;
        if (context.allowPrivilegeEscalation !== false) problems.push(`${where}: allowPrivilegeEscalation`);
        if (context.readOnlyRootFilesystem !== true) problems.push(`${where}: readOnlyRootFilesystem`);
        if (context.runAsNonRoot !== true) problems.push(`${where}: runAsNonRoot`);
        if (JSON.stringify(context.capabilities?.drop) !== '["ALL"]') problems.push(`${where}: capabilities.drop`);
        if (context.privileged === true || context.capabilities?.add?.length) problems.push(`${where}: privileges added`);
        if (!container.resources?.requests?.memory || !container.resources?.limits?.memory) problems.push(`${where}: memory request and limit`);
        if (!container.resources?.requests?.cpu) problems.push(`${where}: cpu request`);
      }
    }
    expect(problems).toEqual([]);
  });

  test("agent images carry the package version", () => {
    const images: string[] = [];
    for (const { value } of objects) for (const { container } of containers(podSpec(value))) if (isAgent(container)) images.push(container.image);
    expect(images.length).toBeGreaterThan(5);
    for (const image of images) expect(image.split(":")[1]).toBe(VERSION);

    for (const document of kustomizations) {
      for (const override of document.value.images ?? []) expect(override.newTag).toBe(VERSION);
    }
  });

  test("the default file mode suits the application", () => {
    // Files are written 0644 unless a line sets mode=, so an application with another user id
    // in the same pod can read them.
    expect(FILE_MODE & 0o044).toBe(0o044);
  });
});

describe("RBAC and ordering", () => {
  test("rolling restart may only restart its Deployment", () => {
    const role = object("deploy/base/rolling-restart/role.yaml", "Role");
    const cronJob = object("deploy/base/rolling-restart/cronjob.yaml", "CronJob");
    const binding = object("deploy/base/rolling-restart/rolebinding.yaml", "RoleBinding");
    const spec = podSpec(cronJob);

    expect(role.rules).toEqual([{ apiGroups: ["apps"], resources: ["deployments"], resourceNames: ["billing"], verbs: ["get", "patch"] }]);
    expect(spec.containers[0].args).toEqual(["rollout", "restart", "deployment/billing"]);
    expect(object("deploy/base/init/deployment.yaml", "Deployment").metadata.name).toBe("billing");
    expect(binding.roleRef.name).toBe(role.metadata.name);
    expect(binding.subjects).toEqual([{ kind: "ServiceAccount", name: spec.serviceAccountName }]);
    expect(cronJob.spec.concurrencyPolicy).toBe("Forbid");
    expect(readFileSync(join(DEPLOY, "base/rolling-restart/cronjob.yaml"), "utf8")).toContain("one minor version");
  });

  test("sync may only write its Secret", () => {
    const role = object("deploy/base/sync-job/role.yaml", "Role");
    const job = object("deploy/base/sync-job/job.yaml", "Job");
    const binding = object("deploy/base/sync-job/rolebinding.yaml", "RoleBinding");
    const secretName = envOf(podSpec(job).containers[0]).SYNC_SECRET_NAME;

    expect(role.rules).toEqual([
      { apiGroups: [""], resources: ["secrets"], resourceNames: [secretName], verbs: ["get", "update"] },
      // SYNC_RESTART reads the Deployment and patches its pod template.
      { apiGroups: ["apps"], resources: ["deployments"], resourceNames: ["billing"], verbs: ["get", "patch"] },
      // create cannot be limited by name: the name is unknown when the request is authorized.
      { apiGroups: [""], resources: ["secrets"], verbs: ["create"] },
    ]);
    expect(binding.roleRef.name).toBe(role.metadata.name);
    expect(binding.subjects).toEqual([{ kind: "ServiceAccount", name: podSpec(job).serviceAccountName }]);
  });

  test("sync restarts the Deployment that reads its Secret", () => {
    const job = object("deploy/base/sync-job/job.yaml", "Job");
    const role = object("deploy/base/sync-job/role.yaml", "Role");
    const deployment = object("deploy/examples/pre-deploy-sync/deployment.yaml", "Deployment");
    const env = envOf(podSpec(job).containers[0]);
    const config = loadSyncConfig({}, { ...env, KUBERNETES_SERVICE_HOST: "10.96.0.1", SYNC_NAMESPACE: "billing" });

    expect(config.restart.map(formatTarget)).toEqual([`deployment/${deployment.metadata.name}`]);
    const granted = role.rules.find((rule: any) => rule.resources.includes("deployments"));
    expect(granted.resourceNames).toEqual(config.restart.map((target) => target.name));
    // The application reads the Secret through environment variables, fixed when a container starts.
    const readsEnv = podSpec(deployment).containers.some((container: any) => (container.env ?? []).some((entry: any) => entry.valueFrom?.secretKeyRef?.name === env.SYNC_SECRET_NAME));
    expect(readsEnv).toBe(true);
  });

  test("sync Job fails at once on unrecoverable exits", () => {
    const job = object("deploy/base/sync-job/job.yaml", "Job");
    const spec = podSpec(job);
    const [failJob, ignore] = job.spec.podFailurePolicy.rules;
    const unrecoverable = [EXIT_CODES.config, EXIT_CODES.auth, EXIT_CODES.forbidden, EXIT_CODES.not_found];

    expect(spec.restartPolicy).toBe("Never");
    expect(failJob).toEqual({ action: "FailJob", onExitCodes: { containerName: spec.containers[0].name, operator: "In", values: unrecoverable } });
    expect(unrecoverable).toEqual([2, 3, 4, 5]);
    expect(ignore).toEqual({ action: "Ignore", onPodConditions: [{ type: "DisruptionTarget" }] });
    expect(job.spec.backoffLimit).toBeGreaterThan(0);
  });

  test("sync Job runs before the Deployment", () => {
    const wave = (value: any) => Number(value.metadata.annotations?.["argocd.argoproj.io/sync-wave"] ?? 0);
    const job = object("deploy/base/sync-job/job.yaml", "Job");
    const deployment = object("deploy/examples/pre-deploy-sync/deployment.yaml", "Deployment");

    expect(job.metadata.annotations["argocd.argoproj.io/hook"]).toBe("Sync");
    expect(wave(job)).toBeLessThan(wave(deployment));
    for (const kind of ["ServiceAccount", "Role", "RoleBinding"]) {
      const rbac = objects.find((document) => document.file.startsWith("deploy/base/sync-job/") && document.value.kind === kind)!.value;
      expect(wave(rbac)).toBeLessThan(wave(job));
    }

    const keys = new Set(parseSecretMappings(envOf(podSpec(job).containers[0]).SYNC_MAPPING!, { variable: "SYNC_MAPPING", targetKind: "key" }).map((m) => m.target));
    for (const container of podSpec(deployment).containers) {
      for (const entry of container.env ?? []) if (entry.valueFrom?.secretKeyRef) expect(keys.has(entry.valueFrom.secretKeyRef.key)).toBe(true);
    }
  });

  test("identity carries the ScaiKey role", () => {
    const account = object("deploy/base/identity/serviceaccount.yaml", "ServiceAccount");
    expect(account.metadata.annotations["scaikey.scailabs.ai/role"]).toBe("sa:billing-prod");
    for (const file of patternFilesWithIdentity()) expect(podSpec(objects.find((document) => document.file === file)!.value).serviceAccountName).toBe(account.metadata.name);
  });

  test("SecretProviderClass parses with the provider's parser", () => {
    const spc = object("deploy/base/csi/secretproviderclass.yaml", "SecretProviderClass");
    const deployment = object("deploy/base/csi/deployment.yaml", "Deployment");
    const spec = podSpec(deployment);
    const attributes = {
      ...spc.spec.parameters,
      secretProviderClass: spc.metadata.name,
      [POD_NAME]: "billing-0",
      [POD_NAMESPACE]: "billing",
      [POD_UID]: "6a1f0e4c-0000-4000-8000-000000000000",
      [SERVICE_ACCOUNT_NAME]: spec.serviceAccountName,
      [SERVICE_ACCOUNT_TOKENS]: JSON.stringify({ [AUDIENCE]: { token: "header.payload.signature", expirationTimestamp: new Date(Date.now() + 3_600_000).toISOString() } }),
    };

    const mount = parseMountAttributes(JSON.stringify(attributes), "420", parseAllowedUrls("https://*"));

    expect(mount.audience).toBe(AUDIENCE);
    expect(mount.objects.map((entry) => entry.file)).toEqual(["db.json", "stripe.json"]);
    expect(spec.volumes[0].csi.volumeAttributes.secretProviderClass).toBe(spc.metadata.name);
  });
});

function patternFilesWithIdentity(): string[] {
  return ["deploy/base/init/deployment.yaml", "deploy/base/sidecar/deployment.yaml", "deploy/base/native-sidecar/deployment.yaml", "deploy/base/dynamic/deployment.yaml", "deploy/base/csi/deployment.yaml"];
}
