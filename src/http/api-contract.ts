/**
 * The responder API as a contract: the shape of every reply (zod schemas, strict: a field the contract does
 * not name is a violation), and the request schemas the operation table (api-operations.ts) names.
 * The OpenAPI document (src/http/openapi.ts), the tests that check real replies, and the types of the typed
 * client (src/client/api-client.ts, which imports types only) all come from here; request parameters reuse
 * the schemas the routes validate with (responder-schemas.ts).
 *
 * Depends on zod and plain data only (no Node API), like everything it imports: the web console can use it.
 */
import { z } from "zod";
import { ERROR_CODES, type ErrorCode } from "../errors.js";
import {
  archiveQuery,
  auditQuery,
  CARVE_ID,
  DEFAULT_PAGE,
  fileRequestBody,
  IMPORT_FIELDS,
  IMPORT_FILE_FIELD,
  listCarvesQuery,
  MAX_PAGE,
  noQuery,
} from "./responder-schemas.js";

/** info.version of the OpenAPI document: the contract's own version, bumped when the contract changes. */
export const API_VERSION = "1.1.0";
/** The carve id the document uses as its example (the contract fuzzing run creates a carve with it). */
export const EXAMPLE_CARVE_ID = "8c1c3f1e-6a4d-4f41-9d2b-2f7f7f0f5a10";
/** Header with the hex SHA-256 of a single file's content (RFC 9530 Repr-Digest carries it too). */
export const MEMBER_SHA256_HEADER = "X-Content-SHA256";

/** Every named schema, for the document's components. */
export const contractRegistry = z.registry<{ id: string; description?: string }>();
function named<T extends z.ZodType>(id: string, schema: T, description?: string): T {
  contractRegistry.add(schema, { id, ...(description ? { description } : {}) });
  return schema;
}

export const sha256Hex = named("Sha256", z.string().regex(/^[0-9a-f]{64}$/), "A SHA-256, 64 lower-case hex digits.");
const instant = named("Instant", z.iso.datetime(), "An instant in UTC, as Date#toISOString writes it.");
const count = z.int().nonnegative();
const nullable = <T extends z.ZodType>(schema: T): z.ZodNullable<T> => schema.nullable();

// --- carves -------------------------------------------------------------------------------------------------
export const certificateSchema = named(
  "Certificate",
  z.strictObject({ subjectDn: z.string(), fingerprintSha256: z.string(), source: z.enum(["proxy", "tls"]) }),
  "A verified TLS client certificate.",
);

export const holdSchema = named("Hold", z.strictObject({ by: z.string(), reason: z.string(), at: instant }), "A legal hold.");

const carveSummaryShape = {
  carveId: z.string().regex(CARVE_ID),
  requestId: z.string(),
  status: z.enum(["receiving", "incomplete", "complete"]),
  carveSize: count,
  blockSize: count,
  blockCount: count,
  blocksReceived: count,
  bytesReceived: count,
  blocksMissing: count,
  sha256: nullable(sha256Hex),
  compression: nullable(z.enum(["zstd", "none"])),
  node: z.strictObject({ nodeKeySha256Prefix: nullable(z.string().regex(/^[0-9a-f]{16}$/)) }),
  agent: z.strictObject({ address: nullable(z.string()), userAgent: nullable(z.string()), certificate: nullable(certificateSchema) }),
  createdAt: instant,
  updatedAt: instant,
  completedAt: nullable(instant),
  idleSeconds: nullable(count),
  origin: z.enum(["agent", "import"]),
  lastVerification: nullable(z.strictObject({ match: z.boolean(), by: nullable(z.string()), at: instant, count })),
  hold: nullable(holdSchema),
  expiresAt: nullable(instant),
};

export const carveSummarySchema = named("CarveSummary", z.strictObject(carveSummaryShape), "A carve as the list shows it.");

export const carveDetailSchema = named(
  "CarveDetail",
  z.strictObject({
    ...carveSummaryShape,
    missingBlockIds: z.array(count),
    incompleteAfterSeconds: count,
    imported: nullable(
      z.strictObject({
        host: nullable(z.string()),
        originalPath: nullable(z.string()),
        description: nullable(z.string()),
        importedBy: z.strictObject({ displayName: nullable(z.string()), entityId: nullable(z.string()) }),
      }),
    ),
    verifications: z.array(z.strictObject({ claimedSha256: sha256Hex, match: z.boolean(), by: nullable(z.string()), at: instant })),
    archive: nullable(
      z.strictObject({
        fileName: z.string(),
        contentType: z.enum(["application/x-tar", "application/zstd"]),
        size: count,
        url: z.string(),
        tarUrl: z.string().optional(),
        filesUrl: z.string(),
      }),
    ),
  }),
  "One carve's metadata: the summary plus missing block ids, verifications and where to download it.",
);

export const carveListSchema = named(
  "CarveList",
  z.strictObject({ carves: z.array(carveSummarySchema), nextCursor: nullable(z.string()) }),
  "A page of carves, newest first; nextCursor null on the last page.",
);

// --- files --------------------------------------------------------------------------------------------------
export const tarMemberSchema = named(
  "TarMember",
  z.strictObject({
    name: z.string(),
    path: nullable(z.string()),
    type: z.enum(["file", "directory", "symlink", "hardlink", "other"]),
    typeflag: z.string().max(1),
    size: count,
    mode: z.string().regex(/^[0-7]{4}$/),
    uid: count,
    gid: count,
    uname: nullable(z.string()),
    gname: nullable(z.string()),
    // ISO 8601 as Date#toISOString writes it: a tar may carry a year past 9999 (+010000-...), which RFC 3339
    // date-time cannot express.
    mtime: z.string().regex(/^([+-]\d{6}|\d{4})-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/),
    linkTarget: nullable(z.string()),
    sha256: nullable(sha256Hex),
  }),
  "A member of the archive; its position in `members` is the n of GET .../files/{n}.",
);

export const filesListingSchema = named(
  "FilesListing",
  z.strictObject({
    carveId: z.string(),
    sha256: nullable(sha256Hex),
    compression: nullable(z.enum(["zstd", "none"])),
    memberCount: count,
    truncated: z.boolean(),
    truncatedReason: nullable(
      z.enum(["max-members", "max-bytes-examined", "max-name-bytes", "extended-header-too-large", "too-many-pax-keys"]),
    ),
    endOfArchive: z.boolean(),
    members: z.array(tarMemberSchema),
  }),
  "The files inside a complete carve's archive, each regular file with the SHA-256 of its content.",
);

// --- custody ------------------------------------------------------------------------------------------------
export const deleteResultSchema = named(
  "DeleteResult",
  z.strictObject({ deleted: z.boolean(), carveId: z.string(), bytesFreed: count }),
);
export const holdResultSchema = named("HoldResult", z.strictObject({ carveId: z.string(), hold: nullable(holdSchema) }));
export const verifyResultSchema = named(
  "VerifyResult",
  z.strictObject({ carveId: z.string(), match: z.boolean(), storedSha256: sha256Hex, claimedSha256: sha256Hex }),
);

const scalar = z.union([z.string(), z.number(), z.boolean(), z.null()]);
export const auditEventSchema = named(
  "AuditEvent",
  z.strictObject({
    id: z.string(),
    at: instant,
    action: z.string(),
    result: z.enum(["allowed", "denied", "not-found", "error"]),
    actor: z.strictObject({ displayName: nullable(z.string()), entityId: nullable(z.string()), tokenFingerprint: nullable(z.string()) }),
    client: z.strictObject({ address: nullable(z.string()), certificateSubject: nullable(z.string()), requestId: nullable(z.string()) }),
    carveId: nullable(z.string()),
    detail: z.record(z.string(), scalar),
  }),
  "One audited request.",
);
export const auditPageSchema = named(
  "AuditPage",
  z.strictObject({ events: z.array(auditEventSchema), nextCursor: nullable(z.string()) }),
  "A page of audit events, newest first.",
);

// --- errors -------------------------------------------------------------------------------------------------
/** Error codes answered with this HTTP status (the registry in src/errors.ts decides). */
export function codesWithStatus(status: number): ErrorCode[] {
  return (Object.keys(ERROR_CODES) as ErrorCode[]).filter((c) => ERROR_CODES[c].status === status);
}

const errorSchemas = new Map<number, z.ZodType>();
/** `{"error": {"code", "message", "requestId"}}` with the codes of one status. */
export function errorSchema(status: number): z.ZodType {
  let schema = errorSchemas.get(status);
  if (!schema) {
    const codes = codesWithStatus(status);
    if (codes.length === 0) throw new Error(`no error code has status ${status}`);
    schema = named(
      `Error${status}`,
      z.strictObject({
        error: z.strictObject({ code: z.enum(codes as [ErrorCode, ...ErrorCode[]]), message: z.string(), requestId: z.string() }),
      }),
      `The error reply of status ${status}.`,
    );
    errorSchemas.set(status, schema);
  }
  return schema;
}

// --- request bodies the routes parse by hand (described here; inline in the document, read as input) -------
export const holdRequestSchema = z
  .object({
    reason: z
      .string()
      .min(1)
      .max(1000)
      // eslint-disable-next-line no-control-regex -- exactly the characters hold-routes.ts refuses
      .regex(/^[^\u0000-\u001f\u007f-\u009f]*\S[^\u0000-\u001f\u007f-\u009f]*$/),
  })
  .meta({ description: "Why the carve is held: 1 to 1000 characters, not only spaces, no control characters." });
export const verifyRequestSchema = z
  .strictObject({ sha256: z.string().regex(/^[0-9a-fA-F]{64}$/) })
  .meta({ description: "The host's carves.sha256 (-1, osquery's value for an archive it did not hash, is answered 422)." });
const importFields = Object.fromEntries(
  Object.entries(IMPORT_FIELDS).map(([name, max]) => [name, z.string().max(max).optional()]),
) as Record<keyof typeof IMPORT_FIELDS, z.ZodOptional<z.ZodString>>;
export const importFormSchema = z
  .strictObject({
    ...importFields,
    sha256: z.string().regex(/^[0-9a-fA-F]{64}$/).optional(),
    [IMPORT_FILE_FIELD]: z.string().meta({ contentMediaType: "application/octet-stream" }),
  })
  .meta({ description: "multipart/form-data: the fields first, then the one file part (curl -F file=@<path>)." });
/** Query parameters whose wire form (a string) says less than what the route accepts. */
export const parameterOverrides = new Map<z.ZodType, Record<string, unknown>>([
  [listCarvesQuery.shape.limit, { type: "integer", minimum: 1, maximum: MAX_PAGE, default: DEFAULT_PAGE }],
  [auditQuery.shape.limit, { type: "integer", minimum: 1, maximum: MAX_PAGE, default: DEFAULT_PAGE }],
]);
export const memberPath = z.strictObject({
  carve_id: z.string().regex(CARVE_ID),
  n: z.string().regex(/^\d{1,9}$/, "a member index: 0 for the first member of the files listing").transform(Number),
});
export const carvePath = z.strictObject({ carve_id: z.string().regex(CARVE_ID) });
export { archiveQuery, auditQuery, fileRequestBody, listCarvesQuery, noQuery };

export type CarveSummary = z.output<typeof carveSummarySchema>;
export type CarveDetail = z.output<typeof carveDetailSchema>;
export type CarveList = z.output<typeof carveListSchema>;
export type TarMemberView = z.output<typeof tarMemberSchema>;
export type FilesListingView = z.output<typeof filesListingSchema>;
export type DeleteResult = z.output<typeof deleteResultSchema>;
export type HoldResult = z.output<typeof holdResultSchema>;
export type VerifyResult = z.output<typeof verifyResultSchema>;
export type AuditEventView = z.output<typeof auditEventSchema>;
export type AuditPageView = z.output<typeof auditPageSchema>;
export interface ErrorBody {
  error: { code: ErrorCode; message: string; requestId: string };
}
export type ListCarvesParams = z.input<typeof listCarvesQuery>;
export type AuditParams = z.input<typeof auditQuery>;
