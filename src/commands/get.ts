import { defineCommand } from "citty";
import { SETTINGS, settingsArgs } from "../options.ts";
import { loadConnection, positiveDuration } from "../config.ts";
import { connect } from "../connect.ts";
import { AgentError } from "../errors.ts";
import { secretPathProblem } from "../paths.ts";
import { renderSecret } from "../render.ts";
import { RenderError } from "../render.ts";
import { runAction } from "./_run.ts";

export default defineCommand({
  meta: {
    name: "get",
    description: "Print one secret's data as JSON, or the raw value of one field",
  },
  args: {
    path: { type: "positional", description: "Secret path, such as environments/production/billing/database", required: true },
    field: { type: "string", description: "Print only the raw value of this field" },
    version: { type: "string", description: "Read this version instead of the current one" },
    format: { type: "string", description: "json (default) or env" },
    timeout: { type: "string", description: "Deadline for the whole command, such as 30s (default: 30s)" },
    ...settingsArgs(SETTINGS.connection),
  },
  run: ({ args }) =>
    runAction(args, async ({ signal, env }) => {
      const path = String(args.path);
      const problem = secretPathProblem(path);
      if (problem) throw new AgentError("config", `Invalid secret path "${path}": ${problem}`);

      let version: number | undefined;
      if (args.version !== undefined) {
        if (!/^[1-9][0-9]{0,15}$/.test(String(args.version))) {
          throw new AgentError("config", `Invalid --version "${args.version}": write a version number of 1 or more`);
        }
        version = Number(args.version);
      }

      const format = args.format ?? "json";
      if (format !== "json" && format !== "env") throw new AgentError("config", `Invalid --format "${format}": use json or env`);
      if (args.field !== undefined && args.format !== undefined) {
        throw new AgentError("config", "--field prints one raw value, so it cannot be combined with --format; drop one of them");
      }

      const timeoutMs = positiveDuration(String(args.timeout ?? "30s"), "--timeout");
      const deadline = AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]);
      const client = connect(loadConnection(args, env), { signal: deadline });
      const secret = await client.getSecret(path, version);

      let bytes: Uint8Array;
      try {
        bytes = renderSecret(secret.data, { format: args.field ? "raw" : format, field: args.field, encoding: "utf8" });
      } catch (error) {
        if (!(error instanceof RenderError)) throw error;
        throw new AgentError("not_found", `Cannot print "${path}": ${error.message}`);
      }
      await new Promise<void>((resolve, reject) =>
        process.stdout.write(bytes, (error) => {
          if (!error) resolve();
          else reject(new AgentError("write", `Cannot write to standard output: ${(error as NodeJS.ErrnoException).code ?? error.message}`));
        }),
      );
    }),
});
