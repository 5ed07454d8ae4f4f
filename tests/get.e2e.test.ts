/** `get` end to end: the real CLI against the dev server, printing to standard output. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startDevServer, type DevServer } from "../src/dev/server.ts";
import { EXIT_CODES } from "../src/errors.ts";
import { configureLogging } from "../src/log.ts";
import { spawn } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { baseEnv, MOD, runCli } from "./helpers/cli.ts";

const PATH = "environments/production/billing/stripe";
let server: DevServer;

beforeAll(async () => {
  configureLogging({ level: "silent" });
  server = await startDevServer({ port: 0, seed: { [PATH]: { secret_key: "sk_v1_value", publishable_key: "pk_v1" } } });
  await fetch(`${server.url}/v1/secrets/${PATH}`, {
    method: "PUT",
    headers: { authorization: `Bearer ${server.rootToken}`, "content-type": "application/json" },
    body: JSON.stringify({ data: { secret_key: "sk_v2_value\nline two", publishable_key: "pk_v2" } }),
  });
});

afterAll(() => server?.stop());

const get = (args: string[]) => runCli(["get", ...args], { SCAIVAULT_URL: server.url, SCAIVAULT_TOKEN: server.rootToken });

describe("get", () => {
  test("get prints the current data as JSON", async () => {
    const result = await get([PATH]);

    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout)).toEqual({ secret_key: "sk_v2_value\nline two", publishable_key: "pk_v2" });
  });

  test("get prints one field raw, byte for byte", async () => {
    const result = await get([PATH, "--field", "secret_key"]);

    expect(result.code).toBe(0);
    expect(result.stdout).toBe("sk_v2_value\nline two");
  });

  test("get reads an older version", async () => {
    const result = await get([PATH, "--version", "1", "--field", "secret_key"]);
    expect(result.stdout).toBe("sk_v1_value");
  });

  test("get prints env format", async () => {
    const result = await get([PATH, "--format", "env"]);
    expect(result.stdout).toBe("PUBLISHABLE_KEY='pk_v2'\nSECRET_KEY='sk_v2_value\nline two'\n");
  });

  test.each([
    [["Bad/Path"], EXIT_CODES.config, 'Invalid secret path \\"Bad/Path\\"'],
    [[PATH, "--version", "zero"], EXIT_CODES.config, 'Invalid --version \\"zero\\"'],
    [[PATH, "--version", "1e0"], EXIT_CODES.config, 'Invalid --version \\"1e0\\"'],
    [[PATH, "--field", "secret_key", "--format", "env"], EXIT_CODES.config, "cannot be combined with --format"],
    [[PATH, "--format", "yaml"], EXIT_CODES.config, 'Invalid --format \\"yaml\\"'],
    [["environments/none"], EXIT_CODES.not_found, "404 secret_not_found"],
    [[PATH, "--version", "9"], EXIT_CODES.not_found, "404 version_not_found"],
    [[PATH, "--field", "nope"], EXIT_CODES.not_found, 'field \\"nope\\" not found'],
  ])("get %j fails with its exit code", async (args, code, message) => {
    const result = await get(args);

    expect(result.code).toBe(code);
    expect(result.stdout).toBe("");
    expect(result.stderr).toContain(message);
    expect(result.stderr).not.toContain("sk_v");
  });

  test("get fails with the write code when standard output is full", async () => {
    const full = openSync("/dev/full", "w");
    const child = spawn(process.execPath, [MOD, "get", PATH], {
      env: baseEnv({ SCAIVAULT_URL: server.url, SCAIVAULT_TOKEN: server.rootToken }),
      stdio: ["ignore", full, "pipe"],
    });
    let stderr = "";
    child.stderr!.on("data", (chunk) => (stderr += chunk));

    const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
    closeSync(full);

    expect(code).toBe(EXIT_CODES.write);
    expect(stderr).toContain("Cannot write to standard output: ENOSPC");
  });
});

describe("command line", () => {
  test.each([
    [["frob"], "Unknown command frob"],
    [["get"], "Missing required positional argument: PATH"],
  ])("%j exits with the usage code", async (args, message) => {
    const result = await runCli(args, {});

    expect(result.code).toBe(EXIT_CODES.config);
    expect(result.stderr).toContain(message);
    expect(result.stderr).not.toContain("\u001b[");
  });

  test("help output has no colour codes when piped", async () => {
    const result = await runCli(["init", "--help"], {});

    expect(result.code).toBe(0);
    expect(result.stdout).toContain("--secrets");
    expect(result.stdout).not.toContain("\u001b[");
  });
});
