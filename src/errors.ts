/**
 * The error registry: every error the service raises on purpose has a stable code, an HTTP status and a
 * message that is safe to show to a client. Adapters wrap low-level errors (ENOENT, Mongo codes, Vault
 * replies) in one of these and keep the original as `cause`, which is logged but never sent.
 *
 * Agent endpoints answer differently from the responder API (osquery ignores status codes and treats any
 * JSON body as success), see src/http/agent-reply.ts; the codes are shared.
 */
export const ERROR_CODES = {
  // agent protocol: start
  INVALID_START: { status: 400, message: "invalid start request" },
  CARVE_ID_CONFLICT: { status: 409, message: "carve_id already in use by another carve" },
  INSUFFICIENT_STORAGE: { status: 507, message: "not enough free storage to accept this carve" },
  TOO_MANY_CARVES: { status: 429, message: "too many carves being received; try again later" },
  TOO_MANY_CARVES_FOR_AGENT: { status: 429, message: "this agent already has the maximum number of carves being received" },
  CARVE_TOO_LARGE: { status: 413, message: "carve_size exceeds the configured maximum" },
  BLOCK_SIZE_TOO_LARGE: { status: 413, message: "block_size exceeds the configured maximum" },
  // agent protocol: blocks
  INVALID_BLOCK: { status: 400, message: "invalid block request" },
  INVALID_BASE64: { status: 400, message: "block data is not valid base64" },
  BLOCK_LENGTH_MISMATCH: { status: 400, message: "decoded block length does not match the carve geometry" },
  BLOCK_OUT_OF_RANGE: { status: 400, message: "block_id outside 0..block_count-1" },
  BLOCK_CONFLICT: { status: 409, message: "block already stored with different content" },
  UNKNOWN_SESSION: { status: 404, message: "unknown session_id" },
  REQUEST_ID_MISMATCH: { status: 403, message: "request_id does not match the session" },
  CERTIFICATE_MISMATCH: { status: 403, message: "client certificate differs from the one that started the session" },
  UNKNOWN_REQUEST: { status: 400, message: "request body is neither a carve start nor a block" },
  // generic HTTP
  BODY_TOO_LARGE: { status: 413, message: "request body too large" },
  INVALID_JSON: { status: 400, message: "request body is not valid JSON" },
  REQUEST_TIMEOUT: { status: 408, message: "the request body stopped arriving or arrives too slowly" },
  NOT_FOUND: { status: 404, message: "no such endpoint" },
  INVALID_QUERY: { status: 400, message: "invalid query" },
  CARVE_NOT_FOUND: { status: 404, message: "no such carve" },
  CARVE_NOT_COMPLETE: { status: 409, message: "carve is not complete" },
  CARVE_ON_HOLD: { status: 409, message: "carve is under legal hold" },
  HOLD_EXISTS: { status: 409, message: "carve is already under legal hold; the hold in place is kept" },
  IMPORT_TOO_LARGE: { status: 413, message: "imported file exceeds the configured maximum size" },
  IMPORT_HASH_MISMATCH: { status: 422, message: "imported file does not match the expected sha256; nothing was kept" },
  IMPORT_EMPTY: { status: 400, message: "imported file is empty" },
  IMPORT_ABORTED: { status: 400, message: "the upload ended before the whole file arrived; nothing was kept" },
  // responder API: the multipart import request (POST /api/v1/carves/import)
  IMPORT_NOT_MULTIPART: { status: 415, message: "an import must be sent as multipart/form-data (curl -F)" },
  IMPORT_MALFORMED: { status: 400, message: "the multipart body is malformed; nothing was kept" },
  IMPORT_FILE_MISSING: { status: 400, message: "the import has no file part (curl -F file=@<path>)" },
  IMPORT_TOO_MANY_FILES: { status: 400, message: "an import takes exactly one file part; nothing was kept" },
  IMPORT_UNKNOWN_FIELD: { status: 400, message: "unknown form field (allowed: source_host, original_path, description, sha256, file)" },
  IMPORT_FIELD_INVALID: { status: 400, message: "invalid form field" },
  IMPORT_FIELD_AFTER_FILE: { status: 400, message: "form fields must come before the file part (with curl, put -F file=@... last); nothing was kept" },
  // responder API: verification against the host's carves.sha256
  INVALID_SHA256: { status: 400, message: "sha256 must be 64 hexadecimal digits" },
  HOST_SHA256_UNAVAILABLE: {
    status: 422,
    message: "the host recorded sha256 -1: osquery does not hash an archive larger than its --read_max, so there is nothing to compare",
  },
  // responder API: authorization (Vault)
  TOKEN_MISSING: { status: 401, message: "no Vault token: send it in X-Vault-Token or Authorization: Bearer" },
  TOKEN_INVALID: { status: 401, message: "Vault token is invalid, expired or revoked" },
  ACCESS_DENIED: { status: 403, message: "the Vault token does not grant this action" },
  VAULT_UNAVAILABLE: { status: 503, message: "Vault is unreachable, sealed or too slow; try again later" },
  VAULT_NOT_CONFIGURED: { status: 503, message: "responder API disabled: no Vault address configured (VAULT_ADDR)" },
  // responder API: archives
  RANGE_NOT_SATISFIABLE: { status: 416, message: "requested byte range lies outside the archive" },
  ARCHIVE_NOT_TAR: { status: 422, message: "the carve's archive is not a readable tar" },
  MEMBER_NOT_FOUND: { status: 404, message: "no member with this index in the carve's file listing" },
  MEMBER_NOT_A_FILE: { status: 422, message: "only regular files have content to download" },
  // server side
  STORAGE_UNAVAILABLE: { status: 503, message: "storage temporarily unavailable" },
  SHUTTING_DOWN: { status: 503, message: "service is shutting down" },
  INTERNAL: { status: 500, message: "internal error" },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERROR_CODES;

export class AppError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  /** Extra detail that is safe to show to the client (never secrets, never raw backend errors). */
  readonly detail: string | undefined;

  constructor(code: ErrorCode, detail?: string, options?: { cause?: unknown }) {
    const base = ERROR_CODES[code];
    super(detail === undefined ? base.message : `${base.message}: ${detail}`, options);
    this.name = "AppError";
    this.code = code;
    this.status = base.status;
    this.detail = detail;
  }

  /** The message a client may see. */
  get publicMessage(): string {
    return this.message;
  }
}

export function isAppError(err: unknown): err is AppError {
  return err instanceof AppError;
}

export interface SafeErrorFields {
  name?: string;
  code?: string | number;
  message?: string;
  cause?: SafeErrorFields;
}

/**
 * Reduces an unknown error to fields that are safe to log (no request configs, no headers, no bodies), and its
 * causes the same way (a few levels): a STORAGE_UNAVAILABLE then says what failed underneath (EACCES, a malformed
 * database, a closed connection), which the operator needs and the client never sees.
 */
export function safeErrorFields(err: unknown, depth = 0): SafeErrorFields {
  let fields: SafeErrorFields;
  if (err instanceof AppError) fields = { name: err.name, code: err.code, message: err.message };
  else if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    fields = {
      name: err.name,
      ...(typeof code === "string" || typeof code === "number" ? { code } : {}),
      message: err.message,
    };
  } else return { message: String(err) };
  if (err.cause !== undefined && depth < 3) fields.cause = safeErrorFields(err.cause, depth + 1);
  return fields;
}

/** An error and its causes in one line, for messages to a terminal: "storage temporarily unavailable: open x: EACCES ...". */
export function describeError(err: unknown): string {
  const parts: string[] = [];
  for (let f: SafeErrorFields | undefined = safeErrorFields(err); f; f = f.cause) if (f.message) parts.push(f.message);
  return parts.join(": ") || "unknown error";
}

/** Whether an error (or one of its causes) is storage that ran out of space: ENOSPC from the kernel, SQLITE_FULL. */
export function isStorageFull(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (code === "ENOSPC" || code === "SQLITE_FULL" || code === "EDQUOT") return true;
  }
  return false;
}
