/**
 * Version latency and Mount latency of the compiled CSI provider for 1, 10 and 100 objects, and
 * the ScaiVault requests each mount sends. The dev server and the provider run as their own processes; this
 * process is the driver, a @grpc/grpc-js client on the socket. Warm mounts reuse the service
 * account's cached ScaiVault token; cold mounts use a new service account each, so they include
 * the exchange. Run `bun run build` first, then `bun bench/csi-mount.ts [mounts]`.
 */
import { rmSync } from "node:fs";
import { benchSeed, devStats, mountClient, percentile, podAttributes, startDevProcess, startProviderProcess, workDir } from "./_csi.ts";

const MOUNTS = Number(process.argv[2] ?? 200);
const seed = benchSeed(100);
const paths = Object.keys(seed);

const work = workDir("bench-csi-");
const dev = await startDevProcess(work, seed);
const provider = await startProviderProcess(work, dev.url);
const client = mountClient(provider.socket);

try {
  const rows: string[] = [];

  const versions: number[] = [];
  for (let index = 0; index < MOUNTS; index++) {
    const started = performance.now();
    await client.version();
    versions.push(performance.now() - started);
  }
  rows.push(row("Version", versions, {}, MOUNTS));

  for (const count of [1, 10, 100]) {
    const attributes = podAttributes(dev.url, paths.slice(0, count), "warm", "warm-0");
    for (let index = 0; index < 20; index++) await client.mount(attributes);
    await devStats(dev.url, true);

    const samples: number[] = [];
    for (let index = 0; index < MOUNTS; index++) {
      const started = performance.now();
      const response = await client.mount(attributes);
      samples.push(performance.now() - started);
      if (response.files.length !== count) throw new Error(`expected ${count} files, got ${response.files.length}`);
    }

    const requests = await devStats(dev.url, true);
    rows.push(row(`warm, ${count} objects`, samples, requests, MOUNTS));
  }

  const cold: number[] = [];
  const coldMounts = Math.min(MOUNTS, 50);
  for (let index = 0; index < coldMounts; index++) {
    const attributes = podAttributes(dev.url, paths.slice(0, 10), `cold-${index}`, `cold-${index}`);
    const started = performance.now();
    await client.mount(attributes);
    cold.push(performance.now() - started);
  }
  rows.push(row("cold (new service account), 10 objects", cold, await devStats(dev.url, true), coldMounts));

  console.log("| call | runs | p50 ms | p90 ms | p99 ms | ScaiVault requests per mount |");
  console.log("|---|---|---|---|---|---|");
  for (const line of rows) console.log(line);
} finally {
  client.close();
  provider.child.kill("SIGTERM");
  dev.child.kill("SIGTERM");
  rmSync(work, { recursive: true, force: true });
}

function row(label: string, samples: number[], requests: Record<string, number>, mounts: number): string {
  const perMount = Object.entries(requests)
    .filter(([route]) => route !== "GET /v1/dev/stats")
    .map(([route, count]) => `${route}: ${(count / mounts).toFixed(2)}`)
    .join(", ");
  const ms = (fraction: number) => percentile(samples, fraction).toFixed(2);
  return `| ${label} | ${samples.length} | ${ms(0.5)} | ${ms(0.9)} | ${ms(0.99)} | ${perMount} |`;
}
