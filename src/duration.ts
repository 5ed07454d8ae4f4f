import { AgentError } from "./errors.ts";

const UNIT_MS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/**
 * Parses a duration such as `30s`, `5m`, `1h30m`, `90d` or `250ms` into milliseconds.
 * A bare number is seconds, as in ScaiVault's `expires_in` and Kubernetes' manifests.
 *
 * @throws AgentError `config` naming `name` and the value when it does not parse or is negative.
 */
export function parseDuration(value: string, name: string): number {
  const text = value.trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Math.round(Number(text) * 1000);

  const part = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let consumed = 0;
  for (let match = part.exec(text); match !== null; match = part.exec(text)) {
    total += Number(match[1]) * UNIT_MS[match[2]!]!;
    consumed = part.lastIndex;
  }

  if (text === "" || consumed !== text.length) {
    throw new AgentError(
      "config",
      `Invalid duration for ${name}: "${value}". Use a number with a unit, such as 30s, 5m, 1h or 1h30m`,
    );
  }
  return Math.round(total);
}

/** Formats milliseconds the way ScaiVault writes durations: `2h`, `90m`, `45s`. */
export function formatDuration(ms: number): string {
  const seconds = Math.max(1, Math.round(ms / 1000));
  if (seconds % 3600 === 0) return `${seconds / 3600}h`;
  if (seconds % 60 === 0) return `${seconds / 60}m`;
  return `${seconds}s`;
}
