import { defineCommand } from "citty";
import { SETTINGS, settingsArgs } from "../options.ts";
import { loadInitConfig } from "../config.ts";
import { runInit } from "../init.ts";
import { initDynamic } from "../leases-init.ts";
import { runAction } from "./_run.ts";

export default defineCommand({
  meta: {
    name: "init",
    description: "Write the secrets of SECRETS to files once and exit: the init container",
  },
  args: settingsArgs(SETTINGS.connection, SETTINGS.output, SETTINGS.init),
  run: ({ args }) =>
    runAction(args, async ({ signal, env }) => {
      const config = loadInitConfig(args, env);
      await runInit(config, { signal, dynamic: initDynamic });
    }),
});
