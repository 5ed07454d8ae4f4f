/**
 * A process-wide bound on Mount calls: at most `maxActive` run, at most `maxQueued` wait, and
 * the rest fail at once with UNAVAILABLE, which the Secrets Store CSI driver retries. A Mount
 * keeps its ScaiVault responses, the rendered files and their encoding in memory, about 25 MiB
 * at worst with the default limits (an estimate), so this bound keeps the provider under its memory limit.
 */
import { AgentError } from "../errors.ts";

/** Error of a Mount rejected because the queue is full; the server returns UNAVAILABLE for it. */
export class MountQueueFullError extends AgentError {
  constructor(maxActive: number, maxQueued: number) {
    super(
      "unreachable",
      `The ScaiVault provider is busy: ${maxActive} Mount calls run and ${maxQueued} wait; the driver retries the Mount. ` +
        "If this repeats, raise CSI_MAX_MOUNTS together with the container's memory limit",
    );
  }
}

/** Counts for metrics and tests. */
export interface MountLimiterStats {
  active: number;
  queued: number;
  rejected: number;
}

/** Admits Mount calls in arrival order. */
export class MountLimiter {
  readonly #waiting: Array<{ admit: () => void }> = [];
  #active = 0;
  #rejected = 0;

  constructor(
    readonly maxActive: number,
    readonly maxQueued: number,
  ) {
    if (!Number.isInteger(maxActive) || maxActive < 1) throw new RangeError(`Invalid maximum of Mount calls ${maxActive}: use a whole number of 1 or more`);
    if (!Number.isInteger(maxQueued) || maxQueued < 0) throw new RangeError(`Invalid Mount queue length ${maxQueued}: use a whole number of 0 or more`);
  }

  /**
   * Waits for a slot and returns its release function. Call it when the Mount ends; later calls do nothing.
   *
   * @throws MountQueueFullError when the queue is full; the abort reason of `signal` when it aborts while waiting.
   */
  async acquire(signal?: AbortSignal): Promise<() => void> {
    signal?.throwIfAborted();
    if (this.#active < this.maxActive) {
      this.#active += 1;
      return this.#releaser();
    }
    if (this.#waiting.length >= this.maxQueued) {
      this.#rejected += 1;
      throw new MountQueueFullError(this.maxActive, this.maxQueued);
    }

    await new Promise<void>((resolve, reject) => {
      const entry = {
        admit: () => {
          signal?.removeEventListener("abort", leave);
          resolve();
        },
      };
      const leave = () => {
        const index = this.#waiting.indexOf(entry);
        if (index >= 0) this.#waiting.splice(index, 1);
        reject(signal!.reason);
      };
      signal?.addEventListener("abort", leave, { once: true });
      this.#waiting.push(entry);
    });
    // The slot was handed over by the releasing call, so `#active` already counts this one.
    return this.#releaser();
  }

  stats(): MountLimiterStats {
    return { active: this.#active, queued: this.#waiting.length, rejected: this.#rejected };
  }

  #releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#waiting.shift();
      if (next) next.admit();
      else this.#active -= 1;
    };
  }
}
