import type { IncomingMessage } from "node:http";
import { pipeline } from "node:stream/promises";
import { zstdDecompress, ZstdFormatError } from "../../carves/zstd-stream.js";
import { AppError, isAppError } from "../../errors.js";
import type { ArchiveHandle, ByteRange, CarveRecord } from "../../storage/model.js";
import { readSmallBody } from "../body.js";
import { ifRangeAllows, parseRangeHeader } from "../http-range.js";
import { archiveQuery, CARVE_ID, fileRequestBody, parseWith } from "../responder-schemas.js";
import { archiveRepresentation } from "../responder-views.js";
import { sendRange } from "../send-archive.js";
import { carveTarget, notComplete, type EndpointContext, type RegisterRoutes, type RouteDeps } from "./frame.js";

/** POST /file_request bodies are tiny JSON documents. */
const FILE_REQUEST_BODY_LIMIT = 64 * 1024;

const headerOf = (req: IncomingMessage, name: string): string | undefined => [req.headers[name] ?? []].flat().join(", ") || undefined;

/**
 * GET /api/v1/carves/:carve_id/archive and the seed server's POST /file_request (read right): a complete carve's
 * archive with ETag, single ranges and If-Range, or (format=tar) a zstd carve decompressed on the fly.
 */
export const registerArchiveRoutes: RegisterRoutes = (router, deps) => {
  const { endpoint } = deps;
  router.get(
    "/api/v1/carves/:carve_id/archive",
    endpoint("carve.download", carveTarget("read"), async (ctx) => {
      const q = parseWith(archiveQuery, ctx.req.query);
      await sendArchive(deps, ctx, ctx.carveId as string, q.format);
    }),
  );

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
        await sendArchive(deps, ctx, ctx.carveId as string, "raw");
      },
    ),
  );
};

/**
 * Opens the whole archive of a complete carve: its record comes with the bytes, from one read. A carve still
 * receiving is refused with its progress.
 */
async function openWhole({ services, now }: RouteDeps, ctx: EndpointContext, carveId: string): Promise<ArchiveHandle> {
  try {
    return await services.reads.openArchive(carveId);
  } catch (err) {
    if (!isAppError(err) || err.code !== "CARVE_NOT_COMPLETE") throw err;
    const record = await services.reads.get(carveId);
    ctx.detail.sha256 = record.sha256;
    throw record.status === "complete" ? err : notComplete(record, now());
  }
}

/** Streams a complete carve's archive: ETag, single ranges, If-Range, optional zstd decompression. */
async function sendArchive(deps: RouteDeps, ctx: EndpointContext, carveId: string, format: "raw" | "tar"): Promise<void> {
  const { req, res } = ctx;
  const { services, now, logger } = deps;
  const head = req.method === "HEAD";
  const rangeHeader = headerOf(req, "range");
  // Without a range nothing about the record is needed before the bytes: one read gets both. A range (or
  // HEAD) is resolved against the record first, then just those bytes are opened.
  let handle: ArchiveHandle | null = head || rangeHeader !== undefined ? null : await openWhole(deps, ctx, carveId);
  try {
    const record: CarveRecord = handle ? handle.record : await services.reads.get(carveId);
    ctx.detail.sha256 = record.sha256;
    if (record.status !== "complete" || record.sha256 === null) throw notComplete(record, now());
    const decompress = format === "tar" && record.compression === "zstd";
    const size = record.carveSize;
    const etag = `"${record.sha256}"`;
    let range: ByteRange | undefined;
    ctx.detail.format = decompress ? "tar-from-zstd" : "raw";
    if (!decompress) {
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
    // Opened before any header is set, so a failure here is still a clean JSON error.
    if (!head) handle ??= await services.reads.openArchive(carveId, range);

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
    }
    ctx.detail.bytesSent = sent;
    ctx.detail.completed = true;
  } finally {
    handle?.stream.destroy();
  }
}
