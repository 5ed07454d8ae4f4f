/**
 * The one file writer. Targets stay inside the configured output directories, content is compared
 * before writing, and every write is atomic on POSIX: temporary file in the target's directory,
 * fsync, chmod, rename. A reader sees the old file or the new one, never a part.
 */
import { chmod, lstat, mkdir, open, readFile, realpath, rename, unlink } from "node:fs/promises";
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { AgentError } from "./errors.ts";
import { randomHex } from "./retry.ts";

/** Output directories and the prefix they resolve under. */
export interface OutputLayout {
  /** Absolute directories that targets must stay inside; relative targets go under the first. */
  dirs: string[];
  /** Directory under which absolute targets and `dirs` are resolved; "" means the real root. */
  prefix: string;
}

export interface WriteResult {
  /** False when the file already held these bytes with this mode, so nothing was written. */
  changed: boolean;
  path: string;
}

/**
 * Resolves a target as written in the configuration to a path on disk, and checks that it stays
 * inside one of the output directories by its text. `writeFileAtomic` checks symlinks as well.
 *
 * @throws AgentError `config` naming the target and the allowed directories.
 */
export function resolveTarget(target: string, layout: OutputLayout): string {
  const dirs = layout.dirs.map((dir) => applyPrefix(resolve(dir), layout.prefix));
  const first = dirs[0];
  if (first === undefined) throw new AgentError("config", "No output directory is configured; set OUTPUT_DIRS");

  const path = isAbsolute(target) ? applyPrefix(resolve(target), layout.prefix) : resolve(first, target);
  if (!dirs.some((dir) => isInside(path, dir))) {
    throw new AgentError(
      "config",
      `Target file "${target}" is outside the output directories (${layout.dirs.join(", ")}); ` +
        "write it under one of them or add its directory to OUTPUT_DIRS",
    );
  }
  return path;
}

/** Returns the directories of `layout` as paths on disk. */
export function outputDirs(layout: OutputLayout): string[] {
  return layout.dirs.map((dir) => applyPrefix(resolve(dir), layout.prefix));
}

/**
 * Writes `bytes` to `path` atomically with `mode`, unless the file already contains exactly these
 * bytes, in which case it only corrects the mode and reports `changed: false`. Missing parent
 * directories inside an output directory are created with mode 0755.
 *
 * @throws AgentError `write` naming the path; an existing file is left as it was.
 */
export async function writeFileAtomic(
  path: string,
  bytes: Uint8Array,
  options: { mode: number; layout: OutputLayout },
): Promise<WriteResult> {
  const [result] = await writeFilesAtomic([{ path, bytes, mode: options.mode }], options.layout);
  return result!;
}

/** One file for `writeFilesAtomic`. */
export interface FileWrite {
  path: string;
  bytes: Uint8Array;
  mode: number;
}

/**
 * Writes several files with the guarantees of `writeFileAtomic`. Each directory is checked for
 * confinement once and synced once after its renames, and files are written concurrently, which
 * makes a thousand files cost a fraction of a thousand single writes. When one file fails, the
 * files renamed before it stay written and the rest are not touched.
 *
 * @throws AgentError `write` or `config` naming the first failing path.
 */
export async function writeFilesAtomic(files: FileWrite[], layout: OutputLayout, concurrency = 32): Promise<WriteResult[]> {
  const dirs = [...new Set(files.map((file) => dirname(file.path)))];
  for (const dir of dirs) {
    await ensureConfinedDir(dir, layout, files.find((file) => dirname(file.path) === dir)!.path);
  }

  const results: WriteResult[] = new Array(files.length);
  const touched = new Set<string>();
  let next = 0;

  let failed = false;

  async function writeWorker(): Promise<void> {
    for (let index = next++; index < files.length && !failed; index = next++) {
      const file = files[index]!;
      try {
        results[index] = await writeOne(file);
      } catch (error) {
        failed = true;
        throw error;
      }
      if (results[index]!.changed) touched.add(dirname(file.path));
    }
  }

  // allSettled, not all: every worker must finish and remove its temporary file before the
  // caller sees the first failure and perhaps exits.
  const settled = await Promise.allSettled(Array.from({ length: Math.min(concurrency, files.length) }, writeWorker));
  await Promise.all([...touched].map(syncDirectory));

  const failure = settled.find((outcome): outcome is PromiseRejectedResult => outcome.status === "rejected");
  if (failure) throw failure.reason;
  return results;
}

/**
 * Reads a regular file, or returns undefined when nothing exists at `path`.
 *
 * @throws AgentError `write` when `path` is a symlink, a directory or a special file: the agent
 * replaces only regular files, so that a planted link or FIFO cannot redirect or block it.
 */
export async function readIfExists(path: string): Promise<{ bytes: Buffer; mode: number } | undefined> {
  let info;
  try {
    info = await lstat(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new AgentError("write", `Cannot read file "${path}": ${(error as NodeJS.ErrnoException).code ?? "error"}`, { cause: error });
  }

  if (!info.isFile()) {
    const kind = info.isSymbolicLink() ? "a symlink" : info.isDirectory() ? "a directory" : "a special file";
    throw new AgentError("write", `Cannot write file "${path}": it is ${kind}, not a regular file; remove it or choose another target`);
  }

  try {
    return { bytes: await readFile(path), mode: info.mode & 0o7777 };
  } catch (error) {
    throw new AgentError("write", `Cannot read file "${path}": ${(error as NodeJS.ErrnoException).code ?? "error"}`, { cause: error });
  }
}

// ---------------------------------------------------------------------------------------------

async function writeOne({ path, bytes, mode }: FileWrite): Promise<WriteResult> {
  const current = await readIfExists(path);
  if (current && Buffer.compare(current.bytes, bytes) === 0) {
    if (current.mode !== mode) await chmod(path, mode);
    return { changed: false, path };
  }

  // A long name plus the suffix could pass NAME_MAX (255 bytes), so long names get a short temporary name.
  const name = Buffer.byteLength(basename(path)) > 200 ? "" : basename(path);
  const temporary = join(dirname(path), `.${name}.tmp-${randomHex(6)}`);
  let renamed = false;
  try {
    const handle = await open(temporary, "wx", mode);
    try {
      await handle.writeFile(bytes);
      // open() applies the umask; set the mode the user asked for before the file becomes visible.
      await handle.chmod(mode);
      await handle.sync();
    } finally {
      await handle.close();
    }

    await rename(temporary, path);
    renamed = true;
    return { changed: true, path };
  } catch (error) {
    throw new AgentError("write", `Cannot write file "${path}": ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, {
      cause: error,
    });
  } finally {
    if (!renamed) await unlink(temporary).catch(() => {});
  }
}

function applyPrefix(absolute: string, prefix: string): string {
  return prefix ? join(resolve(prefix), absolute) : absolute;
}

function isInside(path: string, dir: string): boolean {
  const rel = relative(dir, path);
  return rel !== "" && !rel.startsWith("..") && !isAbsolute(rel) && rel.split(sep)[0] !== "..";
}

/**
 * Creates `dir` if needed and checks, after resolving symlinks, that it is still inside an output
 * directory, so that a symlink planted in the volume cannot redirect a write.
 */
async function ensureConfinedDir(dir: string, layout: OutputLayout, target: string): Promise<void> {
  // The output directory itself is configuration, so it may be created as written. Below it, the
  // deepest existing ancestor is checked first, so that no directory is created through a symlink.
  const root = outputDirs(layout).find((candidate) => dir === candidate || isInside(dir, candidate));
  if (root === undefined) throw new AgentError("config", `Target file "${target}" is outside the output directories`);
  await mkdir(root, { recursive: true, mode: 0o755 }).catch(() => {});

  let existing = dir;
  while (existing !== root && !(await exists(existing))) existing = dirname(existing);
  await checkConfined(existing, layout, target);
  if (existing === dir) return;

  try {
    await mkdir(dir, { recursive: true, mode: 0o755 });
  } catch (error) {
    throw new AgentError("write", `Cannot create directory "${dir}" for "${target}": ${(error as NodeJS.ErrnoException).code ?? "error"}`, {
      cause: error,
    });
  }

  await checkConfined(dir, layout, target);
}

async function exists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    () => false,
  );
}

async function checkConfined(dir: string, layout: OutputLayout, target: string): Promise<void> {
  const roots = outputDirs(layout);
  const realDir = await realpath(dir);
  for (const root of roots) {
    const realRoot = await realpath(root).catch(() => undefined);
    if (realRoot !== undefined && (realDir === realRoot || isInside(realDir, realRoot))) return;
  }

  throw new AgentError(
    "config",
    `Target file "${target}" resolves through a symlink to "${realDir}", outside the output directories; remove the symlink`,
  );
}

async function syncDirectory(dir: string): Promise<void> {
  // Makes the rename durable across a node crash. Not every file system allows it, so it is best effort.
  try {
    const handle = await open(dir, "r");
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch {
    // An fsync on a directory is refused by some file systems; the rename itself is already atomic.
  }
}
