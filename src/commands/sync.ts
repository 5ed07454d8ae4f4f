import { defineCommand } from "citty";
import { SETTINGS, settingsArgs } from "../options.ts";
import { loadSyncConfig } from "../sync-config.ts";
import { runSync } from "../sync.ts";
import { runAction } from "./_run.ts";

export default defineCommand({
  meta: {
    name: "sync",
    description: "Create or update a Kubernetes Secret from ScaiVault secrets: the pre-deployment Job",
  },
  args: {
    ...settingsArgs(SETTINGS.connection, SETTINGS.sync),
    "dry-run": { type: "boolean", description: "Print the Secret with values redacted instead of writing it; env SYNC_DRY_RUN" },
  },
  run: ({ args }) =>
    runAction(args, async ({ signal, env }) => {
      // A boolean flag arrives as true/false; the settings table reads strings.
      const flags: Record<string, unknown> = { ...args, "dry-run": args["dry-run"] === undefined ? undefined : String(args["dry-run"]) };
      const config = loadSyncConfig(flags, env);
      await runSync(config, { signal });
    }),
});
