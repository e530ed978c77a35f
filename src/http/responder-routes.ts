import type { IncomingMessage } from "node:http";
import { pipeline } from "node:stream/promises";
import { sendRange } from "./send-archive.js";
import express, { type Request, type RequestHandler, type Response, type Router } from "express";
import type { AuthQuestion, Authorizer } from "../auth/authorizer.js";
import { tokenFromHeaders } from "../auth/token.js";
import { TarFormatError, type ListingLimits } from "../carves/tar-listing.js";
import { zstdDecompress, ZstdFormatError } from "../carves/zstd-stream.js";
import { FilesLister } from "./files-listing.js";
import { AppError, isAppError, safeErrorFields, type ErrorCode } from "../errors.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import type { AuditActor, AuditEvent, ByteRange, CarveRecord, CarveStore, ListQuery } from "../storage/carve-store.js";
import { sendJsonError } from "./app.js";
import { resolveClient, type ClientInfo } from "./client-identity.js";
import { readSmallBody } from "./body.js";
import { redactQuery } from "./logging.js";
import { ifRangeAllows, parseRangeHeader } from "./http-range.js";
import { registerHoldRoutes } from "./hold-routes.js";
import { registerImportRoutes } from "./import-routes.js";
import { registerMemberRoutes } from "./member-routes.js";
import { AuditTrail, NO_ACTOR, type AuditDetail } from "./responder-audit.js";
import {
  archiveQuery,
  auditQuery,
  CARVE_ID,
  fileRequestBody,
  listCarvesQuery,
  noQuery,
  parseWith,
} from "./responder-schemas.js";
import {
  archiveRepresentation,
  carveDetail,
  carveSummary,
  MISSING_SHOWN,
  nodeKeyMatches,
  viewStatus,
  type ExpiryPolicy,
} from "./responder-views.js";

export interface ResponderDeps {
  store: CarveStore;
  authorizer: Authorizer;
  logger: Logger;
  isTrustedProxy: (address: string | undefined) => boolean;
  /** Retention rules, to show each carve's expiry. */
  expiry?: ExpiryPolicy;
  /** Largest archive POST /api/v1/carves/import accepts (config `import.maxSize`). */
  maxImportSize: number;
  now?: () => Date;
  metrics?: Metrics | undefined;
  /** Repeated unauthenticated failures per client are audited once per window (config `audit`). */
  unauthenticatedAuditWindowMs?: number;
  /** Bounds of the files endpoint's tar listing (config `listing`). */
  listing?: Partial<ListingLimits>;
}

/** The files endpoint lists at most this many members by default (config `listing.maxMembers`). */
export const MAX_LISTED_MEMBERS = 100_000;
/** A node-filtered listing scans at most this many carves per request before returning a partial page. */
const NODE_FILTER_SCAN = 5000;
/** POST /file_request bodies are tiny JSON documents. */
const FILE_REQUEST_BODY_LIMIT = 64 * 1024;

const DENIED: ReadonlySet<ErrorCode> = new Set(["TOKEN_MISSING", "TOKEN_INVALID", "ACCESS_DENIED"]);
/** Headers describing an archive, withdrawn when an error reply replaces it. */
const REPRESENTATION_HEADERS = ["content-disposition", "etag", "last-modified", "accept-ranges", "content-range", "content-length"];

/** What one responder request's handler works with; `detail` and `result` end up in its audit event. */
export interface EndpointContext {
  req: Request;
  res: Response;
  client: ClientInfo;
  requestId: string | null;
  actor: AuditActor;
  carveId: string | null;
  detail: AuditDetail;
  result: AuditEvent["result"];
}

/** The token of a request and the question its handler needs Vault to answer. */
export interface EndpointTarget {
  token: string;
  /** null: the carve id cannot exist (the store would never accept it), nothing is asked. */
  question: AuthQuestion | null;
  carveId: string | null;
}

const headerOf = (req: IncomingMessage, name: string): string | undefined => [req.headers[name] ?? []].flat().join(", ") || undefined;

/** Authorize, run, answer errors in one JSON shape, and audit: the frame of every responder endpoint. */
export type Endpoint = (
  action: string,
  target: (req: Request) => EndpointTarget | Promise<EndpointTarget>,
  run: (ctx: EndpointContext) => Promise<void>,
) => RequestHandler;

type Ctx = EndpointContext;
type Target = EndpointTarget;

function carveTarget(req: Request, action: "read" | "delete" | "hold"): Target {
  const token = tokenFromHeaders(req.headers);
  const carveId = String(req.params.carve_id ?? "");
  if (!CARVE_ID.test(carveId)) return { token, question: null, carveId: null };
  return { token, question: { action, carveId }, carveId };
}

/**
 * The responder API: Vault-authorized listing, metadata, download, file listing and deletion of carves, the
 * audit trail, and the seed server's POST /file_request. Every request, allowed or not, leaves one audit
 * event (store + log) once its reply is finished (for downloads: with the bytes actually sent).
 */
export function responderRouter(deps: ResponderDeps): Router {
  const { store, authorizer } = deps;
  const now = deps.now ?? (() => new Date());
  const logger = deps.logger.child({ component: "responder" });
  const audit = new AuditTrail(store, deps.logger.child({ component: "audit" }), now, deps.unauthenticatedAuditWindowMs);
  const files = new FilesLister(store, { maxMembers: MAX_LISTED_MEMBERS, ...deps.listing });
  const router = express.Router();

  router.use(["/api/v1", "/file_request"], (_req, res, next) => {
    // Evidence and its metadata: no shared cache may keep them.
    res.setHeader("Cache-Control", "no-store");
    next();
  });

  function fail(ctx: Ctx, err: unknown): void {
    let appErr: AppError;
    if (isAppError(err)) appErr = err;
    else if (err instanceof TarFormatError || err instanceof ZstdFormatError) appErr = new AppError("ARCHIVE_NOT_TAR", err.message);
    else appErr = new AppError("INTERNAL", undefined, { cause: err });
    ctx.result = DENIED.has(appErr.code) ? "denied" : appErr.code === "CARVE_NOT_FOUND" ? "not-found" : "error";
    ctx.detail.code = appErr.code;
    // Vault failures were logged (safely) by the authorizer; anything else server-side is logged here.
    if (appErr.status >= 500 && !appErr.code.startsWith("VAULT_")) {
      logger.error({ err: safeErrorFields(appErr.cause ?? appErr), code: appErr.code }, "responder request failed");
    }
    const { res, req } = ctx;
    if (res.headersSent) {
      res.destroy();
      return;
    }
    for (const h of REPRESENTATION_HEADERS) if (!(h === "content-range" && appErr.code === "RANGE_NOT_SATISFIABLE")) res.removeHeader(h);
    if (appErr.status === 401) res.setHeader("WWW-Authenticate", 'Bearer realm="osquery-carve-server"');
    sendJsonError(req, res, appErr);
  }

  /** Authorize, run, answer errors in one JSON shape, and audit: the frame of every endpoint. */
  const endpoint: Endpoint = (action, target, run) => {
    return async (req: Request, res: Response): Promise<void> => {
      const ctx: Ctx = {
        req,
        res,
        client: resolveClient(req, deps.isTrustedProxy),
        requestId: typeof req.id === "string" ? req.id : null,
        actor: NO_ACTOR,
        carveId: null,
        detail: { method: req.method },
        result: "allowed",
      };
      try {
        const t = await target(req);
        ctx.carveId = t.carveId;
        if (t.token !== "") ctx.actor = { ...NO_ACTOR, tokenFingerprint: authorizer.fingerprint(t.token) };
        if (t.question === null) {
          // Nothing by that name can exist; Vault is not asked about a path built from it.
          throw new AppError(t.token === "" ? "TOKEN_MISSING" : "CARVE_NOT_FOUND");
        }
        let decision;
        try {
          decision = await authorizer.decide(t.token, undefined, t.question);
        } catch (err) {
          const code = isAppError(err) ? err.code : "";
          deps.metrics?.authDecisions.inc({ outcome: code.startsWith("TOKEN_") ? "invalid-token" : "unavailable" });
          throw err;
        }
        deps.metrics?.authDecisions.inc({ outcome: decision.allowed ? "allowed" : "denied" });
        ctx.actor = decision.actor;
        ctx.detail.authorization = decision.reason;
        ctx.detail.authorizationCached = decision.cached;
        if (!decision.allowed) throw new AppError("ACCESS_DENIED");
        await run(ctx);
      } catch (err) {
        fail(ctx, err);
      }
      ctx.detail.status = res.statusCode;
      if (typeof ctx.detail.bytesSent === "number") {
        deps.metrics?.downloads.inc({ result: ctx.detail.completed ? "complete" : "aborted" });
        deps.metrics?.bytesSent.inc(ctx.detail.bytesSent);
      }
      await audit.record({
        action,
        result: ctx.result,
        actor: ctx.actor,
        client: ctx.client,
        requestId: ctx.requestId,
        carveId: ctx.carveId,
        detail: ctx.detail,
      });
    };
  };

  /** Streams a complete carve's archive: ETag, single ranges, If-Range, optional zstd decompression. */
  async function sendArchive(ctx: Ctx, carveId: string, format: "raw" | "tar"): Promise<void> {
    const { req, res } = ctx;
    const record = await store.getCarve(carveId);
    ctx.detail.sha256 = record.sha256;
    if (record.status !== "complete" || record.sha256 === null) {
      throw new AppError(
        "CARVE_NOT_COMPLETE",
        `status ${viewStatus(record, now())}, ${record.blocksReceived} of ${record.blockCount} blocks received`,
      );
    }
    const decompress = format === "tar" && record.compression === "zstd";
    const size = record.carveSize;
    const etag = `"${record.sha256}"`;
    let range: ByteRange | undefined;
    ctx.detail.format = decompress ? "tar-from-zstd" : "raw";
    if (!decompress) {
      const rangeHeader = headerOf(req, "range");
      const requested = parseRangeHeader(rangeHeader, size);
      if (rangeHeader !== undefined) ctx.detail.rangeHeader = rangeHeader.slice(0, 100);
      if (requested.kind !== "none" && ifRangeAllows(headerOf(req, "if-range"), etag, record.completedAt)) {
        if (requested.kind === "unsatisfiable") {
          res.setHeader("Content-Range", `bytes */${size}`);
          throw new AppError("RANGE_NOT_SATISFIABLE", `the archive has ${size} bytes`);
        }
        range = { start: requested.start, end: requested.end };
      }
    }
    const head = req.method === "HEAD";
    // Opened before any header is set, so a failure here is still a clean JSON error.
    const handle = head ? null : await store.openArchive(carveId, range);

    const representation = archiveRepresentation(record, decompress);
    res.setHeader("Content-Type", representation.contentType);
    res.setHeader("Content-Disposition", `attachment; filename="${representation.fileName}"`);
    res.setHeader("X-Content-Type-Options", "nosniff");
    if (record.completedAt) res.setHeader("Last-Modified", record.completedAt.toUTCString());
    if (decompress) {
      // The tar's length is unknown until it is decompressed: chunked, no ranges, no validator.
      res.setHeader("Accept-Ranges", "none");
    } else {
      res.setHeader("Accept-Ranges", "bytes");
      res.setHeader("ETag", etag);
      if (range) {
        res.status(206);
        res.setHeader("Content-Range", `bytes ${range.start}-${range.end}/${size}`);
      }
      res.setHeader("Content-Length", String(range ? range.end - range.start + 1 : size));
      ctx.detail.rangeStart = range?.start ?? 0;
      ctx.detail.rangeEnd = range?.end ?? size - 1;
    }
    if (handle === null) {
      res.end();
      ctx.detail.bytesSent = 0;
      ctx.detail.completed = true;
      return;
    }

    let sent = 0;
    const count = async function* (source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
      for await (const chunk of source) {
        sent += chunk.length;
        yield chunk;
      }
    };
    try {
      if (decompress) await pipeline(handle.stream, zstdDecompress, count, res);
      else if (handle.readAt) {
        await sendRange(res, handle.readAt, range?.start ?? 0, range ? range.end : size - 1, (n) => (sent += n));
      } else await pipeline(handle.stream, count, res);
    } catch (err) {
      ctx.detail.bytesSent = sent;
      const prematureClose = (err as { code?: unknown }).code === "ERR_STREAM_PREMATURE_CLOSE";
      if (prematureClose && res.writableFinished) {
        // The response was ended (so the archive stream had ended) and every byte was handed to the OS, but
        // the client closed the connection before Node reported 'finish': curl does exactly that once it has
        // Content-Length bytes. A complete download, not a storage error (found by the download benchmark).
        ctx.detail.completed = true;
        return;
      }
      ctx.detail.completed = false;
      if (!res.writableFinished && (req.destroyed || prematureClose)) {
        // The client went away: not an error of ours; the audit says how far it got.
        ctx.detail.aborted = true;
        logger.info({ carveId, bytesSent: sent }, "download aborted by the client");
        return;
      }
      if (err instanceof ZstdFormatError) throw err;
      throw isAppError(err) ? err : new AppError("STORAGE_UNAVAILABLE", "archive stream failed", { cause: err });
    } finally {
      handle.stream.destroy();
    }
    ctx.detail.bytesSent = sent;
    ctx.detail.completed = true;
  }

  // --- GET /api/v1/carves ----------------------------------------------------------------------------------
  router.get(
    "/api/v1/carves",
    endpoint(
      "carve.list",
      (req) => ({ token: tokenFromHeaders(req.headers), question: { action: "list" }, carveId: null }),
      async (ctx) => {
        const q = parseWith(listCarvesQuery, ctx.req.query);
        const base: ListQuery = {
          limit: q.limit,
          ...(q.status ? { status: q.status } : {}),
          ...(q.since ? { since: q.since } : {}),
          ...(q.until ? { until: q.until } : {}),
        };
        let carves: CarveRecord[];
        let nextCursor: string | null;
        if (q.node === undefined) {
          const page = await store.listCarves({ ...base, ...(q.cursor ? { cursor: q.cursor } : {}) });
          carves = page.carves;
          nextCursor = page.nextCursor;
        } else {
          // The node key is a secret and never travels in a URL: filter by a prefix of its SHA-256. Each store
          // page asks for no more than the matches still wanted, so its cursor is always a valid resume point.
          const node = q.node;
          carves = [];
          let cursor = q.cursor;
          let scanned = 0;
          nextCursor = null;
          for (;;) {
            const page = await store.listCarves({ ...base, limit: q.limit - carves.length, ...(cursor ? { cursor } : {}) });
            scanned += page.carves.length;
            carves.push(...page.carves.filter((c) => nodeKeyMatches(c.nodeKey, node)));
            nextCursor = page.nextCursor;
            if (nextCursor === null || carves.length >= q.limit || scanned >= NODE_FILTER_SCAN) break;
            cursor = nextCursor;
          }
        }
        const at = now();
        ctx.detail.count = carves.length;
        // Logged with the audit event: values of anything but our own parameters (a `token=`) are redacted.
        ctx.detail.query = redactQuery(new URLSearchParams(ctx.req.url.split("?")[1] ?? "").toString()).slice(0, 300) || null;
        ctx.res.json({ carves: carves.map((c) => carveSummary(c, at, deps.expiry)), nextCursor });
      },
    ),
  );

  // --- GET /api/v1/carves/:carve_id ------------------------------------------------------------------------
  router.get(
    "/api/v1/carves/:carve_id",
    endpoint(
      "carve.read",
      (req) => carveTarget(req, "read"),
      async (ctx) => {
        parseWith(noQuery, ctx.req.query);
        const carveId = ctx.carveId as string;
        const record = await store.getCarve(carveId);
        const missing = record.status === "complete" ? [] : await store.missingBlocks(carveId, MISSING_SHOWN);
        ctx.detail.sha256 = record.sha256;
        ctx.detail.carveStatus = record.status;
        ctx.res.json(carveDetail(record, missing, now(), deps.expiry));
      },
    ),
  );

  // --- GET /api/v1/carves/:carve_id/archive ----------------------------------------------------------------
  router.get(
    "/api/v1/carves/:carve_id/archive",
    endpoint(
      "carve.download",
      (req) => carveTarget(req, "read"),
      async (ctx) => {
        const q = parseWith(archiveQuery, ctx.req.query);
        await sendArchive(ctx, ctx.carveId as string, q.format);
      },
    ),
  );

  // --- GET /api/v1/carves/:carve_id/files ------------------------------------------------------------------
  router.get(
    "/api/v1/carves/:carve_id/files",
    endpoint(
      "carve.files",
      (req) => carveTarget(req, "read"),
      async (ctx) => {
        parseWith(noQuery, ctx.req.query);
        const carveId = ctx.carveId as string;
        const record = await store.getCarve(carveId);
        ctx.detail.sha256 = record.sha256;
        if (record.status !== "complete") {
          throw new AppError(
            "CARVE_NOT_COMPLETE",
            `status ${viewStatus(record, now())}, ${record.blocksReceived} of ${record.blockCount} blocks received`,
          );
        }
        const listing = await files.list(carveId, record.sha256);
        ctx.detail.members = listing.members.length;
        if (listing.truncatedReason) ctx.detail.truncatedReason = listing.truncatedReason;
        ctx.res.json({
          carveId,
          sha256: listing.sha256,
          compression: listing.compression,
          memberCount: listing.members.length,
          truncated: listing.truncated,
          truncatedReason: listing.truncatedReason,
          endOfArchive: listing.endMarker,
          members: listing.members,
        });
      },
    ),
  );

  // --- DELETE /api/v1/carves/:carve_id ---------------------------------------------------------------------
  router.delete(
    "/api/v1/carves/:carve_id",
    endpoint(
      "carve.delete",
      (req) => carveTarget(req, "delete"),
      async (ctx) => {
        parseWith(noQuery, ctx.req.query);
        const carveId = ctx.carveId as string;
        const record = await store.getCarve(carveId);
        ctx.detail.sha256 = record.sha256;
        ctx.detail.carveStatus = record.status;
        ctx.detail.carveSize = record.carveSize;
        // Unconditional: a legal hold refuses it (409 CARVE_ON_HOLD).
        const { deleted, bytesFreed } = await store.deleteCarve(carveId);
        ctx.detail.bytesFreed = bytesFreed;
        ctx.res.json({ deleted, carveId, bytesFreed });
      },
    ),
  );

  // --- PUT / DELETE /api/v1/carves/:carve_id/hold (legal hold) ----------------------------------------------
  registerHoldRoutes(router, { store, endpoint, now, target: (req) => carveTarget(req, "hold"), readBody: readSmallBody });

  // --- GET /api/v1/audit -----------------------------------------------------------------------------------
  router.get(
    "/api/v1/audit",
    endpoint(
      "audit.read",
      (req) => ({ token: tokenFromHeaders(req.headers), question: { action: "audit" }, carveId: null }),
      async (ctx) => {
        const q = parseWith(auditQuery, ctx.req.query);
        const page = await store.listAudit({
          limit: q.limit,
          ...(q.carve_id ? { carveId: q.carve_id } : {}),
          ...(q.action ? { action: q.action } : {}),
          ...(q.since ? { since: q.since } : {}),
          ...(q.until ? { until: q.until } : {}),
          ...(q.cursor ? { cursor: q.cursor } : {}),
        });
        ctx.detail.count = page.events.length;
        ctx.res.json({ events: page.events.map((e) => ({ ...e, at: e.at.toISOString() })), nextCursor: page.nextCursor });
      },
    ),
  );

  // --- POST /file_request (the seed server's download) ------------------------------------------------------
  router.post(
    "/file_request",
    endpoint(
      "carve.download",
      async (req) => {
        // curl -d sends this JSON as application/x-www-form-urlencoded: the body is read as JSON whatever
        // its declared type. The token travels in it; token_accessor is ignored (not a secret, proves nothing).
        const raw = await readSmallBody(req, FILE_REQUEST_BODY_LIMIT);
        let json: unknown;
        try {
          json = JSON.parse(raw.toString("utf8"));
        } catch {
          // No cause: JSON.parse's message quotes the body, token included.
          throw new AppError("INVALID_JSON", 'expected {"file_carve_guid": "...", "token": "..."}');
        }
        const body = parseWith(fileRequestBody, json);
        const token = body.token.trim();
        if (!CARVE_ID.test(body.file_carve_guid)) return { token, question: null, carveId: null };
        return { token, question: { action: "read", carveId: body.file_carve_guid }, carveId: body.file_carve_guid };
      },
      async (ctx) => {
        ctx.detail.compat = "file_request";
        await sendArchive(ctx, ctx.carveId as string, "raw");
      },
    ),
  );

  // --- POST /api/v1/carves/import, POST /api/v1/carves/:carve_id/verify (chain of custody) -------------------
  registerImportRoutes(router, { store, endpoint, maxImportSize: deps.maxImportSize, now, expiry: deps.expiry, logger });

  // --- GET /api/v1/carves/:carve_id/files/:n (one file out of the archive) -----------------------------------
  registerMemberRoutes(router, { store, endpoint, now, files, logger, target: (req) => carveTarget(req, "read") });

  // Anything else under the API: a JSON 404 (not the agents' non-JSON refusal).
  router.all("/api/v1/{*rest}", (req, res) => {
    sendJsonError(req, res, new AppError("NOT_FOUND"));
  });

  return router;
}
