/**
 * The Helm chart secrets-store-csi-driver-scaivault, checked without the helm binary. Its YAML
 * parses, and its templates render (tests/helpers/helm-template.ts) with the default values and
 * with every optional value set. The rendered objects and the README's examples validate against
 * the Kubernetes schemas of the kubernetes-models package, and the rendered settings match the
 * provider's own.
 */
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parse, parseAllDocuments } from "yaml";
import { DaemonSet } from "kubernetes-models/apps/v1/DaemonSet";
import { CSIDriver } from "kubernetes-models/storage.k8s.io/v1/CSIDriver";
import { Pod } from "kubernetes-models/v1/Pod";
import { ServiceAccount } from "kubernetes-models/v1/ServiceAccount";
import { parseAllowedUrls } from "../src/csi/allowed-urls.ts";
import { parseMountAttributes } from "../src/csi/attributes.ts";
import { CSI_CONNECTION_SETTINGS } from "../src/csi/config.ts";
import { SETTINGS } from "../src/options.ts";
import { ROOT } from "./helpers/cli.ts";
import { renderChart, type ChartContext } from "./helpers/helm-template.ts";

const CHART = join(ROOT, "deploy/helm/secrets-store-csi-driver-scaivault");
const chart = parse(readFileSync(join(CHART, "Chart.yaml"), "utf8")) as Record<string, unknown>;
const defaults = parse(readFileSync(join(CHART, "values.yaml"), "utf8")) as Record<string, unknown>;
const templates = Object.fromEntries(readdirSync(join(CHART, "templates")).map((name) => [name, readFileSync(join(CHART, "templates", name), "utf8")]));
const readme = readFileSync(join(CHART, "README.md"), "utf8");

type K8sObject = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string }; [key: string]: unknown };

describe("helm chart", () => {
  test("Chart.yaml names the chart and the agent version", () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string };

    expect(chart).toMatchObject({ apiVersion: "v2", name: "secrets-store-csi-driver-scaivault", type: "application" });
    expect(chart.appVersion).toBe(pkg.version);
  });

  test("default values render a valid DaemonSet and ServiceAccount", () => {
    const objects = render(defaults);

    expect(objects.map((object) => `${object.kind}/${object.metadata.name}`)).toEqual([
      "DaemonSet/secrets-store-csi-driver-scaivault",
      "ServiceAccount/secrets-store-csi-driver-scaivault",
    ]);
    for (const object of objects) expect(() => validate(object)).not.toThrow();
  });

  test("rendered DaemonSet carries the default values", () => {
    const daemonSet = render(defaults).find((object) => object.kind === "DaemonSet")!;
    const pod = (daemonSet.spec as any).template.spec;
    const container = pod.containers[0];
    const env = Object.fromEntries(container.env.map((entry: { name: string; value: string }) => [entry.name, entry.value]));

    expect(daemonSet.metadata.namespace).toBe("kube-system");
    expect(container.image).toBe(`scailabs/secrets-store-csi-driver-scaivault:${chart.appVersion}`);
    expect(env).toEqual({
      CSI_SOCKET: SETTINGS.csi.socket.default,
      HEALTH_ADDR: SETTINGS.csi.healthAddr.default,
      SCAIVAULT_ALLOWED_URLS: SETTINGS.csi.allowedUrls.default,
      CSI_MOUNT_TIMEOUT: SETTINGS.csi.mountTimeout.default,
      CSI_MOUNT_CONCURRENCY: SETTINGS.csi.mountConcurrency.default,
      CSI_MAX_MOUNTS: SETTINGS.csi.maxMounts.default,
      CSI_MOUNT_QUEUE: SETTINGS.csi.mountQueue.default,
      LOG_LEVEL: "info",
      LOG_FORMAT: "json",
    });
    expect(pod.volumes[0].hostPath).toEqual({ path: "/etc/kubernetes/secrets-store-csi-providers", type: "DirectoryOrCreate" });
    expect(container.volumeMounts[0].mountPath).toBe("/etc/kubernetes/secrets-store-csi-providers");
    expect(container.ports[0].containerPort).toBe(8098);
    expect(container.livenessProbe.httpGet).toEqual({ path: "/healthz", port: "health" });
    expect(container.readinessProbe.httpGet).toEqual({ path: "/readyz", port: "health" });
    expect(container.resources).toEqual(defaults.resources as object);
    expect(container.securityContext.readOnlyRootFilesystem).toBe(true);
    expect(pod.serviceAccountName).toBe("secrets-store-csi-driver-scaivault");
    expect(pod.automountServiceAccountToken).toBe(false);
    expect(pod.priorityClassName).toBe("system-node-critical");
    expect(pod.nodeSelector).toEqual({ "kubernetes.io/os": "linux" });
    expect(pod.tolerations).toBeUndefined();
    expect((daemonSet.spec as any).selector.matchLabels).toEqual((daemonSet.spec as any).template.metadata.labels);
  });

  test("every optional value renders valid objects", () => {
    const values = structuredClone(defaults) as any;
    values.image.tag = "1.2.3";
    values.socketDir = "/var/run/secrets-store-csi-providers";
    values.caBundle.configMapName = "scaivault-ca";
    values.extraEnv = [{ name: "SCAIVAULT_TENANT_ID", value: "tnt_billing" }];
    values.tolerations = [{ operator: "Exists" }];
    values.affinity = { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: "pool", operator: "In", values: ["apps"] }] }] } } };
    values.podAnnotations = { "prometheus.io/scrape": "true" };
    values.podLabels = { team: "platform" };
    values.imagePullSecrets = [{ name: "registry" }];
    values.serviceAccount = { create: true, name: "scaivault-provider", annotations: { owner: "platform" } };
    values.priorityClassName = "";

    const objects = render(values);
    for (const object of objects) expect(() => validate(object)).not.toThrow();

    const pod = (objects.find((object) => object.kind === "DaemonSet")!.spec as any).template;
    const container = pod.spec.containers[0];
    const env = Object.fromEntries(container.env.map((entry: { name: string; value: string }) => [entry.name, entry.value]));

    expect(container.image).toBe("scailabs/secrets-store-csi-driver-scaivault:1.2.3");
    expect(env.CSI_SOCKET).toBe("/var/run/secrets-store-csi-providers/scaivault.sock");
    expect(env.SCAIVAULT_CA_FILE).toBe("/etc/scaivault/ca/ca.crt");
    expect(env.SCAIVAULT_TENANT_ID).toBe("tnt_billing");
    expect(pod.spec.volumes[1]).toEqual({ name: "ca-bundle", configMap: { name: "scaivault-ca" } });
    expect(pod.spec.tolerations).toEqual([{ operator: "Exists" }]);
    expect(pod.spec.priorityClassName).toBeUndefined();
    expect(pod.spec.serviceAccountName).toBe("scaivault-provider");
    expect(pod.metadata.labels.team).toBe("platform");
    expect(pod.metadata.annotations).toEqual({ "prometheus.io/scrape": "true" });
    expect(objects.find((object) => object.kind === "ServiceAccount")!.metadata).toMatchObject({ name: "scaivault-provider", annotations: { owner: "platform" } });
  });

  test("serviceAccount.create false renders no ServiceAccount", () => {
    const values = { ...structuredClone(defaults), serviceAccount: { create: false, name: "existing" } };
    const objects = render(values);

    expect(objects.map((object) => object.kind)).toEqual(["DaemonSet"]);
    expect((objects[0]!.spec as any).template.spec.serviceAccountName).toBe("existing");
  });

  test("schema validation rejects a broken DaemonSet", () => {
    const daemonSet = render(defaults).find((object) => object.kind === "DaemonSet")! as any;
    daemonSet.spec.template.spec.containers[0].ports[0].containerPort = "health";
    delete daemonSet.spec.template.spec.containers[0].name;

    expect(() => validate(daemonSet)).toThrow(/containers\/0 must have required property name.*containerPort must be integer/);
  });

  test("every environment variable the chart sets is a provider setting", () => {
    const known = new Set([...Object.values(SETTINGS.csi), ...Object.values(CSI_CONNECTION_SETTINGS)].map((setting) => setting.env));
    const values = { ...structuredClone(defaults), caBundle: { configMapName: "ca", key: "ca.crt" } };
    const daemonSet = render(values).find((object) => object.kind === "DaemonSet")! as any;
    const names = daemonSet.spec.template.spec.containers[0].env.map((entry: { name: string }) => entry.name);

    expect(names.filter((name: string) => !known.has(name))).toEqual([]);
  });

  test("NOTES.txt names the socket and the token request", () => {
    const notes = renderChart(templates, context(defaults))["NOTES.txt"]!;

    expect(notes).toContain("/etc/kubernetes/secrets-store-csi-providers/scaivault.sock");
    expect(notes).toContain("kubectl -n kube-system get daemonset secrets-store-csi-driver-scaivault");
    expect(notes).toContain('the audience "scaivault"');
  });

  test("README examples are valid objects", () => {
    const documents = [...readme.matchAll(/```yaml\n([\s\S]*?)```/g)].map((match) => parse(match[1]!) as K8sObject);
    const kinds = documents.map((document) => document.kind);

    expect(kinds).toEqual(["CSIDriver", "SecretProviderClass", "Pod", "SecretProviderClass"]);
    const csiDriver = documents[0] as any;
    expect(csiDriver.spec.tokenRequests).toEqual([{ audience: "scaivault" }]);

    for (const document of documents) {
      if (document.kind !== "SecretProviderClass") expect(() => validate(document)).not.toThrow();
    }
  });

  test("README SecretProviderClasses pass the provider's own checks", () => {
    const classes = [...readme.matchAll(/```yaml\n([\s\S]*?)```/g)]
      .map((match) => parse(match[1]!) as any)
      .filter((document) => document.kind === "SecretProviderClass");

    for (const spc of classes) {
      expect(spc.spec.provider).toBe("scaivault");
      const attributes = JSON.stringify({
        ...spc.spec.parameters,
        secretProviderClass: spc.metadata.name,
        "csi.storage.k8s.io/serviceAccount.tokens": JSON.stringify({ scaivault: { token: "t" } }),
      });
      const parsed = parseMountAttributes(attributes, "420", parseAllowedUrls("https://*"));
      const files = parsed.objects.map((object) => object.file);

      for (const entry of spc.spec.secretObjects?.flatMap((secret: any) => secret.data) ?? []) expect(files).toContain(entry.objectName);
    }
    expect(classes).toHaveLength(2);
  });
});

// ---------------------------------------------------------------------------------------------

function context(values: Record<string, unknown>): ChartContext {
  return {
    Values: values,
    Release: { Name: "secrets-store-csi-driver-scaivault", Namespace: "kube-system", Service: "Helm" },
    Chart: { Name: chart.name, Version: chart.version, AppVersion: chart.appVersion },
  };
}

function render(values: Record<string, unknown>): K8sObject[] {
  const output = renderChart(templates, context(values));
  return Object.entries(output)
    .filter(([name]) => name.endsWith(".yaml"))
    .sort(([a], [b]) => a.localeCompare(b))
    .flatMap(([name, text]) =>
      parseAllDocuments(text).map((document) => {
        if (document.errors.length) throw new Error(`${name} renders invalid YAML: ${document.errors[0]!.message}\n${text}`);
        return document.toJS() as K8sObject;
      }),
    )
    .filter((object) => object !== null);
}

function validate(object: K8sObject): void {
  const models: Record<string, new (data: any) => { validate(): void }> = { DaemonSet, ServiceAccount, Pod, CSIDriver };
  const Model = models[object.kind];
  if (!Model) throw new Error(`No schema for kind ${object.kind}`);
  new Model(object).validate();
}
