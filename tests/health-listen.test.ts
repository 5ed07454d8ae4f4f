/**
 * The default HEALTH_ADDR of the sidecar and the CSI provider listens on `[::]`, which must take
 * IPv4 and IPv6 connections alike: kubelet probes come over IPv4 on IPv4 clusters and over IPv6 on
 * IPv6-only ones. The server runs under Bun in-process, and under Deno as a child process, on a
 * free port, and is reached at 127.0.0.1 and at ::1.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseListenAddress } from "../src/config.ts";
import { SETTINGS } from "../src/options.ts";
import { serveHttp } from "../src/runtime.ts";
import { ROOT } from "./helpers/cli.ts";

const HAS_DENO = spawnSync("deno", ["--version"], { stdio: "ignore" }).status === 0;
const DEFAULTS = { sidecar: SETTINGS.sidecar.healthAddr.default, csi: SETTINGS.csi.healthAddr.default };

let scratch: string;

beforeAll(() => {
  scratch = mkdtempSync(join(tmpdir(), "health-listen-"));
});

afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

describe("health listen address", () => {
  test.each(Object.entries(DEFAULTS))("%s default listens on all IPv6 and IPv4 addresses", (_, address) => {
    expect(address).toMatch(/^\[::\]:\d+$/);
    expect(parseListenAddress(address, "HEALTH_ADDR")!.hostname).toBe("::");
  });

  test("Bun server on :: accepts IPv4 and IPv6", async () => {
    const server = await serveHttp(() => new Response("ok"), { hostname: "::", port: 0 });
    try {
      for (const host of ["127.0.0.1", "[::1]"]) {
        const response = await fetch(`http://${host}:${server.port}/`, { signal: AbortSignal.timeout(10_000) });
        expect(await response.text()).toBe("ok");
      }
    } finally {
      await server.stop();
    }
  });

  test.skipIf(!HAS_DENO)("Deno server on :: accepts IPv4 and IPv6", () => {
    const script = join(scratch, "deno-listen.ts");
    writeFileSync(
      script,
      [
        `import { serveHttp } from ${JSON.stringify(join(ROOT, "src/runtime.ts"))};`,
        `const server = await serveHttp(() => new Response("ok"), { hostname: "::", port: 0 });`,
        `const answers = [];`,
        `for (const host of ["127.0.0.1", "[::1]"]) answers.push(await (await fetch(\`http://\${host}:\${server.port}/\`, { signal: AbortSignal.timeout(10_000) })).text());`,
        `await server.stop();`,
        `console.log(answers.join(","));`,
      ].join("\n"),
    );

    const result = spawnSync("deno", ["run", "-A", script], { encoding: "utf8", timeout: 60_000 });

    expect(result.stderr).not.toContain("error");
    expect(result.stdout.trim()).toBe("ok,ok");
  });
});
