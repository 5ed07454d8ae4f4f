import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resolveTarget, writeFileAtomic, type OutputLayout } from "../src/files.ts";

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
});
