import { defineCommand } from "citty";
import { SETTINGS, settingsArgs } from "../options.ts";
import { CSI_CONNECTION_SETTINGS, loadCsiConfig } from "../csi/config.ts";
import { runCsiProvider } from "../csi/provider.ts";
import { runAction } from "./_run.ts";

export default defineCommand({
  meta: {
    name: "csi-provider",
    description: "Serve the Secrets Store CSI driver's provider API on a unix socket: the DaemonSet beside the driver",
  },
  args: settingsArgs(CSI_CONNECTION_SETTINGS, SETTINGS.csi),
  run: ({ args }) =>
    runAction(args, async ({ signal, env }) => {
      const config = loadCsiConfig(args, env);
      await runCsiProvider(config, signal);
    }),
});
