import { z } from "zod";
import { AppError } from "../errors.js";

/** Same rule the stores apply before an id touches a path (or a Vault path, here). */
export const CARVE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export const MAX_PAGE = 500;
export const DEFAULT_PAGE = 100;

/** 2024-05-01, or a date-time with Z or an offset (a time without a zone would be ambiguous). */
const isoInstant = z
  .string()
  .regex(
    /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2}))?$/,
    "an ISO 8601 date (2024-05-01) or date-time with zone (2024-05-01T12:00:00Z)",
  )
  .transform((s, ctx) => {
    const d = new Date(s);
    if (Number.isNaN(d.getTime())) {
      ctx.addIssue({ code: "custom", message: "not a valid date" });
      return z.NEVER;
    }
    return d;
  });

const limit = z
  .string()
  .regex(/^\d{1,4}$/, `an integer from 1 to ${MAX_PAGE}`)
  .transform(Number)
  .refine((n) => n >= 1 && n <= MAX_PAGE, { message: `an integer from 1 to ${MAX_PAGE}` })
  .default(DEFAULT_PAGE);

const cursor = z.string().min(1).max(1024);

/** GET /api/v1/carves */
export const listCarvesQuery = z.strictObject({
  status: z.enum(["receiving", "complete"]).optional(),
  /** Hex prefix (8 to 64 characters) of the SHA-256 of the node key, as shown in a carve's metadata. */
  node: z
    .string()
    .regex(/^[0-9a-fA-F]{8,64}$/, "8 to 64 hex digits of the node key's SHA-256 (see nodeKeySha256Prefix)")
    .transform((s) => s.toLowerCase())
    .optional(),
  since: isoInstant.optional(),
  until: isoInstant.optional(),
  limit,
  cursor: cursor.optional(),
});

/** GET /api/v1/carves/:carve_id/archive */
export const archiveQuery = z.strictObject({
  /** raw (default): the stored archive as uploaded; tar: a zstd carve decompressed on the fly. */
  format: z.enum(["raw", "tar"]).default("raw"),
});

/** GET /api/v1/carves/:carve_id and /files: no parameters. */
export const noQuery = z.strictObject({});

/** GET /api/v1/audit */
export const auditQuery = z.strictObject({
  carve_id: z.string().regex(CARVE_ID, "a carve id").optional(),
  action: z
    .string()
    .regex(/^[a-z]+\.[a-z]+$/, "an audit action such as carve.download")
    .optional(),
  since: isoInstant.optional(),
  until: isoInstant.optional(),
  limit,
  cursor: cursor.optional(),
});

/** POST /file_request: the seed server's body. The accessor is accepted and ignored. */
export const fileRequestBody = z.object({
  file_carve_guid: z.string().min(1).max(256),
  token: z.string().max(4096).default(""),
  token_accessor: z.string().max(4096).optional(),
});

/**
 * The form fields an import accepts besides the file part, with the longest value allowed (characters).
 * Everything else is refused: a typo (`source-host`) must not silently lose the chain-of-custody note.
 */
export const IMPORT_FIELDS = { source_host: 255, original_path: 4096, description: 4000, sha256: 64 } as const;
/** The one file part's field name: `curl -F file=@evidence.tar`. */
export const IMPORT_FILE_FIELD = "file";

/**
 * Validates a query (or body) object.
 * @throws AppError INVALID_QUERY naming every bad parameter (never echoing its value).
 */
export function parseWith<S extends z.ZodType>(schema: S, input: unknown): z.output<S> {
  const result = schema.safeParse(input ?? {});
  if (result.success) return result.data;
  const problems = result.error.issues.map((i) => {
    if (i.code === "unrecognized_keys") return `unknown parameter(s) ${i.keys.join(", ")}`;
    const where = i.path.join(".") || "(query)";
    return `${where}: ${i.message}`;
  });
  throw new AppError("INVALID_QUERY", problems.join("; "));
}

/** A client-chosen name as it may appear in a message or the audit trail: printable and short. */
export function shown(name: string, max = 64): string {
  const clean = name.replace(/[^\x20-\x7e]/g, "?");
  return JSON.stringify(clean.length > max ? `${clean.slice(0, max)}...` : clean);
}

export const SHA256_HEX = /^[0-9a-fA-F]{64}$/;
/** osquery's carves.sha256 when the archive is larger than --read_max (carver.cpp: it skips hashing). */
export const HOST_NOT_HASHED = "-1";

/** Control characters (NUL included) have no place in a reason that is shown, logged and exported. */
function hasControlCharacter(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x20 || (c >= 0x7f && c <= 0x9f)) return true;
  }
  return false;
}

/**
 * PUT /api/v1/carves/:carve_id/hold: `{"reason": "..."}` (an empty body reads as `{}`). Returns the reason,
 * trimmed. @throws AppError INVALID_QUERY
 */
/** A request body's bytes, as far as these parsers need them (no Node type: the browser client imports this module). */
export interface BodyBytes {
  toString(encoding: "utf8"): string;
}

export function holdReasonOf(body: BodyBytes): string {
  let reason: unknown;
  try {
    reason = (JSON.parse(body.toString("utf8") || "{}") as { reason?: unknown }).reason;
  } catch {
    throw new AppError("INVALID_QUERY", 'body must be JSON: {"reason": "..."}');
  }
  if (typeof reason !== "string" || reason.trim() === "" || reason.length > 1000) {
    throw new AppError("INVALID_QUERY", 'a hold needs {"reason": "<1-1000 characters>"}');
  }
  if (hasControlCharacter(reason)) throw new AppError("INVALID_QUERY", "a hold reason must not contain control characters");
  return reason.trim();
}

/**
 * POST /api/v1/carves/:carve_id/verify: `{"sha256": "<64 hex>"}` as the host's carves table shows it. Returns
 * it in lower case. @throws AppError INVALID_JSON, INVALID_QUERY (another field), INVALID_SHA256,
 *   HOST_SHA256_UNAVAILABLE (the host recorded -1)
 */
export function claimedSha256Of(body: BodyBytes): string {
  let json: unknown;
  try {
    json = JSON.parse(body.toString("utf8"));
  } catch {
    throw new AppError("INVALID_JSON", 'expected {"sha256": "<the host\'s carves.sha256>"}');
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new AppError("INVALID_JSON", 'expected {"sha256": "<the host\'s carves.sha256>"}');
  }
  const unknown = Object.keys(json).filter((k) => k !== "sha256");
  if (unknown.length > 0) throw new AppError("INVALID_QUERY", `unknown field(s) ${unknown.map((k) => shown(k)).join(", ")}`);
  const raw = (json as { sha256?: unknown }).sha256;
  // osquery's carves.sha256 is text; fleet managers may turn -1 into a number.
  const value = typeof raw === "number" ? String(raw) : raw;
  if (typeof value !== "string") throw new AppError("INVALID_SHA256", 'missing: send {"sha256": "..."}');
  const claimed = value.trim();
  if (claimed === HOST_NOT_HASHED) throw new AppError("HOST_SHA256_UNAVAILABLE");
  if (claimed === "") throw new AppError("INVALID_SHA256", "empty (the host has not hashed the archive yet)");
  if (!SHA256_HEX.test(claimed)) throw new AppError("INVALID_SHA256");
  return claimed.toLowerCase();
}
