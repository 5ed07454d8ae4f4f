/** Settings of `csi-provider` and the SCAIVAULT_ALLOWED_URLS rules. */
import { describe, expect, test } from "bun:test";
import { AgentError } from "../src/errors.ts";
import { parseAllowedUrls, urlProblem } from "../src/csi/allowed-urls.ts";
import { loadCsiConfig } from "../src/csi/config.ts";

describe("csi allowed urls", () => {
  test.each([
    ["https://*", "https://scaivault.scailabs.ai", true],
    ["https://*", "https://10.0.0.1:8443/", true],
    ["https://*", "http://scaivault.scailabs.ai", false],
    ["https://*.scailabs.ai", "https://scaivault.scailabs.ai", true],
    ["https://*.scailabs.ai", "https://scailabs.ai", false],
    ["https://*.scailabs.ai", "https://scaivault.scailabs.ai.evil.example", false],
    ["https://*.scailabs.ai", "https://scaivault.scailabs.ai:8443", false],
    ["https://vault.example.com:8443", "https://vault.example.com:8443/", true],
    ["https://vault.example.com:8443", "https://vault.example.com", false],
    ["https://vault.example.com:443", "https://vault.example.com", true],
    ["https://vault.example.com/scaivault", "https://vault.example.com/scaivault/", true],
    ["https://vault.example.com/scaivault", "https://vault.example.com/scaivault-other", false],
    ["http://127.0.0.1:8200", "http://127.0.0.1:8200", true],
    ["http://127.0.0.1:8200", "http://127.0.0.1:8201", false],
    ["HTTPS://Vault.Example.COM", "https://vault.example.com", true],
  ])("rule %s applied to %s allows: %p", (rules, url, allowed) => {
    expect(urlProblem(url, parseAllowedUrls(rules)) === undefined).toBe(allowed);
  });

  test.each([
    ["https://user:pass@vault.example.com", "it must not contain a user name or password"],
    ["https://vault.example.com/?x=1", "it must not contain a query or a fragment"],
    ["ftp://vault.example.com", "use an https:// URL"],
    ["vault.example.com", "it is not a URL; write one such as https://scaivault.scailabs.ai"],
  ])("base_url %s is refused: %s", (url, problem) => {
    expect(urlProblem(url, parseAllowedUrls("https://*,http://*"))).toBe(problem);
  });

  test("invalid rules are all reported", () => {
    expect(() => parseAllowedUrls("vault.example.com, https://*, ftp://x")).toThrow(
      new AgentError(
        "config",
        'Invalid SCAIVAULT_ALLOWED_URLS entry "vault.example.com": write a base URL such as https://scaivault.example.com, https://*.example.com or https://*\n' +
          'Invalid SCAIVAULT_ALLOWED_URLS entry "ftp://x": write a base URL such as https://scaivault.example.com, https://*.example.com or https://*',
      ),
    );
  });
});

describe("csi config", () => {
  test("defaults follow the Secrets Store CSI driver's layout", () => {
    const config = loadCsiConfig({}, {});

    expect(config.socketPath).toBe("/etc/kubernetes/secrets-store-csi-providers/scaivault.sock");
    expect(config.socketMode).toBe(0o600);
    expect(config.health).toEqual({ hostname: "::", port: 8098 });
    expect(config.allowedUrls.map((rule) => rule.text)).toEqual(["https://*"]);
    expect(config.maxResponseBytes).toBe(4 * 1024 * 1024);
    expect(config.mountTimeoutMs).toBe(30_000);
    expect(config.mountConcurrency).toBe(4);
    expect(config.maxAttempts).toBe(3);
  });

  test("flags win over the environment", () => {
    const config = loadCsiConfig({ socket: "/var/run/secrets-store-csi-providers/scaivault.sock", "health-addr": "off" }, { CSI_SOCKET: "/tmp/x.sock", SCAIVAULT_CA_FILE: "/etc/ca.pem" });

    expect(config.socketPath).toBe("/var/run/secrets-store-csi-providers/scaivault.sock");
    expect(config.health).toBeUndefined();
    expect(config.caFile).toBe("/etc/ca.pem");
  });

  test("every invalid setting is reported", () => {
    const env = {
      CSI_SOCKET: "scaivault.sock",
      CSI_SOCKET_MODE: "rw",
      HEALTH_ADDR: "8098",
      SCAIVAULT_ALLOWED_URLS: "*",
      CSI_MOUNT_TIMEOUT: "0s",
      CSI_MOUNT_CONCURRENCY: "0",
      CSI_MAX_RESPONSE_BYTES: "4MiB",
      CSI_MAX_MOUNTS: "0",
      CSI_MOUNT_QUEUE: "-1",
    };

    let message = "";
    try {
      loadCsiConfig({}, env);
    } catch (error) {
      message = (error as AgentError).message;
    }

    expect(message.split("\n")).toEqual([
      'Invalid CSI_SOCKET "scaivault.sock": write an absolute path ending in scaivault.sock',
      'Invalid CSI_SOCKET_MODE: "rw". Write an octal mode such as 0644 or 0400',
      'Invalid HEALTH_ADDR: "8098". Write host:port such as [::]:8099, 0.0.0.0:8099 or 127.0.0.1:0, or off',
      'Invalid SCAIVAULT_ALLOWED_URLS entry "*": write a base URL such as https://scaivault.example.com, https://*.example.com or https://*',
      'Invalid CSI_MOUNT_TIMEOUT: "0s" must be longer than zero',
      'Invalid CSI_MOUNT_CONCURRENCY: "0". Write a whole number from 1 to 64',
      'Invalid CSI_MAX_RESPONSE_BYTES: "4MiB". Write a whole number from 1024 to 268435456',
      'Invalid CSI_MAX_MOUNTS: "0". Write a whole number from 1 to 256',
      'Invalid CSI_MOUNT_QUEUE: "-1". Write a whole number from 0 to 10000',
    ]);
  });
});
