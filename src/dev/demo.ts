/**
 * The README's first command: starts the dev server seeded with the guide's billing example, runs
 * `init` with the guide's exact SECRETS value and a projected-token-style JWT, shows the files it
 * wrote with values masked, and stops the server.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDevServer } from "./server.ts";
import { configureLogging } from "../log.ts";
import { GUIDE_SECRETS, GUIDE_SEED, projectedToken } from "./guide.ts";

configureLogging({ level: "warn", format: "text" });
const work = mkdtempSync(join(tmpdir(), "scaivault-demo-"));
const server = await startDevServer({ port: 0, seed: GUIDE_SEED });

try {
  const tokenFile = join(work, "token");
  writeFileSync(tokenFile, projectedToken());

  console.log(`\nDev server on ${server.url}, seeded with ${Object.keys(GUIDE_SEED).length} secrets.`);
  console.log(`Running scaivault-agent init with OUTPUT_PREFIX=${work}, so that /run/secrets lands there.\n`);
  console.log(GUIDE_SECRETS.trimEnd().replace(/^/gm, "  SECRETS | "));
  console.log();

  // The server runs in this process, so the child must be awaited, never run synchronously.
  const run = await runChild(process.execPath, [join(import.meta.dirname, "../../mod.ts"), "init"], {
    stdio: ["ignore", "inherit", "inherit"],
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      LOG_FORMAT: "text",
      SCAIVAULT_URL: server.url,
      SCAIVAULT_TOKEN_FILE: tokenFile,
      SECRETS: GUIDE_SECRETS,
      OUTPUT_PREFIX: work,
    },
  });
  console.log(`\ninit exited with ${run.status}. Files written, values masked:\n`);

  const dir = join(work, "run/secrets");
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    const mode = (statSync(path).mode & 0o777).toString(8).padStart(4, "0");
    console.log(`/run/secrets/${name}  (mode ${mode})`);
    console.log(mask(JSON.parse(readFileSync(path, "utf8"))).replace(/^/gm, "    "));
  }
  process.exitCode = run.status ?? 1;
} finally {
  await server.stop();
  rmSync(work, { recursive: true, force: true });
}

function mask(data: Record<string, unknown>): string {
  const masked = Object.fromEntries(Object.entries(data).map(([key, value]) => [key, `<${String(value).length} characters>`]));
  return JSON.stringify(masked, null, 2);
}

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
