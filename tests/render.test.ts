import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { envName, RenderError, renderSecret, shellQuote } from "../src/render.ts";

const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

describe("renderSecret", () => {
  test("writes the data object as indented JSON", () => {
    const bytes = renderSecret({ username: "billing", port: 5432 }, { format: "json", encoding: "utf8" });
    expect(JSON.parse(text(bytes))).toEqual({ username: "billing", port: 5432 });
    expect(text(bytes).endsWith("}\n")).toBe(true);
  });

  test("writes one field's raw value without a newline", () => {
    const bytes = renderSecret({ secret_key: "sk_live_abc\n" }, { format: "raw", field: "secret_key", encoding: "utf8" });
    expect(text(bytes)).toBe("sk_live_abc\n");
  });

  test("keeps non-ASCII text byte-exact", () => {
    const value = "pässwörd-密码-🔑";
    const bytes = renderSecret({ value }, { format: "raw", field: "value", encoding: "utf8" });
    expect(Buffer.from(bytes).equals(Buffer.from(value, "utf8"))).toBe(true);
  });

  test("decodes a base64 field to binary", () => {
    const binary = Buffer.from([0, 1, 2, 255, 254, 10, 13]);
    const bytes = renderSecret({ blob: binary.toString("base64") }, { format: "raw", field: "blob", encoding: "base64" });
    expect(Buffer.from(bytes).equals(binary)).toBe(true);
  });

  test("rejects invalid base64 without echoing the value", () => {
    const call = () => renderSecret({ blob: "not*base64" }, { format: "raw", field: "blob", encoding: "base64" });
    expect(call).toThrow(RenderError);
    expect(call).toThrow('field "blob" is not valid base64');
    expect(call).not.toThrow("not*base64");
  });

  test("decodes URL-safe unpadded base64", () => {
    const binary = Buffer.from([251, 255, 190, 1]);
    const encoded = binary.toString("base64url");
    const bytes = renderSecret({ blob: encoded }, { format: "raw", field: "blob", encoding: "base64" });
    expect(encoded).not.toContain("=");
    expect(Buffer.from(bytes).equals(binary)).toBe(true);
  });

  test("rejects base64 decoding of a non-string field", () => {
    expect(() => renderSecret({ port: 5432 }, { format: "raw", field: "port", encoding: "base64" })).toThrow("is not a string");
  });

  test("rejects env fields that would change the sourcing shell", () => {
    for (const key of ["path", "IFS", "ld_preload", "BASH_ENV"]) {
      expect(() => renderSecret({ [key]: "x" }, { format: "env", encoding: "utf8" })).toThrow("changes how a shell that sources the file runs");
    }
  });

  test("rejects a NUL in an env value without echoing it", () => {
    const call = () => renderSecret({ token: "se\0cret-value" }, { format: "env", encoding: "utf8" });
    expect(call).toThrow('field "token" contains a NUL character');
    expect(call).not.toThrow("cret-value");
  });

  test("writes a non-string field as JSON", () => {
    expect(text(renderSecret({ port: 5432 }, { format: "raw", field: "port", encoding: "utf8" }))).toBe("5432");
  });

  test("names the available fields when a field is missing", () => {
    const call = () => renderSecret({ username: "u", password: "hunter2" }, { format: "raw", field: "secret", encoding: "utf8" });
    expect(call).toThrow('field "secret" not found; the secret has the fields: password, username');
    expect(call).not.toThrow("hunter2");
  });

  test("writes env lines that a shell reads back exactly", () => {
    const data = { "db-user": "bill'ing", password: 'p"a$s`w\\o\nrd', plain: "x y" };
    const body = text(renderSecret(data, { format: "env", encoding: "utf8" }));
    const dir = mkdtempSync(join(tmpdir(), "render-"));

    try {
      writeFileSync(join(dir, "vars.env"), body);
      const shell = spawnSync("sh", ["-c", `. "${dir}/vars.env" && printf '%s\\0%s\\0%s' "$DB_USER" "$PASSWORD" "$PLAIN"`]);
      expect(shell.status).toBe(0);
      expect(shell.stdout.toString().split("\0")).toEqual(["bill'ing", 'p"a$s`w\\o\nrd', "x y"]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("rejects env keys that collide", () => {
    expect(() => renderSecret({ "a-b": "1", a_b: "2" }, { format: "env", encoding: "utf8" })).toThrow("both become A_B");
  });
});

describe("envName and shellQuote", () => {
  test("envName upper-cases and replaces other characters", () => {
    expect(envName("db.user-name")).toBe("DB_USER_NAME");
    expect(envName("1st")).toBe("_1ST");
  });

  test("shellQuote escapes single quotes", () => {
    expect(shellQuote("it's")).toBe(`'it'\\''s'`);
  });
});
