/** From a fetched secret and its mapping line to a file on disk: shared by `init` and `sidecar`. */
import { basename } from "node:path";
import { AgentError } from "./errors.ts";
import { LEASE_STATE_FILE } from "./lease-store.ts";
import { resolveTarget, writeFileAtomic, type WriteResult } from "./files.ts";
import type { FileOptions, SecretMapping } from "./mapping.ts";
import type { OutputConfig } from "./config.ts";
import { RenderError, renderSecret } from "./render.ts";

/** A mapping line with its target resolved on disk and its mode settled. */
export interface FileTarget<M extends FileOptions & { target: string; line: number } = SecretMapping> {
  mapping: M;
  /** Absolute path on disk. */
  file: string;
  mode: number;
}

/**
 * Resolves every target of `mappings` inside the output directories.
 *
 * @throws AgentError `config` listing every target outside them.
 */
export function resolveTargets<M extends FileOptions & { target: string; line: number }>(
  mappings: M[],
  output: OutputConfig,
  variable: string,
): Array<FileTarget<M>> {
  const problems: string[] = [];
  const targets: Array<FileTarget<M>> = [];
  const lineOfFile = new Map<string, number>();

  for (const mapping of mappings) {
    try {
      const file = resolveTarget(mapping.target, output.layout);
      if (basename(file) === LEASE_STATE_FILE || basename(file) === `${LEASE_STATE_FILE}.lock`) {
        problems.push(`${variable} line ${mapping.line}: "${mapping.target}" is the agent's lease state file; choose another file name`);
        continue;
      }
      const earlier = lineOfFile.get(file);
      if (earlier !== undefined) {
        // Spellings such as `a`, `./a` and `/run/secrets/a` name one file; two writers would race.
        problems.push(`${variable} line ${mapping.line}: "${mapping.target}" is the same file as line ${earlier} (${file}); give each line its own file`);
        continue;
      }
      lineOfFile.set(file, mapping.line);
      targets.push({ mapping, file, mode: mapping.mode ?? output.fileMode });
    } catch (error) {
      problems.push(`${variable} line ${mapping.line}: ${(error as Error).message}`);
    }
  }

  if (problems.length) throw new AgentError("config", problems.join("\n"));
  return targets;
}

/**
 * Renders `data` for `target` and writes it atomically unless the file already contains it.
 *
 * @throws AgentError `not_found` when the selected field is missing, `write` when the disk fails.
 */
export async function writeTarget(
  target: FileTarget<FileOptions & { target: string; line: number }>,
  data: Record<string, unknown>,
  source: string,
  output: OutputConfig,
): Promise<WriteResult> {
  return writeFileAtomic(target.file, renderTarget(target, data, source), { mode: target.mode, layout: output.layout });
}

/** Renders `data` with the format, field and encoding of `target`'s line. */
export function renderTarget(target: FileTarget<FileOptions & { target: string; line: number }>, data: Record<string, unknown>, source: string): Uint8Array {
  try {
    return renderSecret(data, target.mapping);
  } catch (error) {
    if (!(error instanceof RenderError)) throw error;
    const code = error.kind === "missing_field" ? "not_found" : "config";
    throw new AgentError(code, `Cannot render "${source}" into "${target.mapping.target}": ${error.message}`, { cause: error });
  }
}
