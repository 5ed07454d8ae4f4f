/** The agent's version, sent as `User-Agent: scaivault-agent/<version>` and printed by `--version`. */
export const VERSION = "0.1.0";
