import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resolveTarget, writeFileAtomic, writeFilesAtomic, type OutputLayout } from "../src/files.ts";

const scratch = mkdtempSync(join(tmpdir(), "files-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

let counter = 0;
function freshLayout(): { root: string; layout: OutputLayout } {
  const root = join(scratch, `case-${++counter}`);
  mkdirSync(root, { recursive: true });
  return { root, layout: { dirs: [root], prefix: "" } };
}

describe("resolveTarget", () => {
  test("puts a relative target under the first output directory", () => {
    const { root, layout } = freshLayout();
    expect(resolveTarget("db.json", layout)).toBe(join(root, "db.json"));
  });

  test("rebases absolute targets under the prefix", () => {
    const layout = { dirs: ["/run/secrets"], prefix: scratch };
    expect(resolveTarget("/run/secrets/db.json", layout)).toBe(join(scratch, "run/secrets/db.json"));
  });

  test("rejects a target outside the output directories", () => {
    const { layout } = freshLayout();
    expect(() => resolveTarget("/etc/passwd", layout)).toThrow('Target file "/etc/passwd" is outside the output directories');
  });

  test("rejects a target that escapes with ..", () => {
    const { layout } = freshLayout();
    expect(() => resolveTarget("sub/../../x", layout)).toThrow("outside the output directories");
  });

  test("rejects the output directory itself", () => {
    const { root, layout } = freshLayout();
    expect(() => resolveTarget(root, layout)).toThrow("outside the output directories");
  });
});

describe("writeFileAtomic", () => {
  test("writes bytes with the mode asked for", async () => {
    const { root, layout } = freshLayout();
    const path = join(root, "a.json");

    const result = await writeFileAtomic(path, Buffer.from("{}"), { mode: 0o640, layout });

    expect(result.changed).toBe(true);
    expect(readFileSync(path, "utf8")).toBe("{}");
    expect(statSync(path).mode & 0o777).toBe(0o640);
  });

  test("reports no change and keeps the inode for identical bytes", async () => {
    const { root, layout } = freshLayout();
    const path = join(root, "a.json");
    await writeFileAtomic(path, Buffer.from("same"), { mode: 0o644, layout });
    const before = statSync(path);

    const result = await writeFileAtomic(path, Buffer.from("same"), { mode: 0o644, layout });

    expect(result.changed).toBe(false);
    expect(statSync(path).ino).toBe(before.ino);
    expect(statSync(path).mtimeMs).toBe(before.mtimeMs);
  });

  test("corrects only the mode when bytes are unchanged", async () => {
    const { root, layout } = freshLayout();
    const path = join(root, "a.json");
    await writeFileAtomic(path, Buffer.from("same"), { mode: 0o644, layout });

    const result = await writeFileAtomic(path, Buffer.from("same"), { mode: 0o400, layout });

    expect(result.changed).toBe(false);
    expect(statSync(path).mode & 0o777).toBe(0o400);
  });

  test("replaces a file by rename, leaving no temporary file", async () => {
    const { root, layout } = freshLayout();
    const path = join(root, "a.json");
    await writeFileAtomic(path, Buffer.from("old"), { mode: 0o644, layout });
    const before = statSync(path);

    await writeFileAtomic(path, Buffer.from("new"), { mode: 0o644, layout });

    expect(readFileSync(path, "utf8")).toBe("new");
    expect(statSync(path).ino).not.toBe(before.ino);
    expect(readdirSync(root)).toEqual(["a.json"]);
  });

  test("creates missing directories inside the output directory", async () => {
    const { root, layout } = freshLayout();
    const path = join(root, "nested/deeper/a.json");
    await writeFileAtomic(path, Buffer.from("x"), { mode: 0o600, layout });
    expect(readFileSync(path, "utf8")).toBe("x");
  });

  test("rejects a symlinked directory that leads outside", async () => {
    const { root, layout } = freshLayout();
    const outside = join(scratch, `outside-${counter}`);
    mkdirSync(outside);
    symlinkSync(outside, join(root, "link"));

    const write = writeFileAtomic(join(root, "link/a.json"), Buffer.from("x"), { mode: 0o600, layout });

    await expect(write).rejects.toThrow("resolves through a symlink");
    expect(readdirSync(outside)).toEqual([]);
  });

  test("leaves no temporary file when the target is a directory", async () => {
    const { root, layout } = freshLayout();
    const path = join(root, "taken");
    mkdirSync(path);
    writeFileSync(join(path, "keep"), "x");

    await expect(writeFileAtomic(path, Buffer.from("new"), { mode: 0o644, layout })).rejects.toMatchObject({ code: "write" });
    expect(readdirSync(root)).toEqual(["taken"]);
  });

  test("writes 1 MiB byte-exact", async () => {
    const { root, layout } = freshLayout();
    const path = join(root, "big.bin");
    const bytes = Buffer.alloc(1024 * 1024);
    for (let index = 0; index < bytes.length; index++) bytes[index] = (index * 31) % 256;

    await writeFileAtomic(path, bytes, { mode: 0o600, layout });

    expect(readFileSync(path).equals(bytes)).toBe(true);
  });

  test("creates a missing output directory", async () => {
    const root = join(scratch, `absent-${++counter}/run/secrets`);
    await writeFileAtomic(join(root, "a.json"), Buffer.from("x"), { mode: 0o600, layout: { dirs: [root], prefix: "" } });
    expect(readFileSync(join(root, "a.json"), "utf8")).toBe("x");
  });

  test("creates no directory through a symlink", async () => {
    const { root, layout } = freshLayout();
    const outside = join(scratch, `outside-deep-${counter}`);
    mkdirSync(outside);
    symlinkSync(outside, join(root, "link"));

    const write = writeFileAtomic(join(root, "link/new/deeper/a.json"), Buffer.from("x"), { mode: 0o600, layout });

    await expect(write).rejects.toThrow("resolves through a symlink");
    expect(existsSync(join(outside, "new"))).toBe(false);
  });

  test("rejects a target that is a symlink", async () => {
    const { root, layout } = freshLayout();
    const victim = join(scratch, `victim-${counter}`);
    writeFileSync(victim, "same");
    symlinkSync(victim, join(root, "a.txt"));

    const write = writeFileAtomic(join(root, "a.txt"), Buffer.from("same"), { mode: 0o777, layout });

    await expect(write).rejects.toThrow("it is a symlink, not a regular file");
    expect(statSync(victim).mode & 0o777).not.toBe(0o777);
  });

  test("rejects a target that is a FIFO", async () => {
    const { root, layout } = freshLayout();
    execFileSync("mkfifo", [join(root, "pipe")]);

    await expect(writeFileAtomic(join(root, "pipe"), Buffer.from("x"), { mode: 0o600, layout })).rejects.toThrow("it is a special file");
  });

  test("writes a target with a 250-byte name", async () => {
    const { root, layout } = freshLayout();
    const path = join(root, "n".repeat(250));
    await writeFileAtomic(path, Buffer.from("x"), { mode: 0o600, layout });
    expect(readFileSync(path, "utf8")).toBe("x");
  });
});

describe("writeFilesAtomic", () => {
  test("leaves no temporary file behind when one write fails", async () => {
    const { root, layout } = freshLayout();
    mkdirSync(join(root, "taken"));
    const files = Array.from({ length: 60 }, (_, index) => ({ path: join(root, `f${index}`), bytes: Buffer.from(`value ${index}`), mode: 0o600 }));
    files.splice(5, 0, { path: join(root, "taken"), bytes: Buffer.from("x"), mode: 0o600 });

    await expect(writeFilesAtomic(files, layout)).rejects.toMatchObject({ code: "write" });

    expect(readdirSync(root).filter((name) => name.includes(".tmp-"))).toEqual([]);
  });

  test("reports changed per file", async () => {
    const { root, layout } = freshLayout();
    await writeFileAtomic(join(root, "old"), Buffer.from("same"), { mode: 0o600, layout });

    const results = await writeFilesAtomic(
      [
        { path: join(root, "old"), bytes: Buffer.from("same"), mode: 0o600 },
        { path: join(root, "new"), bytes: Buffer.from("fresh"), mode: 0o600 },
      ],
      layout,
    );

    expect(results.map((result) => result.changed)).toEqual([false, true]);
  });
});
