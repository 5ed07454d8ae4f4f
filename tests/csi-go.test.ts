/**
 * The provider against a grpc-go client, built here from Debian's golang-google-grpc-dev in GOPATH
 * mode (tests/fixtures/csi-go-client). The client dials as the Secrets Store CSI driver does: the
 * plain socket path as target and a unix dialer. Debian's grpc-go (1.33) sends that path as the
 * raw `:authority`, which the provider's rewriter must make acceptable. Skips with a printed reason
 * when Go or the gRPC source is not installed; the test installs nothing.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { ROOT } from "./helpers/cli.ts";
import { mountAttributes, startProviderFixture, type ProviderFixture } from "./helpers/csi.ts";

const GOPATH = "/usr/share/gocode";
const GRPC_SOURCE = join(GOPATH, "src/google.golang.org/grpc");
const DATABASE = "environments/production/billing/database";
const STRIPE = "environments/production/billing/stripe";
const SEED = {
  [DATABASE]: { username: "billing", password: "go-db-Pa55w0rd-4Rt" },
  [STRIPE]: { secret_key: "sk_live_go_Str1pe_8Wd" },
};

const run = promisify(execFile);
const goMissing = missingGo();
if (goMissing) console.log(`skipping the grpc-go client tests: ${goMissing}`);

let fixture: ProviderFixture;
let work: string;
let client: string;

describe.skipIf(goMissing !== undefined)("csi grpc-go client", () => {
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), "csi-go-"));
    client = join(work, "csi-go-client");
    await run("go", ["build", "-o", client, "."], {
      cwd: join(ROOT, "tests/fixtures/csi-go-client"),
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: work, GO111MODULE: "off", GOPATH, GOCACHE: join(work, "cache"), GOFLAGS: "" },
      timeout: 300_000,
    });

    fixture = await startProviderFixture({ seed: SEED });
  }, 320_000);

  afterAll(async () => {
    await fixture?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  test("grpc-go client mounts the guide's SecretProviderClass", async () => {
    const output = await callGo(mountAttributes({ baseUrl: fixture.dev.url }));
    const result = JSON.parse(output.stdout) as {
      version: { version: string; runtime_name: string };
      mount: { object_version: Array<{ id: string; version: string }>; files: Array<{ path: string; mode: number; contents: string }> };
    };

    expect(output.code).toBe(0);
    expect(result.version).toMatchObject({ version: "v1alpha1", runtime_name: "scaivault-agent" });
    expect(result.mount.object_version.map((entry) => entry.id)).toEqual(["db.json", "stripe.json"]);
    for (const entry of result.mount.object_version) expect(entry.version).toMatch(/^1-[0-9a-f]{16}$/);

    const files = new Map(result.mount.files.map((file) => [file.path, { mode: file.mode, text: Buffer.from(file.contents, "base64").toString("utf8") }]));
    expect(JSON.parse(files.get("db.json")!.text)).toEqual(SEED[DATABASE]);
    expect(files.get("stripe.json")!.text).toBe("sk_live_go_Str1pe_8Wd");
    expect(files.get("stripe.json")!.mode).toBe(0o644);
  });

  test("grpc-go client sent the raw socket path, which was rewritten", () => {
    expect(fixture.logs.some((line) => line.includes("Rewrote a raw socket path in :authority"))).toBe(true);
  });

  test("grpc-go client receives the error status and message", async () => {
    const output = await callGo(mountAttributes({ baseUrl: fixture.dev.url, objects: `- path: ${DATABASE}\n  file: ../db.json` }));

    expect(output.code).toBe(1);
    expect(JSON.parse(output.stdout)).toEqual({
      code: "InvalidArgument",
      message: `Invalid SecretProviderClass "scaivault-billing" in namespace "billing": objects[0] (path "${DATABASE}"): file "../db.json" contains ".."; write a name inside the volume, such as db.json`,
    });
  });

  test("grpc-go client receives a failure of hundreds of objects with a capped message", async () => {
    const longPath = `environments/production/billing/${"missing-".repeat(20)}`;
    const objects = Array.from({ length: 300 }, (_, index) => `- path: ${longPath}${index}\n  file: f${index}`).join("\n");
    const output = await callGo(mountAttributes({ baseUrl: fixture.dev.url, objects }));
    const result = JSON.parse(output.stdout) as { code: string; message: string };

    expect(output.code).toBe(1);
    expect(result.code).toBe("NotFound");
    expect(Buffer.byteLength(result.message)).toBeLessThanOrEqual(4096);
    expect(result.message).toContain("and 290 more");
  });
});

// ---------------------------------------------------------------------------------------------

async function callGo(attributes: string): Promise<{ code: number; stdout: string }> {
  const file = join(work, "attributes.json");
  writeFileSync(file, attributes);

  try {
    const { stdout } = await run(client, [fixture.socketPath, file], { timeout: 60_000 });
    return { code: 0, stdout };
  } catch (error) {
    const failure = error as { code?: number; stdout?: string; stderr?: string };
    if (typeof failure.code !== "number") throw error;
    return { code: failure.code, stdout: failure.stdout ?? "" };
  }
}

function missingGo(): string | undefined {
  const go = (process.env.PATH ?? "").split(":").some((dir) => existsSync(join(dir, "go")));
  if (!go) return "go is not installed (apt-get install golang-go)";
  if (!existsSync(GRPC_SOURCE)) return `${GRPC_SOURCE} is missing (apt-get install golang-google-grpc-dev)`;
  return undefined;
}
