import { defineCommand } from "citty";

// TODO: placeholder until the csi-provider command lands; it exits with the configuration code.
export default defineCommand({
  meta: { name: "csi-provider", description: "Not built yet" },
  run: () => {
    process.stderr.write("csi-provider is not built yet\n");
    process.exit(2);
  },
});
