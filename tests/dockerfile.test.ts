/**
 * The Dockerfile and deploy/build-images.sh, checked by reading them, so no Docker engine is
 * needed. Stages, base images, users, entrypoints and labels are parsed from the Dockerfile. The
 * script's `--print` mode shows the commands it would run.
 */
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { main } from "../src/cli.ts";
import { ROOT } from "./helpers/cli.ts";

interface Instruction {
  keyword: string;
  args: string;
  line: number;
}

interface Stage {
  name: string;
  from: string;
  instructions: Instruction[];
}

const DOCKERFILE = readFileSync(join(ROOT, "Dockerfile"), "utf8");
const { args: globalArgs, stages } = parseDockerfile(DOCKERFILE);
const FINAL = { init: "scaivault-init", sidecar: "scaivault-sidecar", "csi-provider": "secrets-store-csi-driver-scaivault" } as const;
const BINARY = "/usr/local/bin/scaivault-agent";
const VERSION = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version as string;

/** Splits a Dockerfile into instructions (joining `\` continuations) grouped by stage. */
function parseDockerfile(text: string): { args: Record<string, string>; stages: Stage[] } {
  const args: Record<string, string> = {};
  const stages: Stage[] = [];
  const lines = text.split("\n");

  for (let index = 0; index < lines.length; index++) {
    let line = lines[index]!.trim();
    const start = index + 1;
    if (line === "" || line.startsWith("#")) continue;
    while (line.endsWith("\\") && index + 1 < lines.length) line = line.slice(0, -1) + " " + lines[++index]!.trim();

    const [keyword, ...rest] = line.split(/\s+/);
    const instruction = { keyword: keyword!.toUpperCase(), args: rest.join(" "), line: start };

    if (instruction.keyword === "FROM") {
      const match = instruction.args.match(/^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i);
      stages.push({ name: match?.[2] ?? `stage-${stages.length}`, from: match?.[1] ?? "", instructions: [] });
    } else if (stages.length === 0 && instruction.keyword === "ARG") {
      const [name, value] = instruction.args.split("=");
      args[name!] = value ?? "";
    } else {
      stages.at(-1)?.instructions.push(instruction);
    }
  }
  return { args, stages };
}

/** Returns the stage and its ancestors within this Dockerfile, nearest first. */
function chain(name: string): Stage[] {
  const result: Stage[] = [];
  for (let stage = stages.find((candidate) => candidate.name === name); stage; stage = stages.find((candidate) => candidate.name === stage!.from)) {
    result.push(stage);
  }
  return result;
}

/** Resolves `${ARG}` in an image reference with the global ARG defaults. */
function resolveImage(reference: string): string {
  return reference.replace(/\$\{?(\w+)\}?/g, (_, name) => globalArgs[name] ?? "");
}

/** Returns the last `keyword` instruction along the stage chain, as Docker inherits it. */
function effective(name: string, keyword: string): Instruction | undefined {
  for (const stage of chain(name)) {
    const found = stage.instructions.filter((instruction) => instruction.keyword === keyword).at(-1);
    if (found) return found;
  }
  return undefined;
}

function labels(name: string): Record<string, string> {
  const result: Record<string, string> = {};
  for (const stage of chain(name).reverse()) {
    for (const instruction of stage.instructions.filter((entry) => entry.keyword === "LABEL")) {
      for (const match of instruction.args.matchAll(/([\w.\-]+)="([^"]*)"/g)) result[match[1]!] = match[2]!;
    }
  }
  return result;
}

describe("Dockerfile", () => {
  test("Dockerfile has a build stage and three final stages", () => {
    expect(stages.map((stage) => stage.name)).toEqual(["build", "runtime", "init", "sidecar", "csi-provider"]);
  });

  test("build stage compiles with bun run build", () => {
    const build = stages.find((stage) => stage.name === "build")!;
    const runs = build.instructions.filter((instruction) => instruction.keyword === "RUN").map((instruction) => instruction.args);

    expect(resolveImage(build.from)).toMatch(/^oven\/bun:\d+\.\d+\.\d+$/);
    expect(runs.some((run) => run.includes("bun install --frozen-lockfile"))).toBe(true);
    expect(runs.some((run) => run.includes("bun run build"))).toBe(true);
    expect(DOCKERFILE).not.toMatch(/^\s*RUN[^\n]*\bstrip\b/m);

    const script = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).scripts.build as string;
    for (const flag of ["--compile", "--bytecode", "--format=esm", "--no-compile-autoload-dotenv", "--no-compile-autoload-bunfig", "--outfile dist/scaivault-agent"]) {
      expect(script).toContain(flag);
    }
  });

  test("final stages run on distroless glibc", () => {
    const runtime = resolveImage(stages.find((stage) => stage.name === "runtime")!.from);

    expect(runtime).toMatch(/^gcr\.io\/distroless\/(cc|base)-debian\d+:nonroot$/);
    expect(runtime).not.toContain("static");
    expect(DOCKERFILE).toContain("NOTE: the base images are pinned by tag only");
    for (const name of Object.keys(FINAL)) expect(chain(name).at(-1)!.name).toBe("runtime");
  });

  test.each(Object.entries(FINAL))("stage %s runs the agent as non-root", (name, title) => {
    const user = effective(name, "USER")!.args;
    const entrypoint = JSON.parse(effective(name, "ENTRYPOINT")!.args);
    const stageLabels = labels(name);

    expect(user).toMatch(/^\d+:\d+$/);
    expect(Number(user.split(":")[0])).toBeGreaterThan(0);
    expect(entrypoint).toEqual([BINARY, name]);
    expect(stageLabels["org.opencontainers.image.title"]).toBe(title);
    for (const key of ["description", "version", "revision", "created", "source", "licenses", "vendor"]) {
      expect(stageLabels[`org.opencontainers.image.${key}`]).toBeDefined();
    }
  });

  test("final stages hold no shell step", () => {
    for (const name of [...Object.keys(FINAL), "runtime"]) {
      const stage = stages.find((candidate) => candidate.name === name)!;
      const keywords = stage.instructions.map((instruction) => instruction.keyword);
      expect(keywords).not.toContain("RUN");
      expect(keywords).not.toContain("SHELL");
      expect(keywords).not.toContain("CMD");
    }
  });

  test("runtime stage copies the compiled binary", () => {
    const copy = stages.find((stage) => stage.name === "runtime")!.instructions.find((instruction) => instruction.keyword === "COPY")!;

    expect(copy.args).toContain("--from=build");
    expect(copy.args).toMatch(new RegExp(`/src/dist/scaivault-agent ${BINARY}$`));
  });

  test("entrypoint commands exist in the CLI", () => {
    const commands = Object.keys(main.subCommands as Record<string, unknown>);
    for (const name of Object.keys(FINAL)) expect(commands).toContain(name);
  });

  test("dockerignore admits what the build copies", () => {
    const ignore = readFileSync(join(ROOT, ".dockerignore"), "utf8").split("\n").map((line) => line.trim()).filter((line) => line && !line.startsWith("#"));
    const copied = stages
      .find((stage) => stage.name === "build")!
      .instructions.filter((instruction) => instruction.keyword === "COPY" && !instruction.args.includes("--from"))
      .flatMap((instruction) => instruction.args.split(/\s+/).slice(0, -1));

    expect(ignore[0]).toBe("*");
    for (const path of copied) expect(ignore.some((line) => line === `!${path}` || line === `!${path}/`)).toBe(true);
  });
});

describe("build-images.sh", () => {
  const script = join(ROOT, "deploy/build-images.sh");

  test("build script has valid syntax", () => {
    expect(spawnSync("bash", ["-n", script]).status).toBe(0);
  });

  test("build script builds each image from its stage", () => {
    const result = spawnSync("bash", [script, "--print", "--registry", "registry.example.com/scailabs"], { encoding: "utf8" });

    expect(result.status).toBe(0);
    const commands = result.stdout.trim().split("\n");
    expect(commands.length).toBe(3);
    for (const [index, [target, image]] of Object.entries(FINAL).entries()) {
      const command = commands[index]!;
      expect(command).toStartWith("docker buildx build ");
      expect(command).toContain(`--target ${target} `);
      expect(command).toContain(`--tag registry.example.com/scailabs/${image}:${VERSION} `);
      expect(command).toContain(`--build-arg VERSION=${VERSION} `);
      expect(command).toContain("--load");
    }
  });

  test("build script pushes several platforms", () => {
    const refused = spawnSync("bash", [script, "--print", "--platform", "linux/amd64,linux/arm64"], { encoding: "utf8" });
    expect(refused.status).toBe(2);
    expect(refused.stderr).toContain("add --push");

    const pushed = spawnSync("bash", [script, "--print", "--push", "--platform", "linux/amd64,linux/arm64", "--tag", "1.2.3"], { encoding: "utf8" });
    expect(pushed.status).toBe(0);
    // printf %q escapes the comma; the shell reads it back as linux/amd64,linux/arm64.
    expect(pushed.stdout).toContain("--platform linux/amd64\\,linux/arm64 --push .");
    expect(pushed.stdout).toContain("scailabs/scaivault-sidecar:1.2.3");
  });

  test("build script reports a missing engine", () => {
    const bin = mkdtempSync(join(tmpdir(), "fake-docker-"));
    try {
      writeFileSync(join(bin, "docker"), "#!/bin/sh\n[ \"$1\" = info ] && exit 1\necho \"docker $*\" >&2\nexit 99\n");
      chmodSync(join(bin, "docker"), 0o755);

      const result = spawnSync("bash", [script], { encoding: "utf8", env: { PATH: `${bin}:/usr/bin:/bin`, HOME: tmpdir() } });

      expect(result.status).toBe(1);
      expect(result.stderr).toContain("no Docker engine is reachable");
    } finally {
      rmSync(bin, { recursive: true, force: true });
    }
  });

  test("build script rejects an unknown option", () => {
    const result = spawnSync("bash", [script, "--pushh"], { encoding: "utf8" });
    expect(result.status).toBe(2);
    expect(result.stderr).toContain('unknown option "--pushh"');
  });

  test("image names match the manifests", () => {
    const deployText = spawnSync("grep", ["-rhoE", "scailabs/[a-z-]+:", join(ROOT, "deploy/base")], { encoding: "utf8" }).stdout;
    const used = new Set(deployText.trim().split("\n").map((line) => line.slice("scailabs/".length, -1)));
    for (const image of used) expect(Object.values(FINAL) as string[]).toContain(image);
  });
});
