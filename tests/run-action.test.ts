/** runAction's exit paths, in real child processes. */
import { expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EXIT_CODES } from "../src/errors.ts";
import { ROOT } from "./helpers/cli.ts";

test("runAction cleans up and exits 1 after an uncaught exception", () => {
  const dir = mkdtempSync(join(tmpdir(), "run-action-"));
  const marker = join(dir, "marker");

  try {
    const result = spawnSync(process.execPath, [join(ROOT, "tests/fixtures/fatal-action.ts"), marker], {
      env: { PATH: process.env.PATH, LOG_FORMAT: "json" },
      timeout: 30_000,
      encoding: "utf8",
    });

    expect(result.status).toBe(EXIT_CODES.internal);
    expect(existsSync(marker)).toBe(true);
    expect(readFileSync(marker, "utf8")).toBe("cleaned up");
    expect(result.stderr).toContain("Unexpected failure, shutting down");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
