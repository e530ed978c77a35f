/**
 * The table of the responder API's operations: path, parameters, request body, and every status with its
 * reply schema and headers, built from the schemas of api-contract.ts. The OpenAPI document (openapi.ts) is
 * generated from it; test/http/openapi-contract.test.ts checks that every entry is there.
 */
import { z } from "zod";
import { ERROR_CODES } from "../errors.js";
import {
  archiveQuery,
  auditPageSchema,
  auditQuery,
  carveDetailSchema,
  carveListSchema,
  carvePath,
  codesWithStatus,
  deleteResultSchema,
  errorSchema,
  fileRequestBody,
  filesListingSchema,
  holdRequestSchema,
  holdResultSchema,
  importFormSchema,
  listCarvesQuery,
  MEMBER_SHA256_HEADER,
  memberPath,
  noQuery,
  sha256Hex,
  verifyRequestSchema,
  verifyResultSchema,
} from "./api-contract.js";

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
