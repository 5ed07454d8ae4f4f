import { describe, expect, test } from "bun:test";
import { parseDynamicMappings, parseSecretMappings } from "../src/mapping.ts";
import { AgentError } from "../src/errors.ts";

/** The value of SECRETS exactly as the Kubernetes guide's manifest writes it (YAML block scalar). */
const GUIDE_SECRETS =
  "environments/production/billing/database -> /run/secrets/db.json\n" +
  "environments/production/billing/stripe   -> /run/secrets/stripe.json\n";

function problemsOf(text: string, parse: (text: string) => unknown = parseSecretMappings): string {
  try {
    parse(text);
  } catch (error) {
    expect(error).toBeInstanceOf(AgentError);
    expect((error as AgentError).code).toBe("config");
    return (error as Error).message;
  }
  throw new Error("expected the text to be rejected");
}

describe("parseSecretMappings", () => {
  test("parses the guide's example as written", () => {
    const mappings = parseSecretMappings(GUIDE_SECRETS);

    expect(mappings).toHaveLength(2);
    expect(mappings[0]).toMatchObject({ line: 1, path: "environments/production/billing/database", target: "/run/secrets/db.json", format: "json" });
    expect(mappings[1]).toMatchObject({ line: 2, path: "environments/production/billing/stripe", target: "/run/secrets/stripe.json" });
    expect(mappings[0]!.field).toBeUndefined();
    expect(mappings[0]!.mode).toBeUndefined();
  });

  test("skips blank lines and comments and keeps line numbers", () => {
    const mappings = parseSecretMappings("\n# billing\n\n  a/b -> x.json  \n\t# done\n");

    expect(mappings).toHaveLength(1);
    expect(mappings[0]!.line).toBe(4);
    expect(mappings[0]!.target).toBe("x.json");
  });

  test("skips a comment after the options", () => {
    const [mapping] = parseSecretMappings("a/b#field -> x.key mode=0400   # the API key");
    expect(mapping).toMatchObject({ path: "a/b", field: "field", target: "x.key", mode: 0o400 });
  });

  test("accepts CRLF line ends", () => {
    expect(parseSecretMappings("a/b -> x.json\r\nc/d -> y.json\r\n")).toHaveLength(2);
  });

  test("reads a field selector as raw format", () => {
    const [mapping] = parseSecretMappings("environments/production/billing/stripe#secret_key -> /run/secrets/stripe.key");

    expect(mapping!.field).toBe("secret_key");
    expect(mapping!.format).toBe("raw");
  });

  test("reads mode, format and encoding options", () => {
    const [env, binary] = parseSecretMappings("a/b -> a.env format=env mode=0400\nc/d#blob -> d.bin encoding=base64 mode=600");

    expect(env).toMatchObject({ format: "env", mode: 0o400 });
    expect(binary).toMatchObject({ field: "blob", encoding: "base64", mode: 0o600 });
  });

  test("reads field= as an option", () => {
    const [mapping] = parseSecretMappings("a/b -> key.txt field=password");
    expect(mapping!.field).toBe("password");
  });

  test.each([
    ["a/b /run/secrets/x", 'SECRETS line 1: expected "source -> target" but found no "->"'],
    ["a/b -> x -> y", 'SECRETS line 1: expected one "->" but found 2'],
    [" -> x.json", 'SECRETS line 1: nothing before "->"'],
    ["a/b -> ", 'SECRETS line 1: nothing after "->"'],
    ["Environments/B -> x.json", 'invalid secret path "Environments/B": the path contains "E"'],
    ["/a/b -> x.json", 'invalid secret path "/a/b": the path must not start or end with /'],
    ["a//b -> x.json", "the path has an empty segment"],
    ["a/b/c/d/e/f/g/h/i/j/k -> x.json", "the path has 11 segments, the maximum is 10"],
    [`${"a".repeat(513)} -> x.json`, "the path is 513 characters long, the maximum is 512"],
    ["a/b#bad field -> x.json", 'the source "a/b#bad field" contains a space'],
    ["a/b#f$ -> x.json", 'invalid field "f$"'],
    ["a/b -> x.json mode=999", 'invalid mode "999"'],
    ["a/b -> x.json format=yaml", 'unknown format "yaml": use json, env or raw'],
    ["a/b -> x.json owner=root", 'unknown option "owner"'],
    ["a/b -> x.json mode=0400 mode=0600", 'option "mode" is given twice'],
    ["a/b#f -> x.json format=env", "format=env cannot be combined with a field"],
    ["a/b -> x.json format=raw", "format=raw needs a field"],
    ["a/b -> x.json encoding=base64", "encoding=base64 applies to one field"],
    ["a/b#f -> x.json field=g", 'the field is given twice, as "#f" and as field='],
    ["a/b -> ../x.json", 'the target "../x.json" contains ".."'],
    ["a/b -> /run/secrets/", 'ends with "/"; name a file, not a directory'],
    ["a/b -> mode=0400", "looks like an option"],
    ["a/b -> x.json garbage", 'expected key=value but found "garbage"'],
  ])("rejects %j", (line, message) => {
    expect(problemsOf(line)).toContain(message);
  });

  test("rejects two lines writing one file and names both", () => {
    const message = problemsOf("a/b -> /run/secrets/x.json\nc/d -> /run/secrets/x.json");
    expect(message).toContain('SECRETS line 2: "/run/secrets/x.json" is already written by line 1');
  });

  test("reports every bad line with its number in one error", () => {
    const message = problemsOf("ok/path -> a.json\nBAD -> b.json\n\nc/d -> c.json mode=9");

    expect(message).toContain("Invalid SECRETS: 2 problems");
    expect(message).toContain("SECRETS line 2:");
    expect(message).toContain("SECRETS line 4:");
  });

  test("names the variable it parses", () => {
    const message = problemsOf("nope", (text) => parseSecretMappings(text, { variable: "WATCH_PATHS" }));
    expect(message).toContain("WATCH_PATHS line 1:");
  });

  test("checks Secret keys when the target is a key", () => {
    const [mapping] = parseSecretMappings("a/b#password -> DB_PASSWORD", { targetKind: "key" });
    expect(mapping!.target).toBe("DB_PASSWORD");
    expect(problemsOf("a/b -> bad/key", (text) => parseSecretMappings(text, { targetKind: "key" }))).toContain('invalid Secret key "bad/key"');
  });
});

describe("parseDynamicMappings", () => {
  test("parses the guide's example as written", () => {
    const [mapping] = parseDynamicMappings("engine=postgres-prod role=readonly ttl=2h -> /run/secrets/db.json\n");

    expect(mapping).toMatchObject({ engine: "postgres-prod", role: "readonly", ttlMs: 7_200_000, target: "/run/secrets/db.json", format: "json" });
  });

  test("leaves ttl to the role's default when omitted", () => {
    const [mapping] = parseDynamicMappings("role=readonly engine=pg -> db.json field=password mode=0400");
    expect(mapping).toMatchObject({ ttlMs: undefined, field: "password", mode: 0o400, format: "raw" });
  });

  test.each([
    ["role=readonly -> db.json", "missing engine="],
    ["engine=pg -> db.json", "missing role="],
    ["engine=pg role=ro ttl=forever -> db.json", 'Invalid duration for ttl on line 1: "forever"'],
    ["engine=pg role=ro user=x -> db.json", 'unknown key "user" before "->"'],
    ["engine=PG role=ro -> db.json", 'invalid engine "PG"'],
    ["engine=pg engine=pg2 role=ro -> db.json", '"engine" is given twice'],
    ["engine=pg role=ro ttl=500ms -> db.json", "shorter than one second"],
  ])("rejects %j", (line, message) => {
    expect(problemsOf(line, parseDynamicMappings)).toContain(message);
  });
});
