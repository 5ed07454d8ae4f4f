/** The per-service-account token cache and the pod-token checks that guard it, with a fake clock. */
import { describe, expect, test } from "bun:test";
import { AgentError } from "../src/errors.ts";
import type { IssuedToken } from "../src/contract.ts";
import { parseAllowedUrls } from "../src/csi/allowed-urls.ts";
import { parseMountAttributes } from "../src/csi/attributes.ts";
import { serviceAccountKey, ServiceAccountTokenCache } from "../src/csi/token-cache.ts";
import { mountAttributes, podToken } from "./helpers/csi.ts";
import { makeJwt, serviceAccountClaims } from "./helpers/jwt.ts";

const HOUR = 3_600_000;

describe("csi token cache", () => {
  test("cache reuses a token until five minutes before it expires", async () => {
    let now = 1_000_000;
    const cache = new ServiceAccountTokenCache({ now: () => now });
    const exchange = counting(() => ({ token: `svt_${now}`, expiresAt: now + 30 * 60_000 }));

    expect(await cache.get("sa", "jwt", exchange.call)).toBe("svt_1000000");
    now += 24 * 60_000;
    expect(await cache.get("sa", "jwt", exchange.call)).toBe("svt_1000000");
    expect(exchange.count).toBe(1);

    now += 2 * 60_000;
    expect(await cache.get("sa", "jwt", exchange.call)).toBe(`svt_${now}`);
    expect(exchange.count).toBe(2);
  });

  test("cache reuses an hour-long token for 50 minutes at most", async () => {
    let now = 1_000_000;
    const cache = new ServiceAccountTokenCache({ now: () => now });
    const exchange = counting(() => ({ token: `svt_${now}`, expiresAt: now + HOUR }));

    await cache.get("sa", "jwt", exchange.call);
    now += 49 * 60_000;
    await cache.get("sa", "jwt", exchange.call);
    expect(exchange.count).toBe(1);

    now += 2 * 60_000;
    await cache.get("sa", "jwt", exchange.call);
    expect(exchange.count).toBe(2);
  });

  test("cache shares one exchange between concurrent mounts", async () => {
    const cache = new ServiceAccountTokenCache();
    const exchange = counting(async () => {
      await new Promise((resolve) => setTimeout(resolve, 20));
      return { token: "svt_shared", expiresAt: Date.now() + HOUR };
    });

    const tokens = await Promise.all(Array.from({ length: 20 }, (_, index) => cache.get("sa", `jwt-${index}`, exchange.call)));

    expect(new Set(tokens)).toEqual(new Set(["svt_shared"]));
    expect(exchange.count).toBe(1);
    expect(cache.stats()).toEqual({ exchanges: 1, hits: 0, entries: 1 });
  });

  test("cache retries with its own token after another pod's exchange failed", async () => {
    const cache = new ServiceAccountTokenCache();
    const exchange = counting(async (subject: string) => {
      await new Promise((resolve) => setTimeout(resolve, 10));
      if (subject === "bad-jwt") throw new AgentError("auth", "ScaiVault rejected auth.exchange: 401 token_invalid");
      return { token: "svt_good", expiresAt: Date.now() + HOUR };
    });

    const first = cache.get("sa", "bad-jwt", exchange.call);
    const second = cache.get("sa", "good-jwt", exchange.call);

    expect(first).rejects.toThrow("401 token_invalid");
    expect(await second).toBe("svt_good");
    expect(exchange.count).toBe(2);
  });

  test("invalidate drops only the token that was rejected", async () => {
    const cache = new ServiceAccountTokenCache();
    let serial = 0;
    const exchange = counting(() => ({ token: `svt_${++serial}`, expiresAt: Date.now() + HOUR }));

    const first = await cache.get("sa", "jwt", exchange.call);
    cache.invalidate("sa", "svt_other");
    expect(await cache.get("sa", "jwt", exchange.call)).toBe(first);

    cache.invalidate("sa", first);
    expect(await cache.get("sa", "jwt", exchange.call)).toBe("svt_2");
  });

  test("cache keeps at most maxEntries service accounts", async () => {
    const cache = new ServiceAccountTokenCache({ maxEntries: 100 });
    const exchange = counting(() => ({ token: "svt", expiresAt: Date.now() + HOUR }));

    for (let index = 0; index < 1000; index++) await cache.get(`sa-${index}`, "jwt", exchange.call);

    expect(cache.stats().entries).toBe(100);
  });
});

describe("csi service account key", () => {
  const baseUrl = "https://scaivault.scailabs.ai";
  const allowed = parseAllowedUrls("https://*");
  const spec = (tokens: Parameters<typeof mountAttributes>[0]["tokens"], extra: Partial<Parameters<typeof mountAttributes>[0]> = {}) =>
    parseMountAttributes(mountAttributes({ baseUrl, tokens, ...extra }), "420", allowed);

  test("pods of one service account share a key", () => {
    const first = serviceAccountKey(spec({ scaivault: podToken("billing", "billing") }, { pod: "a" }));
    const second = serviceAccountKey(spec({ scaivault: podToken("billing", "billing") }, { pod: "b" }));

    expect(first).toBe(second);
  });

  test("role, namespace and tenant separate keys", () => {
    const base = serviceAccountKey(spec({ scaivault: podToken("billing", "billing") }));

    expect(serviceAccountKey(spec({ scaivault: podToken("billing", "billing") }, { role: "sa:billing-prod" }))).not.toBe(base);
    expect(serviceAccountKey(spec({ scaivault: podToken("other", "billing") }, { namespace: "other" }))).not.toBe(base);
    expect(serviceAccountKey(spec({ scaivault: podToken("billing", "billing") }), "tnt_a")).not.toBe(base);
  });

  test("key rejects a token that is not a JWT", () => {
    expect(() => serviceAccountKey(spec({ scaivault: { token: "opaque-one" } }))).toThrow("is not a JWT");
  });

  test("key rejects tokens ScaiVault would reject, naming the problem", () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ sub: undefined }, "has no sub claim"],
      [{ sub: "alice" }, "has no sub claim of the form"],
      [{ sub: "system:serviceaccount:billing:billing:evil" }, "has no sub claim of the form"],
      [{ sub: "system:serviceaccount:billing:bob" }, 'belongs to "billing/bob"'],
      [{ exp: undefined }, "has no numeric exp claim"],
      [{ exp: "9999999999" }, "has no numeric exp claim"],
      [{ exp: Math.floor(Date.now() / 1000) - 10 }, "expired at"],
      [{ aud: undefined }, 'not "scaivault"'],
      [{ aud: "other" }, 'not "scaivault"'],
    ];

    for (const [overrides, message] of cases) {
      const token = makeJwt(serviceAccountClaims("billing", "billing", overrides));
      const call = () => serviceAccountKey(spec({ scaivault: { token } }));
      expect(call).toThrow(message);
      expect(call).not.toThrow(token);
    }
  });

  test("key requires the pod context", () => {
    expect(() => serviceAccountKey(spec({ scaivault: podToken("billing", "billing") }, { serviceAccount: "" }))).toThrow("set podInfoOnMount: true");
  });
});

// ---------------------------------------------------------------------------------------------

function counting(issue: (subject: string) => IssuedToken | Promise<IssuedToken>) {
  const state = {
    count: 0,
    call: async (subject: string) => {
      state.count += 1;
      return issue(subject);
    },
  };
  return state;
}
