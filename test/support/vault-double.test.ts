import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";
import nodeVault from "node-vault";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { DEFAULT_TOKEN_TTL_SECONDS, startVaultDouble, VAULT_DOUBLE_VERSION } from "./vault-double.js";
import type { VaultDouble } from "./vault-double.js";

interface LookupSelfResponse {
  request_id: string;
  lease_id: string;
  renewable: boolean;
  lease_duration: number;
  data: Record<string, unknown>;
  wrap_info: unknown;
  warnings: unknown;
  auth: unknown;
  mount_type: string;
}

interface ApiError {
  message: string;
  name: string;
  response?: { statusCode: number; body: { errors: string[] } };
  code?: string;
}

/** Vault 1.14's answer to an unknown, expired or revoked token, and to a missing one. */
const INVALID_TOKEN = "permission denied";

let double: VaultDouble;
const ENTITY = "8d6f2a4e-3b1c-4f6e-9a2d-5c7b1e0f3a94";

beforeEach(async () => {
  double = await startVaultDouble();
});

afterEach(async () => {
  vi.useRealTimers();
  await double.close();
});

/** A shared client with no token of its own, as the service should build it. */
function client(
  extra: { token?: string; namespace?: string; timeout?: number } = {},
): nodeVault.client {
  return nodeVault({
    apiVersion: "v1",
    endpoint: double.url,
    ...(extra.token !== undefined ? { token: extra.token } : {}),
    ...(extra.namespace !== undefined ? { namespace: extra.namespace } : {}),
    ...(extra.timeout !== undefined
      ? { requestOptions: { timeout: extra.timeout } }
      : {}),
  });
}

function as(
  token: string,
  headers: Record<string, string> = {},
): { requestOptions: { headers: Record<string, string> } } {
  return {
    requestOptions: { headers: { "X-Vault-Token": token, ...headers } },
  };
}

async function lookupSelf(
  vault: nodeVault.client,
  token: string,
): Promise<LookupSelfResponse> {
  return (await vault.tokenLookupSelf(as(token))) as LookupSelfResponse;
}

async function capabilitiesSelf(
  vault: nodeVault.client,
  token: string,
  json: unknown,
): Promise<Record<string, unknown>> {
  return (await vault.request({
    path: "/sys/capabilities-self",
    method: "POST",
    json,
    headers: { "X-Vault-Token": token },
  })) as Record<string, unknown>;
}

async function rejection(p: Promise<unknown>): Promise<ApiError> {
  try {
    await p;
  } catch (e) {
    return e as ApiError;
  }
  throw new Error("expected the promise to reject");
}

describe("auth/token/lookup-self", () => {
  it("answers with Vault's envelope and token_store.go handleLookup fields", async () => {
    double.addToken("s.alice", {
      policies: ["carve-reader"],
      displayName: "ldap-alice",
      entityId: ENTITY,
      accessor: "acc-alice",
      ttlSeconds: 3600,
    });
    const before = Math.floor(Date.now() / 1000);
    const res = await lookupSelf(client(), "s.alice");

    expect(Object.keys(res)).toEqual([
      "request_id",
      "lease_id",
      "renewable",
      "lease_duration",
      "data",
      "wrap_info",
      "warnings",
      "auth",
      "mount_type",
    ]);
    expect(res).toMatchObject({
      lease_id: "",
      renewable: false,
      lease_duration: 0,
      wrap_info: null,
      warnings: null,
      auth: null,
      mount_type: "token",
    });
    expect(res.request_id).toMatch(/^[0-9a-f-]{36}$/);
    expect(Object.keys(res.data)).toEqual([
      "accessor",
      "creation_time",
      "creation_ttl",
      "display_name",
      "entity_id",
      "expire_time",
      "explicit_max_ttl",
      "id",
      "issue_time",
      "meta",
      "num_uses",
      "orphan",
      "path",
      "policies",
      "renewable",
      "ttl",
      "type",
    ]);
    const d = res.data;
    expect(d).toMatchObject({
      accessor: "acc-alice",
      creation_ttl: 3600,
      display_name: "ldap-alice",
      entity_id: ENTITY,
      explicit_max_ttl: 0,
      id: "s.alice",
      meta: null,
      num_uses: 0,
      orphan: false,
      path: "auth/token/create",
      policies: ["carve-reader", "default"],
      renewable: true,
      type: "service",
    });
    expect(d.creation_time).toBeGreaterThanOrEqual(before);
    expect(d.ttl).toBeGreaterThan(3590);
    expect(d.ttl).toBeLessThanOrEqual(3600);
    expect(
      Date.parse(d.expire_time as string) - Date.parse(d.issue_time as string),
    ).toBe(3_600_000);
    expect(d).not.toHaveProperty("identity_policies");
    expect(d).not.toHaveProperty("namespace_path");
  });

  it("takes the token from Authorization: Bearer when X-Vault-Token is absent", async () => {
    double.addToken("s.bearer", {});
    const res = await fetch(`${double.url}/v1/auth/token/lookup-self`, {
      headers: { Authorization: "Bearer s.bearer" },
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("application/json");
    expect(res.headers.get("cache-control")).toBe("no-store");
    const body = (await res.json()) as LookupSelfResponse;
    expect(body.data.id).toBe("s.bearer");
    expect(body.data.policies).toEqual(["default"]);
    expect(double.requests.at(-1)).toEqual({
      method: "GET",
      path: "/v1/auth/token/lookup-self",
      token: "s.bearer",
      namespace: undefined,
      body: undefined,
    });
  });

  it("a token that never expires has ttl 0, expire_time null and no lease fields; root gets only [root]", async () => {
    double.addToken("root-tok", { policies: ["root", "ignored"] });
    const d = (await lookupSelf(client(), "root-tok")).data;
    expect(d).toMatchObject({
      ttl: 0,
      expire_time: null,
      policies: ["root"],
      orphan: true,
      path: "auth/token/root",
    });
    expect(d).not.toHaveProperty("renewable");
    expect(d).not.toHaveProperty("issue_time");
  });

  it("sanitizes policies like Vault: trimmed, lower-cased, sorted, deduplicated, default added", async () => {
    double.addToken("s.p", { policies: [" Zeta", "alpha", "alpha", ""] });
    expect((await lookupSelf(client(), "s.p")).data.policies).toEqual([
      "alpha",
      "default",
      "zeta",
    ]);
  });

  it("batch tokens have no accessor and are not renewable", async () => {
    double.addToken("b.batch", { type: "batch", ttlSeconds: 60 });
    const d = (await lookupSelf(client(), "b.batch")).data;
    expect(d).toMatchObject({
      type: "batch",
      accessor: "",
      renewable: false,
      orphan: true,
    });
    expect(d.expire_time).not.toBeNull();
  });

  it("shows identity_policies (and external_namespace_policies) only for identity-granted policies", async () => {
    double.addToken("s.ident", {
      identityPolicies: ["carve-reader"],
      capabilities: { "osquery-carves/*": ["read"] },
    });
    const vault = client();
    const d = (await lookupSelf(vault, "s.ident")).data;
    expect(d.policies).toEqual(["default"]);
    expect(d.identity_policies).toEqual(["carve-reader"]);
    expect(d.external_namespace_policies).toEqual({});
    expect(d.entity_id).toMatch(/^[0-9a-f-]{36}$/);
    // capabilities-self folds identity policies in: checking `policies` alone would miss this grant.
    const caps = await capabilitiesSelf(vault, "s.ident", {
      paths: ["osquery-carves/c1"],
    });
    expect(caps["osquery-carves/c1"]).toEqual(["read"]);
  });

  it("a missing or empty token is 403 'permission denied', as Vault 1.14 answers", async () => {
    const res = await fetch(`${double.url}/v1/auth/token/lookup-self`);
    expect(res.status).toBe(403);
    expect(await res.json()).toEqual({ errors: ["permission denied"] });
    expect(double.requests.at(-1)?.token).toBeUndefined();

    // node-vault with no client token sends the empty header as-is.
    const err = await rejection(lookupSelf(client(), ""));
    expect(err.response).toEqual({
      statusCode: 403,
      body: { errors: ["permission denied"] },
    });
    expect(err.message).toBe("permission denied");
    expect(double.requests.at(-1)?.token).toBe("");
  });

  it("a malformed token (a namespace suffix naming no namespace, a quote) is 500 'no namespace'", async () => {
    for (const t of ["hvs.x.y", 's.abc"def', "hvs.CAESIabc.nsid"]) {
      const err = await rejection(lookupSelf(client(), t));
      expect(err.response, t).toEqual({
        statusCode: 500,
        body: { errors: ["failed to look up namespace from the token: no namespace"] },
      });
    }
    // One dot is an ordinary (unknown) token.
    expect((await rejection(lookupSelf(client(), "hvs.x"))).response?.statusCode).toBe(403);
  });

  it("a token created without a ttl gets the mount default, 2764800 s; root tokens never expire", async () => {
    double.addToken("s.default-ttl", { policies: ["carve-reader"] });
    const d = (await lookupSelf(client(), "s.default-ttl")).data;
    expect(DEFAULT_TOKEN_TTL_SECONDS).toBe(2764800);
    expect(d.creation_ttl).toBe(2764800);
    expect(d.ttl).toBeGreaterThan(2764790);
    expect(d.ttl).toBeLessThanOrEqual(2764800);
    expect(d.expire_time).not.toBeNull();
  });

  it("a use-limited token counts down, reports num_uses -1 on its last use, then is unknown", async () => {
    double.addToken("s.twice", { policies: ["carve-reader"], numUses: 2 });
    const vault = client();
    expect((await lookupSelf(vault, "s.twice")).data.num_uses).toBe(1);
    expect((await lookupSelf(vault, "s.twice")).data.num_uses).toBe(-1);
    const err = await rejection(lookupSelf(vault, "s.twice"));
    expect(err.response).toEqual({ statusCode: 403, body: { errors: ["permission denied"] } });

    // capabilities-self spends a use too.
    double.addToken("s.thrice", { numUses: 3, capabilities: { "x/*": ["read"] } });
    await capabilitiesSelf(vault, "s.thrice", { paths: ["x/1"] });
    expect((await lookupSelf(vault, "s.thrice")).data.num_uses).toBe(1);
    expect((await lookupSelf(vault, "s.thrice")).data.num_uses).toBe(-1);
    expect((await rejection(lookupSelf(vault, "s.thrice"))).response?.statusCode).toBe(403);
  });

  it("unknown, revoked and expired tokens get 403 invalid token", async () => {
    const vault = client();
    double.addToken("s.rev", {});
    double.addToken("s.exp", { ttlSeconds: 600 });
    await lookupSelf(vault, "s.rev");
    await lookupSelf(vault, "s.exp");
    double.revoke("s.rev");
    double.expire("s.exp");
    for (const t of ["s.nope", "s.rev", "s.exp"]) {
      const err = await rejection(lookupSelf(vault, t));
      expect(err.response?.statusCode).toBe(403);
      expect(err.response?.body).toEqual({ errors: [INVALID_TOKEN] });
      expect(err.message).toBe(INVALID_TOKEN);
    }
  });

  it("a token whose ttl has elapsed stops working without expire()", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(new Date("2030-01-01T00:00:00Z"));
    double.addToken("s.short", { ttlSeconds: 30 });
    const vault = client();
    vi.setSystemTime(new Date("2030-01-01T00:00:20Z"));
    const d = (await lookupSelf(vault, "s.short")).data;
    expect(d.ttl).toBe(10);
    expect(d.expire_time).toBe("2030-01-01T00:00:30.000Z");
    vi.setSystemTime(new Date("2030-01-01T00:00:30Z"));
    expect(
      (await rejection(lookupSelf(vault, "s.short"))).response?.statusCode,
    ).toBe(403);
  });

  it("a method the default policy does not grant is 403 after the token check; a root token gets 405", async () => {
    double.addToken("s.m", {});
    double.addToken("root-m", { policies: ["root"] });
    for (const [path, method] of [
      ["auth/token/lookup-self", "POST"],
      ["auth/token/lookup-self", "DELETE"],
      ["sys/capabilities-self", "GET"],
    ] as const) {
      const res = await fetch(`${double.url}/v1/${path}`, { method, headers: { "X-Vault-Token": "s.m" } });
      expect(res.status, `${method} ${path}`).toBe(403);
      expect(await res.json()).toEqual({ errors: ["permission denied"] });
    }
    const root = await fetch(`${double.url}/v1/auth/token/lookup-self`, { method: "DELETE", headers: { "X-Vault-Token": "root-m" } });
    expect(root.status).toBe(405);
    expect(await root.json()).toEqual({
      errors: ["1 error occurred:\n\t* unsupported operation\n\n"],
    });
  });
});

describe("sys/capabilities-self", () => {
  beforeEach(() => {
    double.addToken("s.caps", {
      policies: ["carve-reader"],
      capabilities: {
        "osquery-carves/*": ["read", "list"],
        "osquery-carves/secret*": ["deny"],
        "osquery-carves/exact": ["update", "read", "read"],
        "osquery-carves/team-a/*": ["create"],
        "empty/*": [],
      },
    });
  });

  it("answers each path, injects data keys at the top level, and adds `capabilities` for one path", async () => {
    const vault = client();
    const one = await capabilitiesSelf(vault, "s.caps", {
      paths: ["osquery-carves/c1"],
    });
    expect(one).toMatchObject({
      "osquery-carves/c1": ["list", "read"],
      capabilities: ["list", "read"],
      data: {
        "osquery-carves/c1": ["list", "read"],
        capabilities: ["list", "read"],
      },
      lease_id: "",
      renewable: false,
      lease_duration: 0,
      wrap_info: null,
      warnings: null,
      auth: null,
      mount_type: "system",
    });

    const many = await capabilitiesSelf(vault, "s.caps", {
      paths: [
        "osquery-carves/c1",
        "osquery-carves/exact",
        "osquery-carves/secret-x",
        "osquery-carves/team-a/c2",
        "elsewhere/x",
        "empty/x",
        "osquery-carves",
      ],
    });
    expect(many.data).toEqual({
      "osquery-carves/c1": ["list", "read"],
      "osquery-carves/exact": ["read", "update"], // exact rule wins over the glob, sorted and deduplicated
      "osquery-carves/secret-x": ["deny"], // deny in the most specific rule
      "osquery-carves/team-a/c2": ["create"], // longest glob wins: no union with osquery-carves/*
      "elsewhere/x": ["deny"],
      "empty/x": ["deny"],
      "osquery-carves": ["deny"], // "osquery-carves/*" does not match the bare prefix
    });
    expect(many).not.toHaveProperty("capabilities");
    expect(many["elsewhere/x"]).toEqual(["deny"]);
  });

  it("accepts the deprecated `path` field and comma-separated strings", async () => {
    const vault = client();
    expect(
      (await capabilitiesSelf(vault, "s.caps", { path: "osquery-carves/c1" }))
        .capabilities,
    ).toEqual(["list", "read"]);
    const res = await capabilitiesSelf(vault, "s.caps", {
      paths: "osquery-carves/c1, elsewhere/x",
    });
    expect(res.data).toEqual({
      "osquery-carves/c1": ["list", "read"],
      "elsewhere/x": ["deny"],
    });
  });

  it("gives [root] to a root token on any path", async () => {
    double.addToken("root-tok", { policies: ["root"] });
    const res = await capabilitiesSelf(client(), "root-tok", {
      paths: ["anything/at/all"],
    });
    expect(res.capabilities).toEqual(["root"]);
  });

  it("is 403 for a bad token or without a token, 400 without paths", async () => {
    const vault = client();
    const bad = await rejection(
      capabilitiesSelf(vault, "s.nope", { paths: ["osquery-carves/c1"] }),
    );
    expect(bad.response).toEqual({
      statusCode: 403,
      body: { errors: [INVALID_TOKEN] },
    });

    const noToken = await fetch(`${double.url}/v1/sys/capabilities-self`, {
      method: "POST",
      body: JSON.stringify({ paths: ["x"] }),
    });
    expect(noToken.status).toBe(403);
    expect(await noToken.json()).toEqual({ errors: ["permission denied"] });

    const noPaths = await rejection(capabilitiesSelf(vault, "s.caps", {}));
    expect(noPaths.response?.statusCode).toBe(400);
  });

  it("records the request body", async () => {
    await capabilitiesSelf(client(), "s.caps", {
      paths: ["osquery-carves/c1"],
    });
    expect(double.requests.at(-1)).toEqual({
      method: "POST",
      path: "/v1/sys/capabilities-self",
      token: "s.caps",
      namespace: undefined,
      body: { paths: ["osquery-carves/c1"] },
    });
  });
});

describe("sys/health and seal state", () => {
  it("is 200 when active", async () => {
    const res = await fetch(`${double.url}/v1/sys/health`);
    expect(res.status).toBe(200);
    const body = (await res.json()) as Record<string, unknown>;
    expect(body).toMatchObject({
      initialized: true,
      sealed: false,
      standby: false,
      performance_standby: false,
      replication_performance_mode: "disabled",
      replication_dr_mode: "disabled",
      version: VAULT_DOUBLE_VERSION,
      cluster_name: "vault-cluster-double",
    });
    expect(typeof body.server_time_utc).toBe("number");
    // The open-source 1.14 server has no `enterprise` field.
    expect(body).not.toHaveProperty("enterprise");
    expect(VAULT_DOUBLE_VERSION).toMatch(/^1\.14\.\d+$/);
    expect(typeof body.cluster_id).toBe("string");
    expect(await client().health()).toMatchObject({
      sealed: false,
      standby: false,
    });
  });

  it("is 429 on a standby, which node-vault resolves; standbyok=true makes it 200", async () => {
    double.setStandby(true);
    expect((await fetch(`${double.url}/v1/sys/health`)).status).toBe(429);
    expect(
      (await fetch(`${double.url}/v1/sys/health?standbyok=true`)).status,
    ).toBe(200);
    expect(await client().health()).toMatchObject({
      standby: true,
      sealed: false,
    });
    // A standby forwards other requests to the active node, so they keep working.
    double.addToken("s.sb", {});
    expect((await lookupSelf(client(), "s.sb")).data.id).toBe("s.sb");
  });

  it("is 503 when sealed, which node-vault resolves; other endpoints answer 503 Vault is sealed", async () => {
    double.addToken("s.sealed", {});
    double.setSealed(true);
    const res = await fetch(`${double.url}/v1/sys/health`);
    expect(res.status).toBe(503);
    const body = (await res.json()) as Record<string, unknown>;
    expect(body).toMatchObject({
      sealed: true,
      standby: true,
      initialized: true,
    });
    expect(body).not.toHaveProperty("cluster_name");
    expect(await client().health()).toMatchObject({ sealed: true });

    const vault = client();
    const lookupErr = await rejection(lookupSelf(vault, "s.sealed"));
    expect(lookupErr.response).toEqual({
      statusCode: 503,
      body: { errors: ["Vault is sealed"] },
    });
    const capsErr = await rejection(
      capabilitiesSelf(vault, "s.sealed", { paths: ["x"] }),
    );
    expect(capsErr.response).toEqual({
      statusCode: 503,
      body: { errors: ["Vault is sealed"] },
    });
    // Sealed is checked before the token: even no token gets 503.
    expect(
      (await fetch(`${double.url}/v1/auth/token/lookup-self`)).status,
    ).toBe(503);

    double.setSealed(false);
    expect((await lookupSelf(vault, "s.sealed")).data.id).toBe("s.sealed");
  });

  it("HEAD answers the status without a body", async () => {
    double.setSealed(true);
    const res = await fetch(`${double.url}/v1/sys/health`, { method: "HEAD" });
    expect(res.status).toBe(503);
    expect(await res.text()).toBe("");
  });
});

describe("namespaces", () => {
  it("the open-source server ignores X-Vault-Namespace and has no namespaced tokens", async () => {
    double.addToken("s.oss", {});
    const res = await fetch(`${double.url}/v1/auth/token/lookup-self`, {
      headers: { "X-Vault-Token": "s.oss", "X-Vault-Namespace": "team-a" },
    });
    expect(res.status).toBe(200);
    expect((await res.json()) as LookupSelfResponse).not.toHaveProperty("data.namespace_path");
    expect(double.requests.at(-1)?.namespace).toBe("team-a");
    expect(() => double.addToken("s.ns", { namespace: "team-a" })).toThrow(/no namespaces/);
  });
});

describe("namespaces (enterprise edition)", () => {
  beforeEach(async () => {
    await double.close();
    double = await startVaultDouble({ edition: "enterprise" });
    double.addToken("s.team-a", {
      namespace: "team-a",
      capabilities: { "osquery-carves/*": ["read"] },
    });
  });

  it("a namespaced token is unknown outside its namespace", async () => {
    const err = await rejection(lookupSelf(client(), "s.team-a"));
    expect(err.response?.statusCode).toBe(403);
    const other = await rejection(
      client({ namespace: "team-b" }).tokenLookupSelf(as("s.team-a")),
    );
    expect(other.response?.statusCode).toBe(403);

    const d = (
      (await client({ namespace: "team-a" }).tokenLookupSelf(
        as("s.team-a"),
      )) as LookupSelfResponse
    ).data;
    expect(d.namespace_path).toBe("team-a/");
    expect(double.requests.at(-1)?.namespace).toBe("team-a");
    // "/team-a/" is the same namespace after canonicalization.
    const res = await fetch(`${double.url}/v1/auth/token/lookup-self`, {
      headers: { "X-Vault-Token": "s.team-a", "X-Vault-Namespace": "/team-a/" },
    });
    expect(res.status).toBe(200);
  });

  it("node-vault: a per-call namespace header passes through, but a client namespace overwrites it", async () => {
    const perCall = (await client().tokenLookupSelf(
      as("s.team-a", { "X-Vault-Namespace": "team-a" }),
    )) as LookupSelfResponse;
    expect(perCall.data.id).toBe("s.team-a");
    expect(double.requests.at(-1)?.namespace).toBe("team-a");

    const err = await rejection(
      client({ namespace: "team-b" }).tokenLookupSelf(
        as("s.team-a", { "X-Vault-Namespace": "team-a" }),
      ),
    );
    expect(err.response?.statusCode).toBe(403);
    expect(double.requests.at(-1)?.namespace).toBe("team-b");
  });
});

describe("other paths", () => {
  it("404 'no handler for route' when the ACL allows, 403 permission denied when it does not", async () => {
    double.addToken("s.o", { capabilities: { "secret/*": ["read"] } });
    const allowed = await fetch(`${double.url}/v1/secret/x`, {
      headers: { "X-Vault-Token": "s.o" },
    });
    expect(allowed.status).toBe(404);
    expect(await allowed.json()).toEqual({ errors: ['no handler for route "secret/x". route entry not found.'] });
    const denied = await fetch(`${double.url}/v1/other/x`, {
      headers: { "X-Vault-Token": "s.o" },
    });
    expect(denied.status).toBe(403);
    expect(await denied.json()).toEqual({ errors: ["permission denied"] });
    const invalid = await fetch(`${double.url}/v1/secret/x`, {
      headers: { "X-Vault-Token": "s.bad" },
    });
    expect(invalid.status).toBe(403);
    expect(await invalid.json()).toEqual({ errors: [INVALID_TOKEN] });
  });
});

describe("node-vault behaviour the service must guard against", () => {
  it("an empty caller token silently falls back to the client's own token, and the headers object is mutated", async () => {
    double.addToken("s.service", { displayName: "token-service" });
    const vault = client({ token: "s.service" });
    const headers = { "X-Vault-Token": "" };
    const res = (await vault.tokenLookupSelf({
      requestOptions: { headers },
    })) as LookupSelfResponse;
    expect(res.data.id).toBe("s.service");
    expect(double.requests.at(-1)?.token).toBe("s.service");
    expect(headers["X-Vault-Token"]).toBe("s.service");
  });

  it("the 403 error has only response {statusCode, body} and never contains the token", async () => {
    const secret = "s.very-secret-token-1234";
    const err = await rejection(lookupSelf(client(), secret));
    expect(err).toBeInstanceOf(Error);
    expect(err.name).toBe("Error");
    expect(Object.keys(err)).toEqual(["response"]);
    expect(err.response?.statusCode).toBe(403);
    expect(JSON.stringify(err)).not.toContain(secret);
    expect(inspect(err, { depth: 20 })).not.toContain(secret);
  });

  it("setDown: connection refused surfaces as a raw axios error that DOES contain the token", async () => {
    const secret = "s.leaky-token-5678";
    double.addToken(secret, {});
    const vault = client();
    await lookupSelf(vault, secret); // leaves a keep-alive socket open, which setDown must also kill
    double.setDown(true);
    // The destroyed keep-alive socket is only noticed by the client on its next I/O turn; a request sent
    // in the same tick would reuse it and get ECONNRESET (as with a Vault that crashes).
    await new Promise((resolve) => setTimeout(resolve, 20));

    const err = await rejection(lookupSelf(vault, secret));
    expect(err.code).toBe("ECONNREFUSED");
    expect(err.response).toBeUndefined();
    expect(JSON.stringify(err)).toContain(secret);
    expect(inspect(err, { depth: 20 })).toContain(secret);

    const fetchErr = (await rejection(
      fetch(`${double.url}/v1/sys/health`),
    )) as unknown as { cause?: { code?: string } };
    expect(fetchErr.cause?.code).toBe("ECONNREFUSED");
    const healthErr = await rejection(vault.health());
    expect(healthErr.code).toBe("ECONNREFUSED");

    double.setDown(false);
    expect((await lookupSelf(vault, secret)).data.id).toBe(secret);
  });

  it("setLatency: a client timeout gives ECONNABORTED, again with the token inside the error", async () => {
    const secret = "s.slow-token-9999";
    double.addToken(secret, {});
    double.setLatency(300);
    const err = await rejection(lookupSelf(client({ timeout: 50 }), secret));
    expect(err.code).toBe("ECONNABORTED");
    expect(JSON.stringify(err)).toContain(secret);

    double.setLatency(120);
    const started = Date.now();
    await lookupSelf(client(), secret);
    expect(Date.now() - started).toBeGreaterThanOrEqual(100);
  });

  it("records every request, so tests can count calls and spot empty tokens", async () => {
    double.addToken("s.count", {});
    const vault = client();
    await lookupSelf(vault, "s.count");
    await lookupSelf(vault, "s.count");
    await vault.health();
    expect(
      double.requests.map((r) => `${r.method} ${r.path} ${String(r.token)}`),
    ).toEqual([
      "GET /v1/auth/token/lookup-self s.count",
      "GET /v1/auth/token/lookup-self s.count",
      "GET /v1/sys/health undefined",
    ]);
  });
});

describe("addToken validation", () => {
  it("rejects what the double does not model", () => {
    expect(() => double.addToken("", {})).toThrow("vault double: a token cannot be empty");
    expect(() =>
      double.addToken("t", { capabilities: { "a/+/b": ["read"] } }),
    ).toThrow(/\+/);
    expect(() =>
      double.addToken("t", { capabilities: { "a/*/b": ["read"] } }),
    ).toThrow(/\*/);
    expect(() =>
      double.addToken("t", { capabilities: { "a/*": ["root"] } }),
    ).toThrow(/capability/);
    expect(() => double.revoke("never-added")).toThrow(/unknown token/);
    // Vault prefixes display names with the auth method and gives entities UUIDs.
    expect(() => double.addToken("t", { displayName: "alice" })).toThrow(/auth method/);
    expect(() => double.addToken("t", { entityId: "ent-1" })).toThrow(/UUID/);
    expect(() => double.addToken("t", { numUses: -1 })).toThrow(/numUses/);
    double.addToken("t", { displayName: "userpass-alice", entityId: ENTITY });
  });
});

describe("TLS", () => {
  it("serves https with the given key and certificate", async () => {
    const dir = mkdtempSync(join(tmpdir(), "vault-double-tls-"));
    try {
      execFileSync(
        "openssl",
        [
          "req",
          "-x509",
          "-newkey",
          "rsa:2048",
          "-nodes",
          "-days",
          "1",
          "-subj",
          "/CN=127.0.0.1",
          "-addext",
          "subjectAltName=IP:127.0.0.1",
          "-keyout",
          join(dir, "key.pem"),
          "-out",
          join(dir, "cert.pem"),
        ],
        { stdio: "ignore" },
      );
      const key = readFileSync(join(dir, "key.pem"));
      const cert = readFileSync(join(dir, "cert.pem"));
      const tls = await startVaultDouble({ tls: { key, cert } });
      try {
        expect(tls.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
        tls.addToken("s.tls", {});
        const vault = nodeVault({
          apiVersion: "v1",
          endpoint: tls.url,
          requestOptions: { ca: cert },
        });
        const res = (await vault.tokenLookupSelf(
          as("s.tls"),
        )) as LookupSelfResponse;
        expect(res.data.id).toBe("s.tls");
        const untrusted = await rejection(
          nodeVault({ apiVersion: "v1", endpoint: tls.url }).tokenLookupSelf(
            as("s.tls"),
          ),
        );
        expect(untrusted.code).toBe("DEPTH_ZERO_SELF_SIGNED_CERT");
      } finally {
        await tls.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
