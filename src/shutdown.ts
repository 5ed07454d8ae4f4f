/** Ordered clean-up at the end of a long-running command, bounded in total time. */
import { errorFields, getLogger } from "./log.ts";

const log = getLogger("shutdown");

/** One clean-up step, such as deleting the subscription or revoking leases. */
export interface Stopper {
  /** Name for logs, such as `events` or `leases`. */
  name: string;
  stop(): Promise<void>;
}

/**
 * Runs `stoppers` one after another, each with the time left of `totalMs`. A step that fails is
 * logged and the next one runs. When the time is up, the remaining steps are skipped and named.
 */
export async function runStoppers(stoppers: Stopper[], totalMs: number): Promise<void> {
  const deadline = Date.now() + totalMs;

  for (const [index, stopper] of stoppers.entries()) {
    const leftMs = deadline - Date.now();
    if (leftMs <= 0) {
      log.warn("Shutdown time is up, skipping the remaining steps", { skipped: stoppers.slice(index).map((step) => step.name), totalMs });
      return;
    }

    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), leftMs);
    });

    try {
      const result = await Promise.race([stopper.stop().then(() => "done" as const), timeout]);
      if (result === "timeout") log.warn("Shutdown step did not finish in time", { step: stopper.name, waitedMs: leftMs });
    } catch (error) {
      log.warn("Shutdown step failed", { step: stopper.name, ...errorFields(error) });
    } finally {
      clearTimeout(timer);
    }
  }
}
