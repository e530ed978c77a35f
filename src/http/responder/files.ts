import { noQuery, parseWith } from "../responder-schemas.js";
import { carveTarget, notComplete, type RegisterRoutes } from "./frame.js";

/** GET /api/v1/carves/:carve_id/files (read right): the members of a complete carve's tar, within bounds. */
export const registerFilesRoutes: RegisterRoutes = (router, { services, endpoint, now, files }) => {
  router.get(
    "/api/v1/carves/:carve_id/files",
    endpoint("carve.files", carveTarget("read"), async (ctx) => {
      parseWith(noQuery, ctx.req.query);
      const carveId = ctx.carveId as string;
      const record = await services.reads.get(carveId);
      ctx.detail.sha256 = record.sha256;
      if (record.status !== "complete") throw notComplete(record, now());
      const result = await files.list(carveId, record.sha256);
      ctx.detail.members = result.members.length;
      if (result.truncatedReason) ctx.detail.truncatedReason = result.truncatedReason;
      ctx.res.json({
        carveId,
        sha256: result.sha256,
        compression: result.compression,
        memberCount: result.members.length,
        truncated: result.truncated,
        truncatedReason: result.truncatedReason,
        endOfArchive: result.endMarker,
        members: result.members,
      });
    }),
  );
};
