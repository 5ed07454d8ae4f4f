/**
 * The Dockerfile and deploy/build-images.sh, checked without a Docker engine. Stages, base images,
 * users, entrypoints and labels are parsed from the Dockerfile, and the build stage's compile step
 * runs under `sh` with a stand-in `bun` that records its arguments. The script's `--print` mode
 * shows the commands it would run, here in throwaway git repositories.
 */
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
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

/** Returns the build stage's RUN instruction that compiles the binary. */
function compileStep(): string {
  const build = stages.find((stage) => stage.name === "build")!;
  return build.instructions.find((instruction) => instruction.keyword === "RUN" && instruction.args.includes("bun build"))!.args;
}

/** Returns the default of an ARG, declared before the first stage or in the build stage. */
function globalOrStageArg(name: string): string {
  if (globalArgs[name] !== undefined) return globalArgs[name]!;
  const declared = stages.find((stage) => stage.name === "build")!.instructions.find((instruction) => instruction.keyword === "ARG" && instruction.args.startsWith(`${name}=`));
  return declared!.args.slice(name.length + 1);
}

/**
 * Runs the compile step under `sh` in a temp dir, with a `bun` on PATH that records its arguments
 * and writes a stand-in binary, which records whether it was run.
 */
function runCompileStep(env: Record<string, string>): { status: number | null; stderr: string; bunArgs: string; ranBinary: boolean } {
  const dir = mkdtempSync(join(tmpdir(), "compile-step-"));
  try {
    const bin = join(dir, "bin");
    mkdirSync(bin);
    writeFileSync(
      join(bin, "bun"),
      `#!/bin/sh\necho "$*" > "${dir}/bun-args"\nmkdir -p dist\nprintf '#!/bin/sh\\ntouch "${dir}/ran"\\n' > dist/scaivault-agent\nchmod +x dist/scaivault-agent\n`,
    );
    chmodSync(join(bin, "bun"), 0o755);

    const result = spawnSync("sh", ["-c", compileStep()], { cwd: dir, encoding: "utf8", env: { PATH: `${bin}:/usr/bin:/bin`, ...env } });
    const argsFile = join(dir, "bun-args");
    return { status: result.status, stderr: result.stderr, bunArgs: existsSync(argsFile) ? readFileSync(argsFile, "utf8").trim() : "", ranBinary: existsSync(join(dir, "ran")) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe("Dockerfile", () => {
  test("Dockerfile has a build stage and three final stages", () => {
    expect(stages.map((stage) => stage.name)).toEqual(["build", "runtime", "init", "sidecar", "csi-provider"]);
  });

  test("build stage runs on the build platform", () => {
    const build = stages.find((stage) => stage.name === "build")!;
    const from = DOCKERFILE.split("\n").find((line) => /^FROM .* AS build$/.test(line));

    expect(from).toBe("FROM --platform=$BUILDPLATFORM ${BUN_IMAGE} AS build");
    expect(resolveImage(build.from)).toMatch(/^oven\/bun:\d+\.\d+\.\d+$/);
    expect(build.instructions.some((instruction) => instruction.keyword === "RUN" && instruction.args.includes("bun install --frozen-lockfile"))).toBe(true);
    expect(DOCKERFILE).not.toMatch(/^\s*RUN[^\n]*\bstrip\b/m);
  });

  test("compile step uses the build script's flags", () => {
    const compile = compileStep();
    const script = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).scripts.build as string;
    const flags = script.split(/\s+/).filter((word) => word.startsWith("--"));

    expect(flags).toEqual(expect.arrayContaining(["--compile", "--bytecode", "--splitting", "--format=esm", "--no-compile-autoload-dotenv", "--no-compile-autoload-bunfig", "--outfile"]));
    for (const flag of flags) expect(compile).toContain(` ${flag}`);
    expect(compile).toContain("bun build mod.ts --compile --target=");
    expect(compile).toContain("--outfile dist/scaivault-agent");
  });

  test.each([
    ["amd64", "bun-linux-x64-baseline", true],
    ["arm64", "bun-linux-arm64", false],
  ])("compile step targets %s", (arch, target, runsBinary) => {
    const result = runCompileStep({ TARGETARCH: arch, BUILDARCH: "amd64", BUN_X64_TARGET: globalOrStageArg("BUN_X64_TARGET") });

    expect(result.status).toBe(0);
    expect(result.bunArgs).toContain(`--target=${target}`);
    expect(result.ranBinary).toBe(runsBinary);
  });

  test("compile step rejects another architecture", () => {
    const result = runCompileStep({ TARGETARCH: "s390x", BUILDARCH: "amd64", BUN_X64_TARGET: globalOrStageArg("BUN_X64_TARGET") });

    expect(result.status).toBe(1);
    expect(result.stderr).toContain('Unsupported TARGETARCH "s390x"');
    expect(result.bunArgs).toBe("");
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
    for (const key of ["description", "version", "revision", "created", "licenses", "vendor", "base.name"]) {
      expect(stageLabels[`org.opencontainers.image.${key}`]).toBeDefined();
    }
    // The source label comes from build-images.sh only when the URL is known.
    expect(stageLabels["org.opencontainers.image.source"]).toBeUndefined();
    for (const [key, value] of Object.entries(stageLabels)) expect(`${key}=${value}`).not.toMatch(/=$/);
  });

  test("base image label follows RUNTIME_IMAGE", () => {
    const runtime = stages.find((stage) => stage.name === "runtime")!;

    expect(runtime.from).toBe("${RUNTIME_IMAGE}");
    expect(labels("runtime")["org.opencontainers.image.base.name"]).toBe("${RUNTIME_IMAGE}");
    expect(runtime.instructions.some((instruction) => instruction.keyword === "ARG" && instruction.args === "RUNTIME_IMAGE")).toBe(true);
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

  test("build script labels the version of --tag", () => {
    const result = spawnSync("bash", [script, "--print", "--tag", "1.2.3-rc.1"], { encoding: "utf8" });

    expect(result.status).toBe(0);
    for (const command of result.stdout.trim().split("\n")) {
      expect(command).toContain("--build-arg VERSION=1.2.3-rc.1 ");
      expect(command).toContain(":1.2.3-rc.1 ");
    }
  });

  describe("in a git repository", () => {
    const TOKEN = "glcbt-64_Zx81TokenQ";
    let repo: string;

    /** Copies the script and package.json into a fresh repository, so its remote and commits are the test's own. */
    function makeRepo(): string {
      const dir = mkdtempSync(join(tmpdir(), "build-images-"));
      mkdirSync(join(dir, "deploy"));
      copyFileSync(script, join(dir, "deploy/build-images.sh"));
      copyFileSync(join(ROOT, "package.json"), join(dir, "package.json"));
      mkdirSync(join(dir, "src"));
      writeFileSync(join(dir, "src/a.ts"), "export {};\n");
      git(dir, "init", "--quiet");
      return dir;
    }

    function git(dir: string, ...args: string[]): string {
      const result = spawnSync("git", ["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false", ...args], {
        cwd: dir,
        encoding: "utf8",
        env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: dir, GIT_CONFIG_NOSYSTEM: "1" },
      });
      if (result.status !== 0) throw new Error(`git ${args.join(" ")} failed: ${result.stderr}`);
      return result.stdout.trim();
    }

    function print(env: Record<string, string> = {}): string {
      const result = spawnSync("bash", [join(repo, "deploy/build-images.sh"), "--print"], {
        encoding: "utf8",
        env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: repo, GIT_CONFIG_NOSYSTEM: "1", ...env },
      });
      if (result.status !== 0) throw new Error(`build-images.sh failed: ${result.stderr}`);
      return result.stdout.trim().split("\n")[0]!;
    }

    beforeEach(() => {
      repo = makeRepo();
    });

    afterEach(() => {
      rmSync(repo, { recursive: true, force: true });
    });

    test("repository without commits has revision unknown", () => {
      expect(print()).toContain("--build-arg REVISION=unknown ");
    });

    test("clean tree has the commit as revision", () => {
      git(repo, "add", ".");
      git(repo, "commit", "--quiet", "-m", "initial");
      const head = git(repo, "rev-parse", "HEAD");

      expect(print()).toContain(`--build-arg REVISION=${head} `);
    });

    test("changed build input marks the revision dirty", () => {
      git(repo, "add", ".");
      git(repo, "commit", "--quiet", "-m", "initial");
      const head = git(repo, "rev-parse", "HEAD");
      writeFileSync(join(repo, "src/b.ts"), "export const b = 1;\n");

      expect(print()).toContain(`--build-arg REVISION=${head}-dirty `);
    });

    test("source label drops the CI token", () => {
      git(repo, "remote", "add", "origin", `https://gitlab-ci-token:${TOKEN}@gitlab.example.com/scailabs/scaivault-agent.git`);

      const command = print();

      expect(command).toContain("--label org.opencontainers.image.source=https://gitlab.example.com/scailabs/scaivault-agent.git ");
      expect(command).not.toContain(TOKEN);
      expect(command).not.toContain("gitlab-ci-token");
    });

    test("source label turns an ssh remote into https", () => {
      git(repo, "remote", "add", "origin", "git@github.com:scailabs/scaivault-agent.git");

      expect(print()).toContain("--label org.opencontainers.image.source=https://github.com/scailabs/scaivault-agent.git ");
    });

    test("SOURCE_URL overrides the remote", () => {
      git(repo, "remote", "add", "origin", "https://gitlab.example.com/mirror/agent.git");

      const command = print({ SOURCE_URL: `https://oauth2:${TOKEN}@github.com/scailabs/scaivault-agent` });

      expect(command).toContain("--label org.opencontainers.image.source=https://github.com/scailabs/scaivault-agent ");
      expect(command).not.toContain(TOKEN);
    });

    test("unknown source leaves the label out", () => {
      const command = print();

      expect(command).not.toContain("org.opencontainers.image.source");
      expect(command).not.toContain("SOURCE_URL");
    });
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
