/**
 * scaivault-agent: the CLI entry for `bun run mod.ts`, `deno run -A mod.ts` and the compiled
 * binary, and the library surface for embedding. The long-running commands (sidecar, leases, CSI
 * provider, sync) are not re-exported here: a static re-export would load their code, gRPC included,
 * at every start of `init`. Import them from `src/` directly.
 */
export { AgentError, EXIT_CODES, type ErrorCode } from "./src/errors.ts";
export { ScaiVaultClient, type ClientOptions, type TokenSource } from "./src/client.ts";
export { parseSecretMappings, parseDynamicMappings, type SecretMapping, type DynamicMapping } from "./src/mapping.ts";
export { renderSecret } from "./src/render.ts";
export { writeFileAtomic, resolveTarget, type OutputLayout } from "./src/files.ts";
export { runInit, type InitResult } from "./src/init.ts";
export { loadInitConfig, loadConnection, loadOutput } from "./src/config.ts";
export { VERSION } from "./src/version.ts";

if (import.meta.main) {
  // citty colours help and errors unless NO_COLOR is set; piped output gets plain text.
  if (!process.stdout.isTTY && process.env.NO_COLOR === undefined) process.env.NO_COLOR = "1";
  const { runCli } = await import("./src/cli.ts");
  await runCli(process.argv.slice(2));
}
