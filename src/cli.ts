/**
 * The command tree. Each command loads its module only when it runs, so that `init` and
 * `--version` start without parsing the code of the long-running commands.
 */
import { defineCommand, runCommand, runMain, showUsage, type CommandDef } from "citty";
import { VERSION } from "./version.ts";

const load = (loader: () => Promise<{ default: CommandDef<any> }>) => () => loader().then((module) => module.default);

export const main = defineCommand({
  meta: {
    name: "scaivault-agent",
    version: VERSION,
    description: "Delivers ScaiVault secrets into Kubernetes pods as files",
  },
  subCommands: {
    init: load(() => import("./commands/init.ts")),
    get: load(() => import("./commands/get.ts")),
    sidecar: load(() => import("./commands/sidecar.ts")),
    "csi-provider": load(() => import("./commands/csi-provider.ts")),
    sync: load(() => import("./commands/sync.ts")),
    dev: () => import("./dev/command.ts").then((module) => module.devCommand as CommandDef<any>),
  },
});

/**
 * Runs the CLI with `argv` (without the runtime and script). Help and `--version` go through
 * citty's `runMain`. A usage error (unknown command, missing argument) exits 2, the exit code of
 * invalid configuration, because the agent keeps citty's 1 for internal errors.
 */
export async function runCli(argv: string[]): Promise<void> {
  if (argv.includes("--help") || argv.includes("-h") || (argv.length === 1 && argv[0] === "--version")) {
    await runMain(main, { rawArgs: argv });
    return;
  }

  if (argv.length === 0) {
    await showUsage(main);
    process.exit(2);
  }

  try {
    await runCommand(main, { rawArgs: argv });
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\nRun "scaivault-agent --help" or "scaivault-agent COMMAND --help" for usage.\n`);
    process.exit(2);
  }
}
