/**
 * Measures the compiled `init` against the dev server on 127.0.0.1, beside a curl + jq script
 * doing the same job (bench/curl-init.sh), in one run: wall time (median of N runs) and peak
 * resident memory (GNU time's maximum RSS). Also the binary's size and the cold start of
 * `--version` and `--help`. Run `bun run build` first, then `bun bench/init.ts [runs]`.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { projectedToken } from "../src/dev/guide.ts";

const ROOT = resolve(import.meta.dirname, "..");
const BINARY = join(ROOT, "dist/scaivault-agent");
const RUNS = Number(process.argv[2] ?? 10);

interface Sample {
  ms: number;
  maxRssKb: number;
  code: number | null;
}

// The output goes to tmpfs, as it does in a pod's memory emptyDir.
const work = mkdtempSync(join(existsSync("/dev/shm") ? "/dev/shm" : tmpdir(), "bench-init-"));
const seed: Record<string, Record<string, unknown>> = {};
for (let index = 0; index < 1000; index++) {
  seed[`bench/app/secret-${index}`] = { username: `user-${index}`, password: `password-${index}-${"x".repeat(24)}`, port: 5432 };
}
writeFileSync(join(work, "seed.json"), JSON.stringify(seed));
writeFileSync(join(work, "token"), projectedToken({ lifetimeSeconds: 7200 }));

const server = await startServer();
try {
  const secrets = (count: number) =>
    Object.keys(seed)
      .slice(0, count)
      .map((path, index) => `${path} -> /run/secrets/s${index}.json`)
      .join("\n");

  const rows: string[][] = [];
  const measure = async (label: string, command: string[], env: Record<string, string>, runs = RUNS) => {
    const samples: Sample[] = [];
    for (let run = 0; run < runs; run++) samples.push(await timed(command, env));
    const failed = samples.filter((sample) => sample.code !== 0).length;
    const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
    rows.push([label, `${runs}`, median(samples.map((s) => s.ms)).toFixed(1), (Math.max(...samples.map((s) => s.maxRssKb)) / 1024).toFixed(1), `${failed}`]);
    return median(samples.map((s) => s.ms));
  };

  const agentEnv = (count: number) => {
    const prefix = join(work, `out-${count}`);
    mkdirSync(join(prefix, "run/secrets"), { recursive: true });
    return { SCAIVAULT_URL: server.url, SCAIVAULT_TOKEN_FILE: join(work, "token"), SECRETS: secrets(count), OUTPUT_PREFIX: prefix, LOG_LEVEL: "warn" };
  };
  const curlEnv = (count: number) => {
    const out = join(work, `curl-${count}`);
    mkdirSync(out, { recursive: true });
    return { SCAIVAULT_URL: server.url, SCAIVAULT_TOKEN_FILE: join(work, "token"), SECRETS: secrets(count), OUT_DIR: out };
  };

  const floor = join(work, "hello");
  writeFileSync(`${floor}.ts`, 'console.log("hello")\n');
  await new Promise((done) => spawn(process.execPath, ["build", `${floor}.ts`, "--compile", "--bytecode", "--format=esm", "--outfile", floor], { stdio: "ignore" }).on("close", done));
  await measure("floor: compiled hello world", [floor], {});
  const version = await measure("`--version`", [BINARY, "--version"], {});
  await measure("`--help`", [BINARY, "--help"], {});
  const init10 = await measure("init, 10 secrets", [BINARY, "init"], agentEnv(10));
  const curl10 = await measure("curl + jq, 10 secrets", ["bash", join(ROOT, "bench/curl-init.sh")], curlEnv(10));
  const init1000 = await measure("init, 1000 secrets", [BINARY, "init"], agentEnv(1000));
  const curl1000 = await measure("curl + jq, 1000 secrets", ["bash", join(ROOT, "bench/curl-init.sh")], curlEnv(1000), Math.min(RUNS, 3));

  const stats = (await (await fetch(`${server.url}/v1/dev/stats`, { headers: { authorization: `Bearer ${server.rootToken}` } })).json()) as {
    requests: Record<string, number>;
  };

  console.log(`| run | runs | median wall ms | peak RSS MB | failed |\n|---|---|---|---|---|`);
  for (const row of rows) console.log(`| ${row.join(" | ")} |`);
  console.log();
  console.log(`binary size: ${(statSync(BINARY).size / 1024 / 1024).toFixed(1)} MiB`);
  console.log(`init 10 / --version: ${(init10 / version).toFixed(2)}x; init 10 / curl+jq 10: ${(init10 / curl10).toFixed(2)}x`);
  console.log(`init 1000 / --version: ${(init1000 / version).toFixed(2)}x; init 1000 / curl+jq 1000: ${(init1000 / curl1000).toFixed(2)}x`);
  console.log(`batch requests in total (all init runs): ${stats.requests["POST /v1/secrets/batch"] ?? 0} for ${RUNS} runs of 10 and ${RUNS} of 1000`);
} finally {
  server.child.kill("SIGTERM");
  rmSync(work, { recursive: true, force: true });
}

/** Runs `command` under GNU time and returns its wall time, peak RSS and exit code. */
function timed(command: string[], env: Record<string, string>): Promise<Sample> {
  return new Promise((resolvePromise) => {
    const started = performance.now();
    const child = spawn("/usr/bin/time", ["-f", "%M", ...command], {
      env: { PATH: process.env.PATH!, HOME: process.env.HOME!, ...env },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (chunk) => (stderr += chunk));
    child.on("close", (code) => {
      const ms = performance.now() - started;
      const lines = stderr.trim().split("\n");
      resolvePromise({ ms, maxRssKb: Number(lines[lines.length - 1]), code });
    });
  });
}

/** Starts the dev server as its own process, so that it does not share this one's event loop. */
async function startServer(): Promise<{ url: string; rootToken: string; child: ReturnType<typeof spawn> }> {
  const rootToken = "bench-root-token";
  const child = spawn(process.execPath, [join(ROOT, "mod.ts"), "dev", "--port", "0", "--seed", join(work, "seed.json"), "--rate-limits", "off"], {
    env: { PATH: process.env.PATH!, HOME: process.env.HOME!, SCAIVAULT_DEV_ROOT_TOKEN: rootToken, LOG_LEVEL: "warn" },
    stdio: ["ignore", "pipe", "ignore"],
  });

  const url = await new Promise<string>((resolveUrl, reject) => {
    let output = "";
    child.stdout!.on("data", (chunk) => {
      output += chunk;
      const match = output.match(/listening on (http:\/\/\S+)/);
      if (match) resolveUrl(match[1]!);
    });
    child.on("close", () => reject(new Error("dev server exited before listening")));
  });
  return { url, rootToken, child };
}
