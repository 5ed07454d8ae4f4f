/**
 * Measures what the containers in deploy/ request: peak resident memory and CPU time of the
 * compiled binary. It runs `init` and `sync` once each under GNU time, and `sidecar` for a while
 * with a short refresh interval, against the dev server and a local HTTPS Kubernetes API on
 * 127.0.0.1. Run `bun run build` first, then `bun bench/resources.ts [sidecar seconds]`.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { GUIDE_SECRETS, GUIDE_SEED, projectedToken } from "../src/dev/guide.ts";
import { startDevServer } from "../src/dev/server.ts";
import { configureLogging } from "../src/log.ts";
import { makeCertificates, startFakeKubeApi } from "../tests/helpers/kube-api.ts";

const ROOT = resolve(import.meta.dirname, "..");
const BINARY = process.env.BENCH_BINARY ?? join(ROOT, "dist/scaivault-agent");
const SIDECAR_SECONDS = Number(process.argv[2] ?? 30);
const RUNS = 5;

interface Sample {
  maxRssKb: number;
  cpuSeconds: number;
  code: number | null;
}

if (!existsSync(BINARY)) throw new Error(`${BINARY} is missing: run \`bun run build\` first`);
configureLogging({ level: "error" });

const work = mkdtempSync(join(existsSync("/dev/shm") ? "/dev/shm" : tmpdir(), "bench-resources-"));
const certs = makeCertificates(work);
const kube = startFakeKubeApi(certs, "bench-kube-token");
const server = await startDevServer({ port: 0, seed: GUIDE_SEED, rateLimits: false });

try {
  writeFileSync(join(work, "token"), projectedToken({ lifetimeSeconds: 7200 }));
  writeFileSync(join(work, "kube-token"), "bench-kube-token");
  const prefix = join(work, "root");
  mkdirSync(join(prefix, "run/secrets"), { recursive: true });

  const common = { SCAIVAULT_URL: server.url, SCAIVAULT_TOKEN_FILE: join(work, "token"), OUTPUT_PREFIX: prefix, LOG_LEVEL: "warn" };
  const rows: string[] = [];
  const record = (label: string, samples: Sample[]) => {
    const failed = samples.filter((sample) => sample.code !== 0).length;
    const rss = Math.max(...samples.map((sample) => sample.maxRssKb)) / 1024;
    const cpu = Math.max(...samples.map((sample) => sample.cpuSeconds));
    rows.push(`| ${label} | ${samples.length} | ${rss.toFixed(1)} | ${cpu.toFixed(2)} | ${failed} |`);
  };

  const repeat = async (command: string[], env: Record<string, string>) => {
    const samples: Sample[] = [];
    for (let run = 0; run < RUNS; run++) samples.push(await measure(command, env));
    return samples;
  };

  record("`--version`", await repeat([BINARY, "--version"], {}));
  record("init, the guide's 2 secrets", await repeat([BINARY, "init"], { ...common, SECRETS: GUIDE_SECRETS }));
  record(
    "sync, 2 secrets to 7 keys",
    await repeat([BINARY, "sync"], {
      ...common,
      SYNC_SECRET_NAME: "billing-secrets",
      SYNC_NAMESPACE: "billing",
      SYNC_MAPPING: Object.keys(GUIDE_SEED).map((path) => `${path} -> *`).join("\n"),
      KUBERNETES_API_URL: kube.url,
      KUBERNETES_TOKEN_FILE: join(work, "kube-token"),
      KUBERNETES_CA_FILE: certs.caFile,
    }),
  );
  record(
    `sidecar, ${SIDECAR_SECONDS} s at REFRESH_INTERVAL=1s`,
    [
      await measureFor([BINARY, "sidecar"], { ...common, WATCH_PATHS: GUIDE_SECRETS, REFRESH_INTERVAL: "1s", HEALTH_ADDR: "127.0.0.1:0", START_JITTER: "0s" }, SIDECAR_SECONDS),
    ],
  );

  console.log("| run | runs | peak RSS MB (max) | CPU s user+sys (max) | failed |\n|---|---|---|---|---|");
  for (const row of rows) console.log(row);
} finally {
  await server.stop();
  await kube.stop();
  rmSync(work, { recursive: true, force: true });
}

/** Runs `command` to its end under GNU time. */
function measure(command: string[], env: Record<string, string>): Promise<Sample> {
  return new Promise((resolveSample) => {
    const child = spawn("/usr/bin/time", ["-f", "%M %U %S", ...command], {
      env: { PATH: process.env.PATH!, HOME: process.env.HOME!, ...env },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (chunk) => (stderr += chunk));
    child.on("close", (code) => {
      const [rss, user, system] = stderr.trim().split("\n").at(-1)!.split(" ").map(Number);
      resolveSample({ maxRssKb: rss!, cpuSeconds: user! + system!, code });
    });
  });
}

/**
 * Runs a long-running `command` for `seconds`, reads its peak RSS (VmHWM) and CPU time from
 * /proc just before sending SIGTERM, and waits for it to exit.
 */
function measureFor(command: string[], env: Record<string, string>, seconds: number): Promise<Sample> {
  return new Promise((resolveSample) => {
    const child = spawn(command[0]!, command.slice(1), { env: { PATH: process.env.PATH!, HOME: process.env.HOME!, ...env }, stdio: "ignore" });
    let sample: Sample = { maxRssKb: 0, cpuSeconds: 0, code: null };

    const timer = setTimeout(() => {
      const status = readFileSync(`/proc/${child.pid}/status`, "utf8");
      const hwm = Number(status.match(/^VmHWM:\s+(\d+) kB/m)?.[1] ?? 0);
      // Fields 14 and 15 of /proc/PID/stat are utime and stime in clock ticks (100 per second on Linux).
      const fields = readFileSync(`/proc/${child.pid}/stat`, "utf8").split(") ")[1]!.split(" ");
      sample = { maxRssKb: hwm, cpuSeconds: (Number(fields[11]) + Number(fields[12])) / 100, code: null };
      child.kill("SIGTERM");
    }, seconds * 1000);

    child.on("close", (code) => {
      clearTimeout(timer);
      resolveSample({ ...sample, code });
    });
  });
}
