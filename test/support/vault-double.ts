/**
 * A test double for the few HashiCorp Vault HTTP endpoints this service uses. It is the only stand-in for
 * Vault that the test suite allows, so it answers with the same status codes, bodies and envelopes as
 * Vault does. Each shape below names its source: the Vault docs (website/content/api-docs/...) and the
 * Vault source that produces the response (vault/token_store.go handleLookup, vault/request_handling.go,
 * sdk/logical/response_util.go, http/sys_health.go, sdk/logical/translate_response.go HTTPSysInjector).
 *
 * Endpoints (nothing else is implemented):
 *  - GET  /v1/auth/token/lookup-self   (token from X-Vault-Token, or from `Authorization: Bearer` when
 *                                       X-Vault-Token is absent or empty, as Vault's http layer does)
 *  - POST|PUT /v1/sys/capabilities-self {"paths": [...]} or the deprecated {"path": ...}
 *  - GET|HEAD /v1/sys/health           (no token needed; standbyok/activecode/standbycode/sealedcode/
 *                                       uninitcode query parameters honoured)
 *
 * Answers, as a HashiCorp Vault 1.14 server gives them (tried against a 1.14 dev server; see
 * /work/shared/docs/vault-and-friends.md), in the order Vault checks things (request_handling.go: sealed,
 * then the token, then the ACL, then routing):
 *  - sealed: 503 {"errors":["Vault is sealed"]} for everything except sys/health (503 with its JSON body).
 *  - no token (header absent or empty): 403 {"errors":["permission denied"]}.
 *  - a malformed token (a namespace suffix that names no namespace, like "hvs.x.y", or a quote in it): 500
 *    {"errors":["failed to look up namespace from the token: no namespace"]}. It is the caller's bad token,
 *    not an outage of Vault.
 *  - unknown / revoked / expired token, or a use-limited token already used up: 403
 *    {"errors":["permission denied"]} (Vault 1.15+ words it "2 errors occurred: permission denied, invalid
 *    token"; code that tells these apart must use the status, never the text).
 *  - a valid token on a path or with a method its ACL does not grant: 403 {"errors":["permission denied"]}.
 *    The built-in default policy grants "read" on lookup-self and "update" on capabilities-self, so POST to
 *    lookup-self or GET to capabilities-self is a 403 too (a root token reaches the handler: 405
 *    "unsupported operation" for a method the path lacks).
 *  - a path the ACL allows but nothing is mounted at: 404 {"errors":["no handler for route \"<path>\".
 *    route entry not found."]}.
 *  - success bodies use the logical response envelope
 *    {request_id, lease_id:"", renewable:false, lease_duration:0, data, wrap_info:null, warnings:null,
 *     auth:null, mount_type}. For sys/* paths Vault also copies every data key to the top level
 *    (HTTPSysInjector), which is why capabilities-self answers {"<path>": [...], "capabilities": [...],
 *    ..., "data": {...}} as its docs show.
 *
 * Token model (DoubleToken):
 *  - policies are sanitized like policyutil.SanitizePolicies(..., AddDefaultPolicy): lower-cased, trimmed,
 *    sorted, deduplicated, "default" added, and a set that contains "root" becomes exactly ["root"].
 *    A root token gets ["root"] from capabilities-self on every path (acl.Capabilities).
 *  - `capabilities` stands for the token's effective ACL (token + identity policies merged). Vault does
 *    NOT union every matching rule for a path: an exact rule wins over globs, and among globs
 *    (`prefix*`) the longest prefix wins (radix-tree LongestPrefix). A rule containing "deny", an empty
 *    rule, or no matching rule gives ["deny"]. Capability lists come back sorted. `+` segment wildcards
 *    are not modelled: addToken rejects them, and rejects unknown capability names too.
 *  - lookup-self `data` carries the same keys as token_store.go handleLookup: accessor, creation_time,
 *    creation_ttl, display_name, entity_id, expire_time (RFC3339 or null), explicit_max_ttl, id,
 *    meta (null), num_uses, orphan, path, policies, ttl (0 when it never expires), type. Only tokens with
 *    a lease (service tokens with ttl > 0, and batch tokens) also get issue_time and renewable, as in Vault,
 *    so a ttl-0 token (like the root token) has neither. identity_policies (plus external_namespace_policies: {})
 *    appear only when the token has an entity with identity policies; namespace_path ("team-a/") appears
 *    only for tokens outside the root namespace. Batch tokens have accessor "" and renewable false.
 *  - display_name is what Vault shows: the auth method, then "-" and the name given at login or creation
 *    ("token", "token-ci", "userpass-alice", "ldap-alice", "oidc-bob"); addToken refuses anything else.
 *    entity_id is "" (a token made by auth/token/create has no entity) or a UUID; addToken refuses others.
 *  - ttl: a token created without one gets the token mount's default, 2764800 s (768 h) on a dev server;
 *    only root tokens (and an explicit ttlSeconds: 0) never expire.
 *  - num_uses: 0 = unlimited. A use-limited token (`vault token create -use-limit=N`) spends one use on
 *    every request it authenticates (lookup-self and capabilities-self included); lookup-self reports the
 *    uses left after this one, and -1 on the LAST use (Vault marks it for revocation); after that it is
 *    unknown (403).
 *  - Editions: the default double is the open-source server, which IGNORES X-Vault-Namespace (no
 *    namespaces at all; addToken refuses a namespace). `startVaultDouble({ edition: "enterprise" })` models
 *    Vault Enterprise (and OpenBao) namespaces: X-Vault-Namespace is canonicalized ("/team-a" and "team-a/"
 *    both mean "team-a/") and a token is known only in its own namespace. Real Enterprise also accepts a
 *    parent-namespace token in a child namespace; the double deliberately does not, so tests can prove that
 *    the namespace header is sent. Namespaces given as a path prefix (/v1/team-a/...) are not modelled.
 *    sys/health has no `enterprise` field in either (1.14 has none).
 *  - The double assumes the built-in "default" policy, so any valid token may call lookup-self and
 *    capabilities-self; `capabilities` is not consulted for those two paths.
 *  - setStandby(true) only changes sys/health (429, standby:true). A real standby forwards other requests
 *    to the active node, so they keep working.
 *  - setDown(true) closes the listener and destroys open (keep-alive and in-flight) sockets: new connections
 *    get ECONNREFUSED, and requests in flight at that moment get ECONNRESET. A client that reuses a pooled
 *    keep-alive socket in the same tick as setDown(true), before it has seen the close, also gets ECONNRESET
 *    (axios uses Node's keep-alive global agent), as it would with a Vault that crashes. Yield once
 *    (e.g. `await setTimeout(10)`) if you need ECONNREFUSED exactly. setDown(false) listens again on the same
 *    port (the bind finishes on the next tick, before any request you send can connect).
 *
 * node-vault 0.12.0 (axios 1.x) behaviour observed against this double (asserted in vault-double.test.ts):
 *  - EMPTY TOKEN FALLBACK: request() does `headers['X-Vault-Token'] = headers['X-Vault-Token'] || client.token`
 *    (only when client.token is a non-empty string). A caller token of "" therefore silently becomes the
 *    client's own token. With no client token, the empty header is sent as-is (`X-Vault-Token: ""`),
 *    and Vault answers 403 "permission denied".
 *  - HEADER MUTATION: node-vault writes X-Vault-Token (the fallback) and X-Vault-Namespace into the very
 *    headers object the caller passed in `requestOptions.headers`. Reusing one headers object across
 *    calls can leak the client token into it. Build a fresh object for every call.
 *  - NAMESPACE: a client created with `namespace` OVERWRITES any per-call X-Vault-Namespace header. With no
 *    client namespace, a per-call X-Vault-Namespace header is sent unchanged.
 *  - Non-2xx (anything but 200/204): rejects with an ApiResponseError (a class that is not exported; `name` is
 *    "Error"), message = body.errors[0] (or "Status <code>"), and own property
 *    `response: { statusCode, body }` only. For 403/500/503 from lookup-self and capabilities-self, neither
 *    JSON.stringify nor util.inspect of that error contains the token, because Vault's error bodies never echo it.
 *  - sys/health: any response whose request path matches /sys\/health/ resolves with the body, so 429
 *    (standby), 503 (sealed) and 501 resolve instead of rejecting: check `sealed`/`standby` yourself.
 *  - Connection refused (setDown): rejects with the raw AxiosError (name "Error", isAxiosError true,
 *    own keys message/name/isAxiosError/code/config/request), `code: "ECONNREFUSED"`, no `response`,
 *    message "connect ECONNREFUSED 127.0.0.1:<port>" (axios 1.21.1).
 *    TOKEN LEAK: that error carries `config.headers["X-Vault-Token"]` and the raw request, and BOTH
 *    JSON.stringify(err) (AxiosError#toJSON includes config) and util.inspect(err) contain the token. The same
 *    holds for a timeout (`requestOptions.timeout` + setLatency: code "ECONNABORTED"). Log only
 *    { code, statusCode, message }.
 *  - A successful lookup-self resolves with the whole body, whose data.id IS the token: never log it.
 */
import { randomBytes, randomUUID } from "node:crypto";
import http from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";

export interface DoubleToken {
  policies?: string[]; // token policies (Vault always includes "default" unless no_default_policy)
  identityPolicies?: string[]; // entity/group policies (shown as identity_policies only when non-empty)
  displayName?: string; // as Vault shows it: "<auth method>[-<name>]", e.g. "ldap-alice"; default "token"
  entityId?: string; // "" or a UUID
  accessor?: string;
  ttlSeconds?: number; // default 2764800 (root: 0); 0 = never expires
  numUses?: number; // 0 = unlimited (default); N = the token authenticates N requests
  namespace?: string; // enterprise edition only: token valid only when X-Vault-Namespace matches ("" = root)
  capabilities?: Record<string, string[]>; // path (exact or glob with trailing * like Vault policies) -> capabilities
  type?: "service" | "batch";
}

export interface VaultDouble {
  url: string; // http://127.0.0.1:port
  addToken(token: string, t: DoubleToken): void;
  revoke(token: string): void;
  expire(token: string): void; // ttl elapsed: the token now answers like an expired one
  setSealed(sealed: boolean): void;
  setStandby(standby: boolean): void;
  setDown(down: boolean): void; // close/refuse connections like an unreachable Vault
  setLatency(ms: number): void;
  requests: Array<{
    method: string;
    path: string;
    token: string | undefined;
    namespace: string | undefined;
    body: unknown;
  }>;
  close(): Promise<void>;
}

/** What the double reports as its Vault version in sys/health (the enterprise edition adds "+ent"). */
export const VAULT_DOUBLE_VERSION = "1.14.10";

/** The ttl of a token created without one: the token mount's default on a Vault dev server (768 h). */
export const DEFAULT_TOKEN_TTL_SECONDS = 2_764_800;

/** Auth methods whose name prefixes display_name; "token" alone is a token made without a display name. */
const AUTH_METHODS = ["token", "userpass", "ldap", "oidc", "jwt", "github", "approle", "cert", "kubernetes", "aws", "okta", "radius"];
const DISPLAY_NAME = new RegExp(`^(${AUTH_METHODS.join("|")})(-.+)?$`);
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

const POLICY_CAPABILITIES = new Set([
  "create",
  "read",
  "update",
  "patch",
  "delete",
  "list",
  "sudo",
  "deny",
  "subscribe",
  "recover",
]);

const ERR_PERMISSION_DENIED = "permission denied";
const ERR_NO_NAMESPACE = "failed to look up namespace from the token: no namespace";
const ERR_UNSUPPORTED_OPERATION =
  "1 error occurred:\n\t* unsupported operation\n\n";
const ERR_SEALED = "Vault is sealed";

interface StoredToken {
  id: string;
  policies: string[];
  identityPolicies: string[];
  displayName: string;
  entityId: string;
  accessor: string;
  ttlSeconds: number;
  /** Uses left; 0 = unlimited; -1 = its last use has been spent (revocation pending). */
  numUses: number;
  namespace: string; // canonical: "" or "team-a/"
  capabilities: Map<string, string[]>;
  type: "service" | "batch";
  createdAtMs: number;
  revoked: boolean;
  expired: boolean;
}

/** policyutil.SanitizePolicies(policies, AddDefaultPolicy). */
function sanitizePolicies(input: readonly string[]): string[] {
  const cleaned = input
    .map((p) => p.trim().toLowerCase())
    .filter((p) => p !== "");
  if (cleaned.includes("root")) return ["root"];
  const set = new Set(cleaned);
  set.add("default");
  return [...set].sort();
}

/** namespace.Canonicalize: no leading slash, one trailing slash, "" for root. */
function canonicalNamespace(ns: string | undefined): string {
  const trimmed = (ns ?? "").trim().replace(/^\/+/, "").replace(/\/+$/, "");
  return trimmed === "" ? "" : `${trimmed}/`;
}

function randomAccessor(): string {
  const alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  const bytes = randomBytes(24);
  let out = "";
  for (const b of bytes) out += alphabet[b % alphabet.length] ?? "A";
  return out;
}

function headerValue(v: string | string[] | undefined): string | undefined {
  if (Array.isArray(v)) return v.join(", ");
  return v;
}

/** Go's strconv.ParseBool. */
function parseGoBool(v: string): boolean | undefined {
  if (["1", "t", "T", "TRUE", "true", "True"].includes(v)) return true;
  if (["0", "f", "F", "FALSE", "false", "False"].includes(v)) return false;
  return undefined;
}

/** framework.TypeCommaStringSlice. */
function commaStringSlice(v: unknown): string[] | undefined {
  if (v === undefined || v === null) return [];
  if (typeof v === "string") {
    return v
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s !== "");
  }
  if (Array.isArray(v)) {
    const out: string[] = [];
    for (const el of v as unknown[]) {
      if (
        typeof el === "string" ||
        typeof el === "number" ||
        typeof el === "boolean"
      )
        out.push(String(el));
      else return undefined;
    }
    return out;
  }
  return undefined;
}

function trimSlash(p: string): string {
  return p.replace(/^\/+/, "");
}

function capabilitiesFor(tok: StoredToken, rawPath: string): string[] {
  if (tok.policies.includes("root")) return ["root"];
  const path = trimSlash(rawPath);
  let rule = tok.capabilities.get(path);
  if (rule === undefined) {
    let bestLen = -1;
    for (const [pattern, caps] of tok.capabilities) {
      if (!pattern.endsWith("*")) continue;
      const prefix = pattern.slice(0, -1);
      if (path.startsWith(prefix) && prefix.length > bestLen) {
        bestLen = prefix.length;
        rule = caps;
      }
    }
  }
  if (rule === undefined || rule.length === 0 || rule.includes("deny"))
    return ["deny"];
  return [...new Set(rule)].sort();
}

function operationCapabilities(method: string): string[] {
  switch (method) {
    case "GET":
    case "HEAD":
      return ["read"];
    case "POST":
    case "PUT":
      return ["create", "update"];
    case "PATCH":
      return ["patch"];
    case "DELETE":
      return ["delete"];
    case "LIST":
      return ["list"];
    default:
      return [];
  }
}

/**
 * A token Vault cannot even parse: a namespace suffix ("hvs.<id>.<namespace id>") that names no namespace,
 * or characters no token has. Vault 1.14 answers those 500 instead of 403.
 */
function isMalformedToken(token: string): boolean {
  if (token.includes('"') || token.includes("'")) return true;
  return /^(hvs|hvb|hvr|s|b|r)\./.test(token) && token.split(".").length > 2;
}

export async function startVaultDouble(opts?: {
  tls?: { key: string | Buffer; cert: string | Buffer };
  /** "oss" (default): the open-source server, no namespaces; "enterprise": namespaces modelled. */
  edition?: "oss" | "enterprise";
}): Promise<VaultDouble> {
  const enterprise = opts?.edition === "enterprise";
  const tokens = new Map<string, StoredToken>();
  const requests: VaultDouble["requests"] = [];
  const timers = new Set<NodeJS.Timeout>();
  const clusterId = randomUUID();
  let sealed = false;
  let standby = false;
  let down = false;
  let latencyMs = 0;
  let closed = false;
  let listenError: Error | undefined;

  function send(
    res: http.ServerResponse,
    status: number,
    body: unknown,
    method: string,
  ): void {
    if (res.destroyed || res.writableEnded) return;
    res.statusCode = status;
    res.setHeader("Cache-Control", "no-store");
    res.setHeader("Content-Type", "application/json");
    if (opts?.tls)
      res.setHeader(
        "Strict-Transport-Security",
        "max-age=31536000; includeSubDomains",
      );
    // Go's json.Encoder ends every document with a newline.
    res.end(method === "HEAD" ? undefined : `${JSON.stringify(body)}\n`);
  }

  function sendError(
    res: http.ServerResponse,
    status: number,
    message: string | undefined,
    method: string,
  ): void {
    send(
      res,
      status,
      { errors: message === undefined ? [] : [message] },
      method,
    );
  }

  function envelope(
    data: Record<string, unknown>,
    mountType: string,
  ): Record<string, unknown> {
    return {
      request_id: randomUUID(),
      lease_id: "",
      renewable: false,
      lease_duration: 0,
      data,
      wrap_info: null,
      warnings: null,
      auth: null,
      mount_type: mountType,
    };
  }

  function isExpired(tok: StoredToken, nowMs: number): boolean {
    if (tok.expired) return true;
    return (
      tok.ttlSeconds > 0 && nowMs >= tok.createdAtMs + tok.ttlSeconds * 1000
    );
  }

  function findToken(id: string, namespace: string): StoredToken | undefined {
    const tok = tokens.get(id);
    if (tok === undefined || tok.revoked || tok.namespace !== namespace)
      return undefined;
    if (isExpired(tok, Date.now())) return undefined;
    return tok;
  }

  function lookupData(tok: StoredToken): Record<string, unknown> {
    const now = Date.now();
    const creationTime = Math.floor(tok.createdAtMs / 1000);
    const hasLease = tok.type === "batch" || tok.ttlSeconds > 0;
    const data: Record<string, unknown> = {
      accessor: tok.type === "batch" ? "" : tok.accessor,
      creation_time: creationTime,
      creation_ttl: tok.ttlSeconds,
      display_name: tok.displayName,
      entity_id: tok.entityId,
      expire_time: null,
      explicit_max_ttl: 0,
      id: tok.id,
      meta: null,
      num_uses: tok.numUses,
      orphan: tok.type === "batch" || tok.policies.includes("root"),
      path: tok.policies.includes("root")
        ? "auth/token/root"
        : "auth/token/create",
      policies: [...tok.policies],
      ttl: 0,
      type: tok.type,
    };
    if (tok.namespace !== "") data.namespace_path = tok.namespace;
    if (hasLease) {
      if (tok.ttlSeconds > 0) {
        const expireMs = tok.createdAtMs + tok.ttlSeconds * 1000;
        data.expire_time = new Date(expireMs).toISOString();
        data.ttl = Math.max(0, Math.floor((expireMs - now) / 1000));
      }
      data.renewable = tok.type === "service";
      data.issue_time = new Date(tok.createdAtMs).toISOString();
    }
    if (tok.entityId !== "" && tok.identityPolicies.length > 0) {
      data.identity_policies = [...tok.identityPolicies];
      data.external_namespace_policies = {};
    }
    // Go marshals map keys in sorted order.
    return Object.fromEntries(
      Object.entries(data).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
    );
  }

  function health(
    res: http.ServerResponse,
    method: string,
    query: URLSearchParams,
  ): void {
    if (method !== "GET" && method !== "HEAD") {
      sendError(res, 405, undefined, method);
      return;
    }
    const code = (name: string, dflt: number): number | undefined => {
      const v = query.get(name);
      if (v === null) return dflt;
      const n = Number.parseInt(v, 10);
      return Number.isNaN(n) ? undefined : n;
    };
    const standbyOkRaw = query.get("standbyok");
    const standbyOk = standbyOkRaw === null ? false : parseGoBool(standbyOkRaw);
    const activeCode = code("activecode", 200);
    const standbyCode = code("standbycode", 429);
    const sealedCode = code("sealedcode", 503);
    if (standbyOk === undefined) {
      sendError(
        res,
        400,
        `bad value for standbyok parameter: strconv.ParseBool: parsing "${standbyOkRaw ?? ""}": invalid syntax`,
        method,
      );
      return;
    }
    if (
      activeCode === undefined ||
      standbyCode === undefined ||
      sealedCode === undefined ||
      code("uninitcode", 501) === undefined
    ) {
      sendError(res, 400, undefined, method);
      return;
    }
    // A sealed node reports standby: true (core.StandbyStates) and no cluster name or id.
    const isStandby = sealed || standby;
    let status = activeCode;
    if (sealed) status = sealedCode;
    else if (standby && !standbyOk) status = standbyCode;
    const body: Record<string, unknown> = {
      initialized: true,
      sealed,
      standby: isStandby,
      performance_standby: false,
      replication_performance_mode: "disabled",
      replication_dr_mode: "disabled",
      server_time_utc: Math.floor(Date.now() / 1000),
      version: enterprise ? `${VAULT_DOUBLE_VERSION}+ent` : VAULT_DOUBLE_VERSION,
    };
    if (!sealed) {
      body.cluster_name = "vault-cluster-double";
      body.cluster_id = clusterId;
    }
    send(res, status, body, method);
  }

  function route(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    rawBody: string,
  ): void {
    const method = (req.method ?? "GET").toUpperCase();
    const url = new URL(req.url ?? "/", "http://vault.invalid");
    const path = url.pathname;

    if (path === "/v1/sys/health") {
      health(res, method, url.searchParams);
      return;
    }
    if (!path.startsWith("/v1/")) {
      sendError(res, 404, undefined, method);
      return;
    }
    if (sealed) {
      sendError(res, 503, ERR_SEALED, method);
      return;
    }

    const xVaultToken = headerValue(req.headers["x-vault-token"]);
    let clientToken = xVaultToken ?? "";
    if (clientToken === "") {
      const authz = headerValue(req.headers.authorization) ?? "";
      if (authz.startsWith("Bearer "))
        clientToken = authz.slice("Bearer ".length).trim();
    }
    if (clientToken === "") {
      sendError(res, 403, ERR_PERMISSION_DENIED, method);
      return;
    }
    if (isMalformedToken(clientToken)) {
      sendError(res, 500, ERR_NO_NAMESPACE, method);
      return;
    }
    // The open-source server has no namespaces: the header means nothing to it.
    const namespace = enterprise
      ? canonicalNamespace(headerValue(req.headers["x-vault-namespace"]))
      : "";
    const tok = findToken(clientToken, namespace);
    if (tok === undefined) {
      sendError(res, 403, ERR_PERMISSION_DENIED, method);
      return;
    }
    // Every request a use-limited token authenticates spends a use; the last one leaves -1 (revocation
    // pending), and the token is gone once that request is answered.
    if (tok.numUses > 0) {
      tok.numUses = tok.numUses === 1 ? -1 : tok.numUses - 1;
      if (tok.numUses === -1) res.once("finish", () => (tok.revoked = true));
    }
    const isRoot = tok.policies.includes("root");

    const logicalPath = path.slice("/v1/".length);
    if (logicalPath === "auth/token/lookup-self") {
      // The default policy grants "read" here; POST (update) exists on the path but is not granted.
      const allowed = method === "GET" || (isRoot && (method === "POST" || method === "PUT"));
      if (!allowed) {
        sendError(res, isRoot ? 405 : 403, isRoot ? ERR_UNSUPPORTED_OPERATION : ERR_PERMISSION_DENIED, method);
        return;
      }
      send(res, 200, envelope(lookupData(tok), "token"), method);
      return;
    }
    if (logicalPath === "sys/capabilities-self") {
      // The default policy grants "update" here.
      if (method !== "POST" && method !== "PUT") {
        sendError(res, isRoot ? 405 : 403, isRoot ? ERR_UNSUPPORTED_OPERATION : ERR_PERMISSION_DENIED, method);
        return;
      }
      let parsed: unknown = {};
      if (rawBody.trim() !== "") {
        try {
          parsed = JSON.parse(rawBody);
        } catch (e) {
          sendError(
            res,
            400,
            `failed to parse JSON input: ${(e as Error).message}`,
            method,
          );
          return;
        }
      }
      const input = (
        typeof parsed === "object" && parsed !== null ? parsed : {}
      ) as Record<string, unknown>;
      let paths = commaStringSlice(input.paths);
      if (paths !== undefined && paths.length === 0)
        paths = commaStringSlice(input.path);
      if (paths === undefined) {
        sendError(res, 400, 'error converting input for field "paths"', method);
        return;
      }
      if (paths.length === 0) {
        sendError(res, 400, "paths must be supplied", method);
        return;
      }
      const data: Record<string, unknown> = {};
      for (const p of paths) {
        if (p === "") {
          sendError(
            res,
            400,
            "1 error occurred:\n\t* missing path\n\n",
            method,
          );
          return;
        }
        data[p] = capabilitiesFor(tok, p);
      }
      if (paths.length === 1) data.capabilities = data[paths[0] ?? ""];
      // HTTPSysInjector: sys/* responses repeat every data key at the top level.
      send(res, 200, { ...data, ...envelope(data, "system") }, method);
      return;
    }

    // Anything else: the ACL decides between 403 and "nothing here".
    const caps = capabilitiesFor(tok, logicalPath);
    const allowed =
      caps.includes("root") ||
      operationCapabilities(method).some((c) => caps.includes(c));
    if (!allowed) {
      sendError(res, 403, ERR_PERMISSION_DENIED, method);
      return;
    }
    sendError(res, 404, `no handler for route "${logicalPath}". route entry not found.`, method);
  }

  const handler = (
    req: http.IncomingMessage,
    res: http.ServerResponse,
  ): void => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("error", () => res.destroy());
    req.on("end", () => {
      const rawBody = Buffer.concat(chunks).toString("utf8");
      let body: unknown = undefined;
      if (rawBody !== "") {
        try {
          body = JSON.parse(rawBody);
        } catch {
          body = rawBody;
        }
      }
      const xVaultToken = headerValue(req.headers["x-vault-token"]);
      const authz = headerValue(req.headers.authorization);
      const token =
        xVaultToken ??
        (authz?.startsWith("Bearer ")
          ? authz.slice("Bearer ".length).trim()
          : undefined);
      requests.push({
        method: (req.method ?? "GET").toUpperCase(),
        path: new URL(req.url ?? "/", "http://vault.invalid").pathname,
        token,
        namespace: headerValue(req.headers["x-vault-namespace"]),
        body,
      });
      const respond = (): void => {
        try {
          route(req, res, rawBody);
        } catch (e) {
          sendError(
            res,
            500,
            `internal error in vault double: ${(e as Error).message}`,
            req.method ?? "GET",
          );
        }
      };
      if (latencyMs > 0) {
        const timer = setTimeout(() => {
          timers.delete(timer);
          respond();
        }, latencyMs);
        timers.add(timer);
      } else {
        respond();
      }
    });
  };

  const server: http.Server | https.Server = opts?.tls
    ? https.createServer({ key: opts.tls.key, cert: opts.tls.cert }, handler)
    : http.createServer(handler);
  server.on("error", (e: Error) => {
    listenError = e;
  });

  await new Promise<void>((resolve, reject) => {
    const onError = (e: Error): void => reject(e);
    server.once("error", onError);
    server.listen(0, "127.0.0.1", () => {
      server.off("error", onError);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const url = `${opts?.tls ? "https" : "http"}://127.0.0.1:${port}`;

  function requireToken(token: string): StoredToken {
    const tok = tokens.get(token);
    if (tok === undefined)
      throw new Error(
        "vault double: unknown token (add it with addToken first)",
      );
    return tok;
  }

  return {
    url,
    requests,
    addToken(token: string, t: DoubleToken): void {
      if (token === "")
        throw new Error("vault double: a token cannot be empty");
      const capabilities = new Map<string, string[]>();
      for (const [rawPattern, caps] of Object.entries(t.capabilities ?? {})) {
        const pattern = trimSlash(rawPattern);
        if (pattern.includes("+"))
          throw new Error(
            `vault double: '+' wildcards are not modelled (${rawPattern})`,
          );
        if (
          pattern.indexOf("*") !== -1 &&
          pattern.indexOf("*") !== pattern.length - 1
        ) {
          throw new Error(
            `vault double: '*' is only allowed at the end of a path (${rawPattern})`,
          );
        }
        for (const c of caps) {
          if (!POLICY_CAPABILITIES.has(c))
            throw new Error(
              `vault double: unknown capability "${c}" on ${rawPattern}`,
            );
        }
        const existing = capabilities.get(pattern) ?? [];
        capabilities.set(pattern, [...existing, ...caps]);
      }
      const identityPolicies = [
        ...new Set(
          (t.identityPolicies ?? []).map((p) => p.trim().toLowerCase()),
        ),
      ]
        .filter((p) => p !== "")
        .sort();
      const policies = sanitizePolicies(t.policies ?? []);
      const ttlSeconds = t.ttlSeconds ?? (policies.includes("root") ? 0 : DEFAULT_TOKEN_TTL_SECONDS);
      if (!Number.isFinite(ttlSeconds) || ttlSeconds < 0)
        throw new Error("vault double: ttlSeconds must be >= 0");
      const numUses = t.numUses ?? 0;
      if (!Number.isInteger(numUses) || numUses < 0)
        throw new Error("vault double: numUses must be an integer >= 0");
      const displayName = t.displayName ?? "token";
      if (!DISPLAY_NAME.test(displayName))
        throw new Error(
          `vault double: Vault prefixes display names with the auth method (token-..., userpass-..., ldap-...): "${displayName}"`,
        );
      const entityId = t.entityId ?? (identityPolicies.length > 0 ? randomUUID() : "");
      if (entityId !== "" && !UUID.test(entityId))
        throw new Error(`vault double: Vault entity ids are UUIDs: "${entityId}"`);
      if (!enterprise && (t.namespace ?? "") !== "")
        throw new Error(
          'vault double: the open-source server has no namespaces (startVaultDouble({ edition: "enterprise" }))',
        );
      tokens.set(token, {
        id: token,
        policies,
        identityPolicies,
        displayName,
        entityId,
        accessor: t.accessor ?? randomAccessor(),
        ttlSeconds,
        numUses,
        namespace: canonicalNamespace(t.namespace),
        capabilities,
        type: t.type ?? "service",
        createdAtMs: Date.now(),
        revoked: false,
        expired: false,
      });
    },
    revoke(token: string): void {
      requireToken(token).revoked = true;
    },
    expire(token: string): void {
      requireToken(token).expired = true;
    },
    setSealed(v: boolean): void {
      sealed = v;
    },
    setStandby(v: boolean): void {
      standby = v;
    },
    setDown(v: boolean): void {
      if (closed || v === down) return;
      down = v;
      if (v) {
        // Closing the listening handle happens synchronously, so the next connect is refused.
        server.close();
        server.closeAllConnections();
      } else {
        listenError = undefined;
        server.listen(port, "127.0.0.1");
      }
    },
    setLatency(ms: number): void {
      if (!Number.isFinite(ms) || ms < 0)
        throw new Error("vault double: latency must be >= 0");
      latencyMs = ms;
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      if (!server.listening) {
        server.closeAllConnections();
      } else {
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        });
      }
      if (listenError !== undefined) {
        throw new Error(
          `vault double: could not listen again on port ${port}: ${listenError.message}`,
        );
      }
    },
  };
}
