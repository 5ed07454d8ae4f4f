/** `get` end to end: the real CLI against the dev server, printing to standard output. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startDevServer, type DevServer } from "../src/dev/server.ts";
import { EXIT_CODES } from "../src/errors.ts";
import { configureLogging } from "../src/log.ts";
import { runCli } from "./helpers/cli.ts";

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
});
