import { defineCommand } from "citty";

// TODO: placeholder until the sync command lands; it exits with the configuration code.
export default defineCommand({
  meta: { name: "sync", description: "Not built yet" },
  run: () => {
    process.stderr.write("sync is not built yet\n");
    process.exit(2);
  },
});
