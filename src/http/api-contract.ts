/**
 * The responder API as a contract: the shape of every reply (zod schemas, strict: a field the contract does
 * not name is a violation) and the table of operations with their parameters, bodies, statuses and headers.
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

const sha256Hex = named("Sha256", z.string().regex(/^[0-9a-f]{64}$/), "A SHA-256, 64 lower-case hex digits.");
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

// --- headers ------------------------------------------------------------------------------------------------
export interface ContractHeader {
  schema: z.ZodType;
  description: string;
  required?: boolean;
}
const h = (schema: z.ZodType, description: string, required = true): ContractHeader => ({ schema, description, required });
const requestIdHeader = h(z.string(), "The request id, also in the error body and the service's log lines.");
const noStore = h(z.literal("no-store"), "Evidence and its metadata: no shared cache may keep them.");
const apiHeaders = { "X-Request-Id": requestIdHeader, "Cache-Control": noStore };
const downloadHeaders = {
  ...apiHeaders,
  "Content-Disposition": h(z.string().regex(/^attachment; filename="[^"\\]+"/), "attachment; filename=\"...\" (a safe name)"),
  "X-Content-Type-Options": h(z.literal("nosniff"), "The bytes are evidence, never to be rendered."),
};
const contentLength = h(z.string().regex(/^\d+$/), "Bytes in the body.");
const etag = h(z.string().regex(/^"[0-9a-f]{64}"$/), 'The archive\'s SHA-256 in quotes: a strong validator for If-Range.', false);
const contentRange = h(z.string().regex(/^bytes \d+-\d+\/\d+$/), "The bytes sent: bytes <first>-<last>/<size>.");

// --- operations ---------------------------------------------------------------------------------------------
export type HttpMethod = "get" | "head" | "put" | "post" | "delete";

export interface ContractResponse {
  description: string;
  /** An application/json body of this shape. */
  json?: z.ZodType;
  /** Byte bodies of these media types. */
  bytes?: readonly string[];
  headers?: Record<string, ContractHeader>;
}

export interface ContractOperation {
  operationId: string;
  method: HttpMethod;
  /** OpenAPI path template. */
  path: string;
  summary: string;
  description?: string;
  tag: "carves" | "files" | "custody" | "audit" | "meta";
  /** "vault": X-Vault-Token or Bearer; "body": the token travels in the JSON body (/file_request); "none". */
  auth: "vault" | "body" | "none";
  pathParams?: z.ZodObject;
  query?: z.ZodObject;
  requestHeaders?: Record<string, ContractHeader>;
  body?: { mediaType: string; schema: z.ZodType };
  responses: Partial<Record<number, ContractResponse>>;
  deprecated?: boolean;
}

type Responses = ContractOperation["responses"];

/** The error replies of these statuses, each with its headers (401 adds WWW-Authenticate). */
function errors(method: HttpMethod, ...statuses: number[]): Responses {
  const out: Responses = {};
  for (const status of [...statuses, 500]) {
    const headers: Record<string, ContractHeader> = { ...apiHeaders };
    if (status === 401) headers["WWW-Authenticate"] = h(z.string().regex(/^Bearer /), 'Bearer realm="osquery-carve-server"');
    if (status === 416) headers["Content-Range"] = h(z.string().regex(/^bytes \*\/\d+$/), "bytes */<size of the archive>");
    const text = ERROR_CODES[codesWithStatus(status)[0] ?? "INTERNAL"].message;
    out[status] = { description: `${codesWithStatus(status).join(", ")}: ${text}`, ...(method === "head" ? {} : { json: errorSchema(status) }), headers };
  }
  return out;
}

// Any value is accepted: HTTP has a server ignore a Range it cannot honour (the whole archive, 200).
const rangeHeaders = {
  Range: h(z.string(), "One byte range, bytes=<first>-[<last>] or bytes=-<suffix>; several ranges or a malformed one get the whole archive.", false),
  "If-Range": h(z.string(), 'The ETag ("<sha256>") or Last-Modified date: the range is honoured only if it still matches.', false),
};

function archiveOperation(method: "get" | "head"): ContractOperation {
  const body = method === "get" ? { bytes: ["application/x-tar", "application/zstd"] } : {};
  return {
    operationId: method === "get" ? "downloadArchive" : "headArchive",
    method,
    path: "/api/v1/carves/{carve_id}/archive",
    summary: method === "get" ? "Download a complete carve's archive" : "The archive's headers, without its bytes",
    description:
      "Streams the archive as uploaded (format=raw), with ETag, Last-Modified and single byte ranges; format=tar decompresses a zstd carve on the fly (chunked, no ranges, no ETag).",
    tag: "carves",
    auth: "vault",
    pathParams: carvePath,
    query: archiveQuery,
    requestHeaders: rangeHeaders,
    responses: {
      200: {
        description: "The whole archive.",
        ...body,
        headers: { ...downloadHeaders, "Content-Length": { ...contentLength, required: false }, ETag: etag, "Accept-Ranges": h(z.enum(["bytes", "none"]), "bytes, or none with format=tar on a zstd carve") },
      },
      206: {
        description: "One byte range of the archive.",
        ...body,
        headers: { ...downloadHeaders, "Content-Length": contentLength, "Content-Range": contentRange, ETag: { ...etag, required: true } },
      },
      ...errors(method, 400, 401, 403, 404, 409, 416, 503),
    },
  };
}

function memberOperation(method: "get" | "head"): ContractOperation {
  return {
    operationId: method === "get" ? "downloadFile" : "headFile",
    method,
    path: "/api/v1/carves/{carve_id}/files/{n}",
    summary: method === "get" ? "Download one file out of the archive" : "One file's headers, without its bytes",
    description:
      "Streams the content of member n (its index in GET .../files) out of a .tar or .tar.zst archive, without temporary files. Its SHA-256 (from the files listing, re-checked while the bytes stream: a mismatch cuts the connection before the last bytes) is in X-Content-SHA256 and Repr-Digest. Audited as carve.download.",
    tag: "files",
    auth: "vault",
    pathParams: memberPath,
    query: noQuery,
    responses: {
      200: {
        description: "The file's content.",
        ...(method === "get" ? { bytes: ["application/octet-stream"] } : {}),
        headers: {
          ...downloadHeaders,
          "Content-Length": contentLength,
          [MEMBER_SHA256_HEADER]: h(sha256Hex, "SHA-256 of the content, hex."),
          "Repr-Digest": h(z.string().regex(/^sha-256=:[A-Za-z0-9+/]{43}=:$/), "RFC 9530: sha-256=:<base64>:"),
        },
      },
      ...errors(method, 400, 401, 403, 404, 409, 422, 503),
    },
  };
}

export const operations: readonly ContractOperation[] = [
  {
    operationId: "listCarves",
    method: "get",
    path: "/api/v1/carves",
    summary: "List carves, newest first",
    tag: "carves",
    auth: "vault",
    query: listCarvesQuery,
    responses: { 200: { description: "A page of carves.", json: carveListSchema, headers: apiHeaders }, ...errors("get", 400, 401, 403, 503) },
  },
  {
    operationId: "getCarve",
    method: "get",
    path: "/api/v1/carves/{carve_id}",
    summary: "One carve's metadata",
    tag: "carves",
    auth: "vault",
    pathParams: carvePath,
    query: noQuery,
    responses: { 200: { description: "The carve.", json: carveDetailSchema, headers: apiHeaders }, ...errors("get", 400, 401, 403, 404, 503) },
  },
  {
    operationId: "deleteCarve",
    method: "delete",
    path: "/api/v1/carves/{carve_id}",
    summary: "Delete a carve (admin); refused under a legal hold",
    tag: "custody",
    auth: "vault",
    pathParams: carvePath,
    query: noQuery,
    responses: { 200: { description: "Deleted.", json: deleteResultSchema, headers: apiHeaders }, ...errors("delete", 400, 401, 403, 404, 409, 503) },
  },
  archiveOperation("get"),
  archiveOperation("head"),
  {
    operationId: "listFiles",
    method: "get",
    path: "/api/v1/carves/{carve_id}/files",
    summary: "The files inside a complete carve's archive",
    tag: "files",
    auth: "vault",
    pathParams: carvePath,
    query: noQuery,
    responses: { 200: { description: "The listing.", json: filesListingSchema, headers: apiHeaders }, ...errors("get", 400, 401, 403, 404, 409, 422, 503) },
  },
  memberOperation("get"),
  memberOperation("head"),
  {
    operationId: "placeHold",
    method: "put",
    path: "/api/v1/carves/{carve_id}/hold",
    summary: "Place a legal hold (admin); a held carve keeps its hold (409 HOLD_EXISTS)",
    tag: "custody",
    auth: "vault",
    pathParams: carvePath,
    query: noQuery,
    body: { mediaType: "application/json", schema: holdRequestSchema },
    responses: { 200: { description: "Held.", json: holdResultSchema, headers: apiHeaders }, ...errors("put", 400, 401, 403, 404, 409, 413, 503) },
  },
  {
    operationId: "releaseHold",
    method: "delete",
    path: "/api/v1/carves/{carve_id}/hold",
    summary: "Lift a legal hold (admin)",
    tag: "custody",
    auth: "vault",
    pathParams: carvePath,
    query: noQuery,
    responses: { 200: { description: "Not held.", json: holdResultSchema, headers: apiHeaders }, ...errors("delete", 400, 401, 403, 404, 503) },
  },
  {
    operationId: "importCarve",
    method: "post",
    path: "/api/v1/carves/import",
    summary: "Import an archive collected out of band (import right)",
    tag: "custody",
    auth: "vault",
    query: noQuery,
    body: { mediaType: "multipart/form-data", schema: importFormSchema },
    responses: {
      201: { description: "Imported: the new carve.", json: carveDetailSchema, headers: { ...apiHeaders, Location: h(z.string().regex(/^\/api\/v1\/carves\//), "The new carve's metadata.") } },
      ...errors("post", 400, 401, 403, 409, 413, 415, 422, 503),
    },
  },
  {
    operationId: "verifyCarve",
    method: "post",
    path: "/api/v1/carves/{carve_id}/verify",
    summary: "Compare the stored SHA-256 with the host's carves.sha256",
    tag: "custody",
    auth: "vault",
    pathParams: carvePath,
    query: noQuery,
    body: { mediaType: "application/json", schema: verifyRequestSchema },
    responses: { 200: { description: "The comparison (recorded).", json: verifyResultSchema, headers: apiHeaders }, ...errors("post", 400, 401, 403, 404, 409, 413, 422, 503) },
  },
  {
    operationId: "listAudit",
    method: "get",
    path: "/api/v1/audit",
    summary: "The audit trail (admin)",
    tag: "audit",
    auth: "vault",
    query: auditQuery,
    responses: { 200: { description: "A page of events.", json: auditPageSchema, headers: apiHeaders }, ...errors("get", 400, 401, 403, 503) },
  },
  {
    operationId: "getOpenApi",
    method: "get",
    path: "/api/v1/openapi.json",
    summary: "This document (no token needed)",
    tag: "meta",
    auth: "none",
    responses: { 200: { description: "The OpenAPI 3.1 document.", json: z.looseObject({ openapi: z.literal("3.1.0") }) } },
  },
  {
    operationId: "fileRequest",
    method: "post",
    path: "/file_request",
    summary: "The seed server's download call (token in the body); prefer GET .../archive",
    tag: "carves",
    auth: "body",
    body: { mediaType: "application/json", schema: fileRequestBody },
    deprecated: true,
    responses: {
      200: { description: "The whole archive.", bytes: ["application/x-tar", "application/zstd"], headers: { ...downloadHeaders, "Content-Length": contentLength, ETag: { ...etag, required: true } } },
      206: { description: "One byte range (Range honoured as by GET .../archive).", bytes: ["application/x-tar", "application/zstd"], headers: { ...downloadHeaders, "Content-Range": contentRange } },
      ...errors("post", 400, 401, 403, 404, 409, 413, 416, 503),
    },
  },
];

/** The operation answering `method` on a concrete path (/api/v1/carves/abc/files/3), if any. */
export function findOperation(method: string, concretePath: string): ContractOperation | undefined {
  const m = method.toLowerCase();
  return operations.find((op) => {
    if (op.method !== m) return false;
    const pattern = new RegExp(`^${op.path.replace(/\{[^}]+\}/g, "[^/]+")}$`);
    return pattern.test(concretePath) && !(op.path.endsWith("{carve_id}") && concretePath === "/api/v1/carves/import");
  });
}

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
