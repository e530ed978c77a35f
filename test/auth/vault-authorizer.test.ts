/**
 * The node-vault adapter against the Vault double: every decision path, the cache rules (keyed by a hash
 * of token + namespace + question, bounded by the window and the token's ttl, never shared between tokens)
 * and the guarantee that no token ever appears in an error or a log line, including for network failures.
 */
import { tmpdir } from "node:os";
import { inspect } from "node:util";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { tokenFromHeaders } from "../../src/auth/token.js";
import { VaultAuthorizer, type VaultAuthorizerOptions } from "../../src/auth/vault/vault-authorizer.js";
import { loadConfig } from "../../src/config/load.js";
import { AppError } from "../../src/errors.js";
import { createLogger } from "../../src/logger.js";
import { LogCapture } from "../support/service.js";
import { startVaultDouble, type VaultDouble } from "../support/vault-double.js";

let double: VaultDouble;
const ENTITY = "0c8e4b52-7f3a-4d19-b6e2-9a1f5d3c7e80";
const logs = new LogCapture();
const made: VaultAuthorizer[] = [];
let clock = Date.now();
let serial = 0;

/** A fresh token (and accessor) per case, so no case sees another's cache. */
function token(label: string): { token: string; accessor: string } {
  serial++;
  return { token: `hvs.${label}-${serial}-CAFEBABE${serial}`, accessor: `acc${label}${serial}XYZ` };
}

function authorizer(overrides: Partial<VaultAuthorizerOptions> = {}): VaultAuthorizer {
  const a = new VaultAuthorizer({
    address: double.url,
    timeoutMs: 1000,
    policy: "osquery-carve-download",
    adminPolicy: "osquery-carve-admin",
    authMode: "policy",
    pathTemplate: "osquery-carves/{carve_id}",
    auditPath: "osquery-carves-admin/audit",
    cacheSeconds: 30,
    logger: createLogger("debug", logs),
    now: () => clock,
    ...overrides,
  });
  made.push(a);
  return a;
}

async function rejection(p: Promise<unknown>): Promise<AppError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(AppError);
    return err as AppError;
  }
  throw new Error("expected a rejection");
}

const used: string[] = [];
function remember<T extends { token: string; accessor: string }>(t: T): T {
  used.push(t.token, t.accessor);
  return t;
}

beforeAll(async () => {
  double = await startVaultDouble();
});

afterEach(() => {
  double.setSealed(false);
  double.setDown(false);
  double.setLatency(0);
});

afterAll(async () => {
  for (const a of made) await a.close();
  await double.close();
  // Nothing this file did may have put a token or an accessor into a log line.
  for (const secret of used) expect(logs.text, "a token or accessor reached the log").not.toContain(secret);
});

describe("token extraction", () => {
  it("reads X-Vault-Token, else Authorization: Bearer, as Vault does", () => {
    expect(tokenFromHeaders({ "x-vault-token": "hvs.a" })).toBe("hvs.a");
    expect(tokenFromHeaders({ authorization: "Bearer hvs.b" })).toBe("hvs.b");
    expect(tokenFromHeaders({ authorization: "bearer   hvs.b " })).toBe("hvs.b");
    expect(tokenFromHeaders({ "x-vault-token": "", authorization: "Bearer hvs.c" })).toBe("hvs.c");
    expect(tokenFromHeaders({ "x-vault-token": "hvs.a", authorization: "Bearer hvs.c" })).toBe("hvs.a");
    expect(tokenFromHeaders({ authorization: "Basic dXNlcjpwdw==" })).toBe("");
    expect(tokenFromHeaders({ authorization: "Bearer " })).toBe("");
    expect(tokenFromHeaders({})).toBe("");
  });
});

describe("VaultAuthorizer, policy mode", () => {
  it("refuses an empty or malformed token without contacting Vault, even with VAULT_TOKEN in the environment", async () => {
    const root = remember(token("root"));
    double.addToken(root.token, { policies: ["root"], accessor: root.accessor });
    const saved = process.env.VAULT_TOKEN;
    process.env.VAULT_TOKEN = root.token; // node-vault would fall back to it for an empty caller token
    try {
      const a = authorizer();
      const before = double.requests.length;
      expect((await rejection(a.decide("", undefined, { action: "list" }))).code).toBe("TOKEN_MISSING");
      expect((await rejection(a.decide("has space", undefined, { action: "list" }))).code).toBe("TOKEN_INVALID");
      expect((await rejection(a.decide("x".repeat(5000), undefined, { action: "list" }))).code).toBe("TOKEN_INVALID");
      expect(double.requests.length).toBe(before);
      // A real but unknown token is sent as itself, never replaced by the environment's.
      const err = await rejection(a.decide("hvs.unknown-token", undefined, { action: "list" }));
      expect(err.code).toBe("TOKEN_INVALID");
      expect(double.requests.at(-1)?.token).toBe("hvs.unknown-token");
    } finally {
      if (saved === undefined) delete process.env.VAULT_TOKEN;
      else process.env.VAULT_TOKEN = saved;
    }
  });

  it("allows by token policy or identity policy, denies without, and separates download from admin rights", async () => {
    const reader = remember(token("reader"));
    const identity = remember(token("identity"));
    const nobody = remember(token("nobody"));
    const admin = remember(token("admin"));
    double.addToken(reader.token, { policies: ["osquery-carve-download"], displayName: "ldap-alice", accessor: reader.accessor });
    double.addToken(identity.token, {
      identityPolicies: ["osquery-carve-download"],
      entityId: ENTITY,
      displayName: "oidc-bob",
      accessor: identity.accessor,
    });
    double.addToken(nobody.token, { policies: ["other"], accessor: nobody.accessor });
    double.addToken(admin.token, { policies: ["osquery-carve-admin"], accessor: admin.accessor });
    const a = authorizer();

    const r = await a.decide(reader.token, undefined, { action: "read", carveId: "c1" });
    expect(r).toMatchObject({ allowed: true, cached: false, actor: { displayName: "ldap-alice", entityId: null } });
    expect(r.actor.tokenFingerprint).toMatch(/^[0-9a-f]{32}$/);
    expect(r.actor.tokenFingerprint).toBe(a.fingerprint(reader.token));
    expect(r.actor.tokenFingerprint).not.toBe(a.fingerprint(identity.token));

    const i = await a.decide(identity.token, undefined, { action: "list" });
    expect(i).toMatchObject({ allowed: true, actor: { displayName: "oidc-bob", entityId: ENTITY } });

    const n = await a.decide(nobody.token, undefined, { action: "read", carveId: "c1" });
    expect(n).toMatchObject({ allowed: false, reason: "policy osquery-carve-download missing" });

    expect((await a.decide(reader.token, undefined, { action: "delete", carveId: "c1" })).allowed).toBe(false);
    expect((await a.decide(reader.token, undefined, { action: "audit" })).allowed).toBe(false);
    expect((await a.decide(admin.token, undefined, { action: "delete", carveId: "c1" })).allowed).toBe(true);
    expect((await a.decide(admin.token, undefined, { action: "audit" })).allowed).toBe(true);
    expect((await a.decide(admin.token, undefined, { action: "read", carveId: "c1" })).allowed).toBe(false);
  });

  it("treats expired and revoked tokens as invalid (401), and other-namespace tokens too", async () => {
    const expired = remember(token("expired"));
    const revoked = remember(token("revoked"));
    const teamA = remember(token("teama"));
    for (const t of [expired, revoked]) double.addToken(t.token, { policies: ["osquery-carve-download"], accessor: t.accessor });
    double.expire(expired.token);
    double.revoke(revoked.token);
    const a = authorizer();
    expect((await rejection(a.decide(expired.token, undefined, { action: "list" }))).code).toBe("TOKEN_INVALID");
    expect((await rejection(a.decide(revoked.token, undefined, { action: "list" }))).code).toBe("TOKEN_INVALID");

    // Namespaces exist on Vault Enterprise and OpenBao only.
    const ent = await startVaultDouble({ edition: "enterprise" });
    try {
      ent.addToken(teamA.token, { policies: ["osquery-carve-download"], namespace: "team-a", accessor: teamA.accessor });
      expect((await rejection(authorizer({ address: ent.url }).decide(teamA.token, undefined, { action: "list" }))).code).toBe(
        "TOKEN_INVALID",
      );
      // The configured namespace is sent as X-Vault-Namespace; an explicit one wins.
      const inNs = authorizer({ address: ent.url, namespace: "team-a" });
      expect((await inNs.decide(teamA.token, undefined, { action: "list" })).allowed).toBe(true);
      expect(ent.requests.at(-1)).toMatchObject({ path: "/v1/auth/token/lookup-self", namespace: "team-a" });
      expect((await rejection(inNs.decide(teamA.token, "", { action: "read", carveId: "x" }))).code).toBe("TOKEN_INVALID");
    } finally {
      await ent.close();
    }
  });

  it("answers a token Vault cannot parse (500 'no namespace') as the client's bad token: 401, no warning", async () => {
    const a = authorizer();
    const warningsBefore = logs.lines.filter((l) => l.includes("Vault request failed")).length;
    for (const bad of ["hvs.x.y", 'hvs.abc"def']) {
      const err = await rejection(a.decide(bad, undefined, { action: "list" }));
      expect(err.code, bad).toBe("TOKEN_INVALID");
      expect(err.status).toBe(401);
      expect(double.requests.at(-1)?.token).toBe(bad); // Vault was asked, and said 500
    }
    expect(logs.lines.filter((l) => l.includes("Vault request failed")).length).toBe(warningsBefore);
  });
});

describe("VaultAuthorizer, capabilities mode", () => {
  it("asks capabilities-self about the templated path: globs, exact rules, deny, list and audit paths", async () => {
    const t = remember(token("caps"));
    double.addToken(t.token, {
      policies: ["responders"],
      accessor: t.accessor,
      capabilities: {
        "osquery-carves/*": ["read", "list"],
        "osquery-carves/secret-carve": ["deny"],
        "osquery-carves/mine": ["read", "delete"],
        "osquery-carves-admin/audit": ["read"],
      },
    });
    const a = authorizer({ authMode: "capabilities" });
    expect((await a.decide(t.token, undefined, { action: "read", carveId: "any-carve" })).allowed).toBe(true);
    expect(double.requests.at(-1)).toMatchObject({ path: "/v1/sys/capabilities-self", body: { paths: ["osquery-carves/any-carve"] } });
    const denied = await a.decide(t.token, undefined, { action: "read", carveId: "secret-carve" });
    expect(denied).toMatchObject({ allowed: false, reason: "capabilities on osquery-carves/secret-carve: deny" });
    expect((await a.decide(t.token, undefined, { action: "delete", carveId: "any-carve" })).allowed).toBe(false);
    expect((await a.decide(t.token, undefined, { action: "delete", carveId: "mine" })).allowed).toBe(true);
    expect((await a.decide(t.token, undefined, { action: "list" })).allowed).toBe(true);
    expect(double.requests.at(-1)?.body).toEqual({ paths: ["osquery-carves/"] });
    expect((await a.decide(t.token, undefined, { action: "audit" })).allowed).toBe(true);

    const narrow = remember(token("narrow"));
    double.addToken(narrow.token, { policies: ["x"], accessor: narrow.accessor, capabilities: { "osquery-carves/one": ["read"] } });
    expect((await a.decide(narrow.token, undefined, { action: "read", carveId: "one" })).allowed).toBe(true);
    expect((await a.decide(narrow.token, undefined, { action: "read", carveId: "two" })).allowed).toBe(false);
    expect((await a.decide(narrow.token, undefined, { action: "list" })).allowed).toBe(false);
    expect((await a.decide(narrow.token, undefined, { action: "audit" })).allowed).toBe(false);
  });
});

describe("VaultAuthorizer, Vault failures", () => {
  it("answers 503 for sealed, unreachable and slow Vault, and no error or log line carries the token", async () => {
    const t = remember(token("outage"));
    double.addToken(t.token, { policies: ["osquery-carve-download"], accessor: t.accessor });
    const a = authorizer({ cacheSeconds: 0, timeoutMs: 300 });

    double.setSealed(true);
    const sealed = await rejection(a.decide(t.token, undefined, { action: "list" }));
    expect(sealed.code).toBe("VAULT_UNAVAILABLE");
    expect(sealed.status).toBe(503);
    expect(sealed.message).toMatch(/sealed/);
    double.setSealed(false);

    double.setDown(true); // a pooled socket is reset, a new one refused: both are "unreachable"
    const down = await rejection(a.decide(t.token, undefined, { action: "list" }));
    expect(down.code).toBe("VAULT_UNAVAILABLE");
    expect(down.message).toMatch(/unreachable/);
    double.setDown(false);

    double.setLatency(1000);
    const slow = await rejection(a.decide(t.token, undefined, { action: "list" }));
    expect(slow.code).toBe("VAULT_UNAVAILABLE");
    expect(slow.message).toMatch(/within 300 ms/);
    double.setLatency(0);

    for (const err of [sealed, down, slow]) {
      const everything = `${inspect(err, { depth: 10, showHidden: true })} ${JSON.stringify(err)} ${inspect(err.cause, { depth: 10, showHidden: true })}`;
      expect(everything).not.toContain(t.token);
    }
    const lines = logs.lines.filter((l) => l.includes("Vault request failed"));
    expect(lines.some((l) => l.includes("ECONNREFUSED") || l.includes("ECONNRESET"))).toBe(true);
    expect(lines.some((l) => l.includes("ECONNABORTED") || l.includes("timeout"))).toBe(true);
    for (const l of lines) expect(Object.keys((JSON.parse(l) as { vault: object }).vault).sort()).toEqual(["code", "endpoint", "message", "statusCode"]);

    expect((await a.decide(t.token, undefined, { action: "list" })).allowed).toBe(true);
  });
});

describe("VaultAuthorizer, decision cache", () => {
  it("serves the same question from the cache, never another token's, and asks again after the window", async () => {
    const one = remember(token("one"));
    const two = remember(token("two"));
    for (const t of [one, two]) double.addToken(t.token, { policies: ["osquery-carve-download"], accessor: t.accessor });
    const a = authorizer({ cacheSeconds: 30 });
    const count = (): number => double.requests.length;

    const start = count();
    expect((await a.decide(one.token, undefined, { action: "list" })).cached).toBe(false);
    expect(count()).toBe(start + 1);
    const again = await a.decide(one.token, undefined, { action: "read", carveId: "c" });
    expect(again).toMatchObject({ allowed: true, cached: true }); // policy mode: same question to Vault
    expect(count()).toBe(start + 1);

    // Another token, even one holding the first token's accessor as its "name", never hits that entry.
    expect((await a.decide(two.token, undefined, { action: "list" })).cached).toBe(false);
    expect(count()).toBe(start + 2);
    expect((await rejection(a.decide(one.accessor, undefined, { action: "list" }))).code).toBe("TOKEN_INVALID");
    expect(count()).toBe(start + 3);
    // Another namespace or another question is another entry (the open-source server ignores the namespace).
    expect((await a.decide(one.token, "team-a", { action: "list" })).cached).toBe(false);
    expect((await a.decide(one.token, undefined, { action: "delete", carveId: "c" })).cached).toBe(false);

    // Revocation: visible once the window is over (30 s on this authorizer's clock).
    double.revoke(one.token);
    expect((await a.decide(one.token, undefined, { action: "list" })).cached).toBe(true);
    clock += 30_001;
    expect((await rejection(a.decide(one.token, undefined, { action: "list" }))).code).toBe("TOKEN_INVALID");
  });

  it("never caches a use-limited token: each request asks Vault, which counts it down to -1 and then refuses", async () => {
    // `vault token create -use-limit=2`: lookup-self reports num_uses 1, then -1 on the last use.
    const limited = remember(token("limited"));
    double.addToken(limited.token, { policies: ["osquery-carve-download"], accessor: limited.accessor, numUses: 2 });
    const a = authorizer({ cacheSeconds: 60 });
    const before = double.requests.length;
    const first = await a.decide(limited.token, undefined, { action: "list" });
    const second = await a.decide(limited.token, undefined, { action: "list" });
    expect([first, second]).toMatchObject([
      { allowed: true, cached: false },
      { allowed: true, cached: false },
    ]);
    expect(double.requests.length).toBe(before + 2);
    // The third use: Vault says no, and no cached "allow" from the -1 answer stands in its way.
    expect((await rejection(a.decide(limited.token, undefined, { action: "list" }))).code).toBe("TOKEN_INVALID");
    expect((await rejection(a.decide(limited.token, undefined, { action: "read", carveId: "c" }))).code).toBe("TOKEN_INVALID");
    expect(double.requests.length).toBe(before + 4);

    // Concurrent requests with a use-limited token each spend their own use: 3 uses, 5 requests, 3 allowed.
    const three = remember(token("three"));
    double.addToken(three.token, { policies: ["osquery-carve-download"], accessor: three.accessor, numUses: 3 });
    double.setLatency(30);
    const outcomes = await Promise.allSettled([1, 2, 3, 4, 5].map(() => a.decide(three.token, undefined, { action: "list" })));
    expect(outcomes.filter((o) => o.status === "fulfilled" && o.value.allowed).length).toBe(3);
    expect(outcomes.filter((o) => o.status === "rejected" && (o.reason as AppError).code === "TOKEN_INVALID").length).toBe(2);
  });

  it("never keeps an entry past the token's ttl, and shares concurrent lookups", async () => {
    const short = remember(token("short"));
    double.addToken(short.token, { policies: ["osquery-carve-download"], ttlSeconds: 10, accessor: short.accessor });
    const a = authorizer({ cacheSeconds: 60 });
    const start = double.requests.length;
    await a.decide(short.token, undefined, { action: "list" });
    clock += 8_000;
    expect((await a.decide(short.token, undefined, { action: "list" })).cached).toBe(true);
    clock += 3_000; // 11 s: past the 10 s ttl (by the ttl Vault reported, <= 10 s), well within 60 s
    expect((await a.decide(short.token, undefined, { action: "list" })).cached).toBe(false);
    expect(double.requests.length).toBe(start + 2);

    const parallel = remember(token("parallel"));
    double.addToken(parallel.token, { policies: ["osquery-carve-download"], accessor: parallel.accessor });
    double.setLatency(50);
    const before = double.requests.length;
    const results = await Promise.all([1, 2, 3, 4].map(() => a.decide(parallel.token, undefined, { action: "list" })));
    expect(results.every((r) => r.allowed)).toBe(true);
    expect(double.requests.length).toBe(before + 1);

    const off = authorizer({ cacheSeconds: 0 });
    await off.decide(parallel.token, undefined, { action: "list" });
    expect((await off.decide(parallel.token, undefined, { action: "list" })).cached).toBe(false);
  });
});

describe("VaultAuthorizer.create", () => {
  it("warns at start when VAULT_ADDR is plain http, loopback or not, and not for https", async () => {
    const said = async (address: string): Promise<string[]> => {
      const capture = new LogCapture();
      const config = loadConfig({ env: { VAULT_ADDR: address }, cwd: tmpdir() });
      const a = await VaultAuthorizer.create(config.vault, createLogger("info", capture));
      await a.close();
      return capture.entries().filter((e) => e.level === "warn").map((e) => String(e.msg));
    };
    expect(await said("http://vault.example.com:8200")).toEqual(["Vault address is plain http: responders' tokens cross the network in clear"]);
    expect((await said("http://127.0.0.1:8200"))[0]).toMatch(/plain http \(loopback: a dev server\?\)/);
    expect(await said("https://vault.example.com:8200")).toEqual([]);
  });
});
