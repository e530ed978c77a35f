import { randomUUID } from "node:crypto";
import { AppError } from "../../errors.js";
import type { ImportSource } from "../../storage/model.js";
import { MultipartImport, type ImportField } from "../multipart-import.js";
import { noQuery, parseWith, shown } from "../responder-schemas.js";
import { carveDetail } from "../responder-views.js";
import { globalTarget, type RegisterRoutes } from "./frame.js";

/**
 * POST /api/v1/carves/import (import right): an archive collected out of band, sent as multipart/form-data,
 * becomes a carve like any other. Authorized before its body is read; audited as carve.import with who, size,
 * sha256 and source host.
 */
export const registerImportRoutes: RegisterRoutes = (router, { services, endpoint, now, expiry, maxImportSize }) => {
  router.post(
    "/api/v1/carves/import",
    endpoint("carve.import", globalTarget("import"), async (ctx) => {
      const { req, res } = ctx;
      parseWith(noQuery, req.query);
      const contentType = req.headers["content-type"] ?? "";
      if (!/^multipart\/form-data\s*;/i.test(contentType)) {
        throw new AppError("IMPORT_NOT_MULTIPART", `got ${shown(contentType.split(";")[0] ?? "", 80)}`);
      }
      const encoding = req.headers["content-encoding"];
      if (encoding !== undefined && encoding.toLowerCase() !== "identity") {
        throw new AppError("IMPORT_NOT_MULTIPART", "compressed request bodies are not accepted");
      }
      const form = new MultipartImport(req, maxImportSize);
      try {
        const file = await form.fileStream();
        if (file === null) throw new AppError("IMPORT_FILE_MISSING");
        const field = (name: ImportField): string | null => form.fields.get(name) || null;
        const expectedSha256 = field("sha256");
        const source: ImportSource = {
          host: field("source_host"),
          originalPath: field("original_path"),
          description: field("description"),
          importedBy: { displayName: ctx.actor.displayName, entityId: ctx.actor.entityId },
        };
        const carveId = randomUUID();
        ctx.carveId = carveId;
        ctx.detail.sourceHost = source.host;
        ctx.detail.originalPath = source.originalPath === null ? null : source.originalPath.slice(0, 300);
        ctx.detail.fileName = form.fileName;
        ctx.detail.expectedSha256 = expectedSha256;
        const record = await services.imports.importArchive(
          {
            carveId,
            sessionId: randomUUID(),
            source,
            agent: { address: ctx.client.address, userAgent: req.get("user-agent") ?? null, certificate: ctx.client.certificate },
          },
          form.chunks(),
          { maxBytes: maxImportSize, ...(expectedSha256 !== null ? { expectedSha256 } : {}) },
        );
        ctx.detail.size = record.carveSize;
        ctx.detail.sha256 = record.sha256;
        ctx.detail.compression = record.compression;
        res.status(201).location(`/api/v1/carves/${carveId}`).json(carveDetail(record, [], now(), expiry));
      } finally {
        ctx.detail.bytesReceived = form.bytes;
        form.dispose();
      }
    }),
  );
};
