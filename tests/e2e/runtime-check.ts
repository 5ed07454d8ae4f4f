/**
 * CI check that a runtime other than `bun run` delivers the guide's secrets: starts the dev server,
 * runs the command given as arguments (`./dist/scaivault-agent` or `deno run -A mod.ts`) with
 * `init` appended, and compares the files with the seed. Exits 1 on any difference.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isDeepStrictEqual } from "node:util";
import { startDevServer } from "../../src/dev/server.ts";
import { GUIDE_SECRETS, GUIDE_SEED, projectedToken } from "../../src/dev/guide.ts";
import { configureLogging } from "../../src/log.ts";

const [command, ...args] = process.argv.slice(2);
if (!command) {
  console.error("usage: bun tests/e2e/runtime-check.ts COMMAND [ARGS...]");
  process.exit(2);
}

configureLogging({ level: "warn" });
const work = mkdtempSync(join(tmpdir(), "runtime-check-"));
const server = await startDevServer({ port: 0, seed: GUIDE_SEED });
let status = 1;

try {
  const tokenFile = join(work, "token");
  writeFileSync(tokenFile, projectedToken());

  // The server runs in this process, so the child must be awaited, never run synchronously.
  const run = await runChild(command, [...args, "init"], {
    stdio: ["ignore", "inherit", "inherit"],
    env: { PATH: process.env.PATH, HOME: process.env.HOME, SCAIVAULT_URL: server.url, SCAIVAULT_TOKEN_FILE: tokenFile, SECRETS: GUIDE_SECRETS, OUTPUT_PREFIX: work },
  });

  const db = JSON.parse(readFileSync(join(work, "run/secrets/db.json"), "utf8"));
  const stripe = JSON.parse(readFileSync(join(work, "run/secrets/stripe.json"), "utf8"));
  const same =
    isDeepStrictEqual(db, GUIDE_SEED["environments/production/billing/database"]) &&
    isDeepStrictEqual(stripe, GUIDE_SEED["environments/production/billing/stripe"]);

  console.log(`${command} ${args.join(" ")} init: exit ${run.status}, files ${same ? "match" : "differ from"} the seed`);
  status = run.status === 0 && same ? 0 : 1;
} catch (error) {
  console.error(`Runtime check failed: ${(error as Error).message}`);
} finally {
  await server.stop();
  rmSync(work, { recursive: true, force: true });
}
process.exit(status);

function runChild(command: string, args: string[], options: Parameters<typeof spawn>[2]): Promise<{ status: number | null }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, options);
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("error", reject);
    child.on("close", (status) => {
      clearTimeout(timer);
      resolve({ status });
    });
  });
}
