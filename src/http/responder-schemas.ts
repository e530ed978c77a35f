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
