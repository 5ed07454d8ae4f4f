/**
 * The command tree. Each command loads its module only when it runs, so that `init` and
 * `--version` start without parsing the code of the long-running commands.
 */
import { defineCommand, runMain, type CommandDef } from "citty";
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

/** Runs the CLI with `argv` (without the runtime and script). */
export async function runCli(argv: string[]): Promise<void> {
  await runMain(main, { rawArgs: argv });
}
