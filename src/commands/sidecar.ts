import { defineCommand } from "citty";

// TODO: placeholder until the sidecar command lands; it exits with the configuration code.
export default defineCommand({
  meta: { name: "sidecar", description: "Not built yet" },
  run: () => {
    process.stderr.write("sidecar is not built yet\n");
    process.exit(2);
  },
});
