import { readFile } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import nodeVault from "node-vault";
import { z } from "zod";
import { DEFAULT_IMPORT_PATH, DEFAULT_IMPORT_POLICY, type Config } from "../../config/schema.js";
import { AppError } from "../../errors.js";
import type { Logger } from "../../logger.js";
import {
  assertTokenShape,
  tokenFingerprinter,
  type AuthAction,
  type AuthDecision,
  type Authorizer,
  type AuthQuestion,
} from "../authorizer.js";
import { DecisionCache } from "../decision-cache.js";

export interface VaultAuthorizerOptions {
  /** Vault's address, e.g. https://vault.example.com:8200 */
  address: string;
  /** Namespace asked in when decide() gets none ("" or undefined: the root namespace). */
  namespace?: string | undefined;
  /** PEM CA certificate(s) for Vault's TLS; the system CAs when absent. */
  ca?: string | Buffer | undefined;
  timeoutMs: number;
  policy: string;
  adminPolicy: string;
  authMode: "policy" | "capabilities";
  pathTemplate: string;
  auditPath: string;
  /** Policy that allows imports (policy mode); DEFAULT_IMPORT_POLICY when absent. */
  importPolicy?: string | undefined;
  /** Path on which "create" allows imports (capabilities mode); DEFAULT_IMPORT_PATH when absent. */
  importPath?: string | undefined;
  cacheSeconds: number;
  logger: Logger;
  /** Clock for the decision cache (tests). */
  now?: () => number;
}

/** The parts of a lookup-self reply this service reads (token_store.go handleLookup). */
const lookupSelfReply = z.object({
  data: z.object({
    policies: z.array(z.string()).nullish(),
    identity_policies: z.array(z.string()).nullish(),
    display_name: z.string().nullish(),
    entity_id: z.string().nullish(),
    ttl: z.number().nullish(),
    expire_time: z.string().nullish(),
    num_uses: z.number().nullish(),
  }),
});
type LookupSelfData = z.output<typeof lookupSelfReply>["data"];

const capabilityList = z.array(z.string());

/** A failure of a Vault request reduced to what may be logged: never headers, configs or the token. */
export interface VaultFailure {
  statusCode: number | null;
  code: string | null;
  message: string;
}

/** Stands in as `cause` of the AppErrors this adapter throws, instead of the raw (token-carrying) error. */
class VaultRequestError extends Error {
  readonly code: string | undefined;
  constructor(failure: VaultFailure) {
    super(failure.statusCode === null ? failure.message : `HTTP ${failure.statusCode}: ${failure.message}`);
    this.name = "VaultRequestError";
    this.code = failure.code ?? undefined;
  }
}

/**
 * Reduces whatever node-vault / axios threw to {statusCode, code, message}. A raw axios error carries the
 * request config with the X-Vault-Token header and the raw request: none of that is kept.
 */
export function describeVaultFailure(err: unknown, token: string): VaultFailure {
  const e = (typeof err === "object" && err !== null ? err : {}) as {
    response?: { statusCode?: unknown; body?: unknown };
    code?: unknown;
    message?: unknown;
  };
  const statusCode = typeof e.response?.statusCode === "number" ? e.response.statusCode : null;
  const code = typeof e.code === "string" && /^[A-Z0-9_]{1,40}$/.test(e.code) ? e.code : null;
  let message = typeof e.message === "string" ? e.message : "unknown error";
  if (token !== "") message = message.split(token).join("[token]");
  message = message.replace(/\s+/g, " ").trim().slice(0, 200);
  return { statusCode, code, message };
}

/** Vault's own error bodies ({"errors": [...]}) say "Vault is sealed" when it is. */
function saysSealed(err: unknown): boolean {
  const body = (err as { response?: { body?: { errors?: unknown } } } | null)?.response?.body;
  return Array.isArray(body?.errors) && body.errors.some((m) => typeof m === "string" && /sealed/i.test(m));
}

/** Vault 1.14 answers a token it cannot parse (`hvs.x.y`, a quote) with a 500 naming the namespace lookup. */
function saysMalformedToken(err: unknown): boolean {
  const res = (err as { response?: { statusCode?: unknown; body?: { errors?: unknown } } } | null)?.response;
  const errors = res?.body?.errors;
  return (
    res?.statusCode === 500 &&
    Array.isArray(errors) &&
    errors.some((m) => typeof m === "string" && m.startsWith("failed to look up namespace from the token"))
  );
}

interface CachedDecision {
  allowed: boolean;
  reason: string;
  actor: AuthDecision["actor"];
  /** The token has a use limit: never cached, nor shared with concurrent callers. */
  useLimited: boolean;
}

/**
 * The Authorizer backed by HashiCorp Vault (or OpenBao) through node-vault.
 *
 * One shared node-vault client, made WITHOUT a token of its own (node-vault would silently send its own
 * token in place of an empty caller token) and with VAULT_TOKEN / VAULT_NAMESPACE / VAULT_PREFIX /
 * VAULT_SKIP_VERIFY from the environment neutralized. Every call gets a fresh headers object (node-vault
 * writes into the one it is given).
 *
 * Modes:
 *  - policy: lookup-self; allowed when `policies` or `identity_policies` contain the policy for the action
 *    (`policy` for list/read, `adminPolicy` for delete/audit/hold, `importPolicy` for import), or "root".
 *  - capabilities: lookup-self (identity, validity, ttl), then sys/capabilities-self on the path for the
 *    question: "read"/"delete" on pathTemplate, "list" on its part before {carve_id}, "read" on auditPath,
 *    "create" on importPath (an import makes a new carve).
 */
export class VaultAuthorizer implements Authorizer {
  private readonly vault: nodeVault.client;
  private readonly cache: DecisionCache<CachedDecision>;
  private readonly httpAgent: http.Agent;
  private readonly httpsAgent: https.Agent;
  readonly fingerprint: (token: string) => string;
  private readonly logger: Logger;

  constructor(private readonly options: VaultAuthorizerOptions) {
    this.logger = options.logger;
    this.fingerprint = tokenFingerprinter();
    this.httpAgent = new http.Agent({ keepAlive: true, maxSockets: 32 });
    this.httpsAgent = new https.Agent({
      keepAlive: true,
      maxSockets: 32,
      rejectUnauthorized: true,
      ...(options.ca !== undefined ? { ca: options.ca } : {}),
    });
    this.vault = nodeVault({
      apiVersion: "v1",
      endpoint: options.address,
      // strictSSL true: VAULT_SKIP_VERIFY in the environment must not turn certificate checks off.
      rpDefaults: { strictSSL: true, timeout: options.timeoutMs },
    } as nodeVault.VaultOptions);
    // node-vault falls back to the environment for these when the option is empty: nothing of that is wanted.
    const client = this.vault as unknown as Record<string, unknown>;
    client.token = "";
    client.namespace = undefined;
    client.pathPrefix = "";
    this.cache = new DecisionCache<CachedDecision>({
      maxAgeMs: options.cacheSeconds * 1000,
      maxEntries: 10_000,
      now: options.now ?? Date.now,
    });
  }

  /** Reads the CA file and builds the authorizer from the `vault` configuration section. */
  static async create(config: Config["vault"], logger: Logger, now?: () => number): Promise<VaultAuthorizer> {
    if (!config.address) throw new Error("vault.address (VAULT_ADDR) is not set");
    let ca: Buffer | undefined;
    if (config.caFile) {
      try {
        ca = await readFile(config.caFile);
      } catch (err) {
        throw new Error(`vault.caFile (CARVE_VAULT_CA_FILE): cannot read ${config.caFile}: ${(err as Error).message}`);
      }
    }
    if (/^http:\/\//i.test(config.address)) {
      const loopback = /^http:\/\/(127\.|localhost[:/]|localhost$|\[::1\])/i.test(config.address);
      logger.warn(
        { vaultAddress: config.address },
        loopback
          ? "Vault address is plain http (loopback: a dev server?): use https for any Vault that holds real tokens"
          : "Vault address is plain http: responders' tokens cross the network in clear",
      );
    }
    return new VaultAuthorizer({
      address: config.address,
      namespace: config.namespace,
      ca,
      timeoutMs: config.timeoutMs,
      policy: config.policy,
      adminPolicy: config.adminPolicy,
      authMode: config.authMode,
      pathTemplate: config.pathTemplate,
      auditPath: config.auditPath,
      importPolicy: config.importPolicy,
      importPath: config.importPath,
      cacheSeconds: config.cacheSeconds,
      logger: logger.child({ component: "vault-authorizer" }),
      ...(now ? { now } : {}),
    });
  }

  async decide(token: string, namespace: string | undefined, question: AuthQuestion): Promise<AuthDecision> {
    assertTokenShape(token); // before anything reaches Vault
    const ns = namespace ?? this.options.namespace ?? "";
    const ask = this.vaultQuestion(question);
    const key = this.cache.keyOf(token, ns, ask.cacheParts);
    const hit = this.cache.get(key);
    if (hit) return { allowed: hit.allowed, reason: hit.reason, actor: hit.actor, cached: true };
    let mine = false;
    const shared = await this.cache.shared(key, () => {
      mine = true;
      return this.ask(token, ns, ask, key);
    });
    // A use-limited token's answer is not handed to concurrent callers either: each spends its own use.
    const decision = mine || !shared.useLimited ? shared : await this.ask(token, ns, ask, key);
    return { allowed: decision.allowed, reason: decision.reason, actor: decision.actor, cached: false };
  }

  /** One fresh question to Vault; the answer is cached unless the token's ttl or use limit forbids it. */
  private async ask(
    token: string,
    ns: string,
    ask: ReturnType<VaultAuthorizer["vaultQuestion"]>,
    key: string,
  ): Promise<CachedDecision> {
    const { data, notAfterMs } = await this.lookupSelf(token, ns);
    const actor = {
      displayName: data.display_name || null,
      entityId: data.entity_id || null,
      tokenFingerprint: this.fingerprint(token),
    };
    const policies = new Set([...(data.policies ?? []), ...(data.identity_policies ?? [])].map((p) => p.toLowerCase()));
    let allowed: boolean;
    let reason: string;
    if (ask.kind === "policy") {
      allowed = policies.has(ask.policy) || policies.has("root");
      reason = allowed ? `policy ${policies.has(ask.policy) ? ask.policy : "root"}` : `policy ${ask.policy} missing`;
    } else {
      const caps = await this.capabilitiesSelf(token, ns, ask.path);
      allowed = (caps.includes(ask.capability) || caps.includes("root")) && !caps.includes("deny");
      reason = `capabilities on ${ask.path}: ${caps.join(",") || "none"}`;
    }
    const value: CachedDecision = { allowed, reason, actor, useLimited: (data.num_uses ?? 0) !== 0 };
    this.cache.set(key, value, notAfterMs);
    return value;
  }

  async close(): Promise<void> {
    this.cache.clear();
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
    return Promise.resolve();
  }

  /** What exactly is asked of Vault for a question; also what the cache key is made of. */
  private vaultQuestion(
    question: AuthQuestion,
  ): { kind: "policy"; policy: string; cacheParts: string[] } | { kind: "capabilities"; path: string; capability: string; cacheParts: string[] } {
    const policyOf: Record<AuthAction, "download" | "admin" | "import"> = {
      list: "download",
      read: "download",
      delete: "admin",
      audit: "admin",
      hold: "admin",
      import: "import",
    };
    if (this.options.authMode === "policy") {
      const kind = policyOf[question.action];
      const policy =
        kind === "admin"
          ? this.options.adminPolicy
          : kind === "import"
            ? (this.options.importPolicy ?? DEFAULT_IMPORT_POLICY)
            : this.options.policy;
      return { kind: "policy", policy, cacheParts: ["policy", policy] };
    }
    let path: string;
    let capability: string;
    switch (question.action) {
      case "list":
        path = this.options.pathTemplate.slice(0, this.options.pathTemplate.indexOf("{carve_id}"));
        capability = "list";
        break;
      case "audit":
        path = this.options.auditPath;
        capability = "read";
        break;
      case "import":
        // An import creates a carve that does not exist yet: Vault's "create" on a fixed path.
        path = this.options.importPath ?? DEFAULT_IMPORT_PATH;
        capability = "create";
        break;
      case "read":
      case "delete":
      case "hold":
        if (question.carveId === undefined) throw new Error(`authorization question ${question.action} needs a carve id`);
        path = this.options.pathTemplate.replace("{carve_id}", question.carveId);
        // A hold changes the carve's record: Vault's "update" capability on its path.
        capability = question.action === "hold" ? "update" : question.action;
        break;
    }
    return { kind: "capabilities", path, capability, cacheParts: ["capabilities", path, capability] };
  }

  /** A fresh headers object per call: node-vault mutates the one it is given. */
  private requestOptions(token: string, namespace: string): Record<string, unknown> {
    const headers: Record<string, string> = { "X-Vault-Token": token };
    if (namespace !== "") headers["X-Vault-Namespace"] = namespace;
    return { headers, timeout: this.options.timeoutMs, httpAgent: this.httpAgent, httpsAgent: this.httpsAgent };
  }

  /**
   * @returns the token's data, and until when a decision about it may be cached (null: no limit of its own).
   * @throws AppError TOKEN_INVALID, VAULT_UNAVAILABLE
   */
  private async lookupSelf(token: string, namespace: string): Promise<{ data: LookupSelfData; notAfterMs: number | null }> {
    let body: unknown;
    try {
      body = await this.vault.request({ path: "/auth/token/lookup-self", method: "GET", ...this.requestOptions(token, namespace) });
    } catch (err) {
      throw this.failure(err, token, "lookup-self", "token");
    }
    const parsed = lookupSelfReply.safeParse(body);
    if (!parsed.success) throw this.unexpected("lookup-self", "reply without the expected data");
    const data = parsed.data.data;
    const now = (this.options.now ?? Date.now)();
    // ttl (seconds left, by Vault's clock but relative, so immune to clock skew) bounds the cache; a token
    // with an expiry but ttl 0 is about to expire, and a use-limited token is asked every time (each
    // cached answer would hide a use it meant to spend). Only 0 means unlimited: Vault reports -1 on a
    // token's last use, which must not make it cacheable.
    const expires = (data.expire_time ?? "") !== "" || (data.ttl ?? 0) > 0;
    let notAfterMs = expires ? now + Math.max(0, data.ttl ?? 0) * 1000 : null;
    if ((data.num_uses ?? 0) !== 0) notAfterMs = now;
    return { data, notAfterMs };
  }

  /** @throws AppError VAULT_UNAVAILABLE; a 403 (the token may not even ask) is a ["deny"]. */
  private async capabilitiesSelf(token: string, namespace: string, path: string): Promise<string[]> {
    let body: unknown;
    try {
      body = await this.vault.request({
        path: "/sys/capabilities-self",
        method: "POST",
        json: { paths: [path] },
        ...this.requestOptions(token, namespace),
      });
    } catch (err) {
      if ((err as { response?: { statusCode?: unknown } } | null)?.response?.statusCode === 403) return ["deny"];
      throw this.failure(err, token, "capabilities-self", "capabilities");
    }
    const b = (typeof body === "object" && body !== null ? body : {}) as Record<string, unknown>;
    const data = (typeof b.data === "object" && b.data !== null ? b.data : {}) as Record<string, unknown>;
    const caps = capabilityList.safeParse(data[path] ?? b[path] ?? data.capabilities ?? b.capabilities);
    if (!caps.success) throw this.unexpected("capabilities-self", "reply without the path's capabilities");
    return caps.data;
  }

  /** Maps a failed request to the error the caller sees, and logs only its safe description. */
  private failure(err: unknown, token: string, endpoint: string, what: "token" | "capabilities"): AppError {
    const failure = describeVaultFailure(err, token);
    const cause = new VaultRequestError(failure);
    const status = failure.statusCode;
    // Vault answers an unknown, expired, revoked or other-namespace token with 403 (older releases: 400
    // when it is missing), and a token it cannot parse with 500 "failed to look up namespace from the
    // token": all the caller's bad token, not an outage worth a warning.
    if (what === "token" && status !== null && (status === 403 || status === 401 || status === 400 || saysMalformedToken(err))) {
      return new AppError("TOKEN_INVALID", undefined, { cause });
    }
    this.logger.warn({ vault: { endpoint, ...failure } }, "Vault request failed");
    if (status === 503 && saysSealed(err)) return new AppError("VAULT_UNAVAILABLE", "Vault is sealed", { cause });
    if (status === null) {
      const timedOut = failure.code === "ECONNABORTED" || failure.code === "ETIMEDOUT" || /timeout/i.test(failure.message);
      return new AppError("VAULT_UNAVAILABLE", timedOut ? `no answer from Vault within ${this.options.timeoutMs} ms` : "Vault is unreachable", {
        cause,
      });
    }
    if (status === 429 || status >= 500) return new AppError("VAULT_UNAVAILABLE", `Vault answered ${status}`, { cause });
    return new AppError("VAULT_UNAVAILABLE", `unexpected answer from Vault (${status})`, { cause });
  }

  private unexpected(endpoint: string, what: string): AppError {
    this.logger.warn({ vault: { endpoint, statusCode: 200, code: null, message: what } }, "unexpected Vault reply");
    return new AppError("VAULT_UNAVAILABLE", `unexpected answer from Vault (${endpoint})`);
  }
}
