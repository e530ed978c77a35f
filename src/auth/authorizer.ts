import { createHmac, randomBytes } from "node:crypto";
import { AppError } from "../errors.js";
import type { AuditActor } from "../storage/model.js";

/**
 * What a responder asks to do:
 *  - list:   list carves (no carve id);
 *  - read:   read one carve's metadata, file list or archive;
 *  - delete: delete one carve;
 *  - audit:  read the audit trail;
 *  - hold:   place or lift a legal hold on one carve;
 *  - import: import an archive collected out of band as a new carve (no carve id: the service picks it).
 */
export type AuthAction = "list" | "read" | "delete" | "audit" | "hold" | "import";

export interface AuthQuestion {
  action: AuthAction;
  /** The carve concerned (read, delete). Must already be a safe carve id. */
  carveId?: string;
}

export interface AuthDecision {
  allowed: boolean;
  /** Who the token belongs to, as the authority describes it; never the token itself. */
  actor: AuditActor;
  /** Why, in words safe to log and to show (e.g. "policy osquery-carve-download missing"). */
  reason: string;
  /** The decision came from the cache, not from a fresh question to the authority. */
  cached: boolean;
}

/**
 * Decides whether a bearer token may do something. Implementations never log, store or return the token,
 * nor anything from which it could be replayed.
 */
export interface Authorizer {
  /**
   * Asks the authority. A valid token without the right resolves with `allowed: false`.
   * @param namespace the authority's namespace to ask in; undefined = the configured one.
   * @throws AppError TOKEN_MISSING (empty token) or TOKEN_INVALID (malformed: in both cases the authority is
   *   not contacted; or unknown, expired, revoked), VAULT_UNAVAILABLE (unreachable, sealed, timeout,
   *   unexpected reply), VAULT_NOT_CONFIGURED.
   */
  decide(token: string, namespace: string | undefined, question: AuthQuestion): Promise<AuthDecision>;

  /**
   * A fingerprint of the token for the audit trail: an HMAC under a secret that lives only in this process,
   * so it correlates one token's actions but cannot be replayed nor checked against a guessed token elsewhere.
   */
  fingerprint(token: string): string;

  /** Drops cached decisions and releases connections. */
  close(): Promise<void>;
}

/** Vault tokens are short printable ASCII without spaces (hvs., hvb., s., legacy UUIDs). */
const TOKEN_SHAPE = /^[\x21-\x7e]{1,2048}$/;

/**
 * Checked before any question reaches the authority.
 * @throws AppError TOKEN_MISSING for "", TOKEN_INVALID for something that cannot be a token.
 */
export function assertTokenShape(token: string): void {
  if (token === "") throw new AppError("TOKEN_MISSING");
  if (!TOKEN_SHAPE.test(token)) throw new AppError("TOKEN_INVALID");
}

/** HMAC-SHA256 under a random per-process key: the fingerprint every Authorizer of this process uses. */
export function tokenFingerprinter(): (token: string) => string {
  const key = randomBytes(32);
  return (token) => createHmac("sha256", key).update(token, "utf8").digest("hex").slice(0, 32);
}

/** The Authorizer used when no authority is configured: every question is answered with 503. */
export function unconfiguredAuthorizer(): Authorizer {
  const fingerprint = tokenFingerprinter();
  return {
    decide: () => Promise.reject(new AppError("VAULT_NOT_CONFIGURED")),
    fingerprint,
    close: () => Promise.resolve(),
  };
}
