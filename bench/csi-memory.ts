/**
 * Resident memory of the compiled CSI provider over rounds of 10,000 mounts: 50 pods of 5 service
 * accounts, 10 objects each, 16 mounts at a time, as a driver's rotation polls across a busy node
 * would send them. The baseline is VmRSS (from /proc) after 5,000 warm-up mounts and 15 s without
 * mounts. Each round ends with the same 15 s pause before VmRSS is read again. Also counts the
 * ScaiVault requests. Run `bun run build` first, then `bun bench/csi-memory.ts [mounts per round] [rounds]`.
 */
import { rmSync } from "node:fs";
import { benchSeed, devStats, memoryOf, mountClient, podAttributes, startDevProcess, startProviderProcess, workDir } from "./_csi.ts";

const MOUNTS = Number(process.argv[2] ?? 10_000);
const ROUNDS = Number(process.argv[3] ?? 3);
const WARMUP = 5000;
const PARALLEL = 16;
const IDLE_MS = 15_000;
const seed = benchSeed(10);
const paths = Object.keys(seed);

const work = workDir("bench-csi-memory-");
const dev = await startDevProcess(work, seed);
const provider = await startProviderProcess(work, dev.url);
const client = mountClient(provider.socket);
const pods = Array.from({ length: 50 }, (_, index) => podAttributes(dev.url, paths, `account-${index % 5}`, `pod-${index}`));

try {
  const pid = provider.child.pid!;
  console.log(`start: RSS ${memoryOf(pid).rssMb.toFixed(1)} MB`);

  await runMounts(WARMUP);
  console.log(`after ${WARMUP} warm-up mounts: RSS ${memoryOf(pid).rssMb.toFixed(1)} MB`);
  await idle();
  const baseline = memoryOf(pid).rssMb;
  console.log(`after ${IDLE_MS / 1000} s idle: RSS ${baseline.toFixed(1)} MB (baseline)`);
  await devStats(dev.url, true);

  let previous = baseline;
  for (let round = 1; round <= ROUNDS; round++) {
    const started = performance.now();
    await runMounts(MOUNTS);
    const seconds = (performance.now() - started) / 1000;
    const loaded = memoryOf(pid);

    await idle();
    const settled = memoryOf(pid).rssMb;
    console.log(
      `round ${round}: ${MOUNTS} mounts at ${(MOUNTS / seconds).toFixed(0)}/s; RSS ${loaded.rssMb.toFixed(1)} MB at the end, ` +
        `${settled.toFixed(1)} MB after ${IDLE_MS / 1000} s idle: ${signed(settled - previous)} MB on the round, ${signed(settled - baseline)} MB on the baseline; ` +
        `peak ${loaded.hwmMb.toFixed(1)} MB`,
    );
    previous = settled;
  }

  console.log(`ScaiVault requests in ${ROUNDS * MOUNTS} mounts: ${JSON.stringify(await devStats(dev.url))}`);
} finally {
  client.close();
  provider.child.kill("SIGTERM");
  dev.child.kill("SIGTERM");
  rmSync(work, { recursive: true, force: true });
}

/** Waits with no mounts, as between two rotation polls, so that the runtime can return freed memory. */
function idle(): Promise<void> {
  return new Promise((resolveIdle) => setTimeout(resolveIdle, IDLE_MS));
}

function signed(value: number): string {
  return `${value >= 0 ? "+" : ""}${value.toFixed(1)}`;
}

async function runMounts(count: number): Promise<void> {
  let next = 0;
  async function worker(): Promise<void> {
    while (next < count) {
      const index = next++;
      const response = await client.mount(pods[index % pods.length]!);
      if (response.files.length !== paths.length) throw new Error(`expected ${paths.length} files, got ${response.files.length}`);
    }
  }
  await Promise.all(Array.from({ length: PARALLEL }, worker));
}
