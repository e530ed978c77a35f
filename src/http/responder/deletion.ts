import { noQuery, parseWith } from "../responder-schemas.js";
import { carveTarget, type RegisterRoutes } from "./frame.js";

/** DELETE /api/v1/carves/:carve_id (delete right): a carve and everything it owns; a legal hold refuses it. */
export const registerDeletionRoutes: RegisterRoutes = (router, { services, endpoint }) => {
  router.delete(
    "/api/v1/carves/:carve_id",
    endpoint("carve.delete", carveTarget("delete"), async (ctx) => {
      parseWith(noQuery, ctx.req.query);
      const carveId = ctx.carveId as string;
      // What was deleted, for the audit trail: read first, the delete leaves nothing to read.
      const record = await services.reads.get(carveId);
      ctx.detail.sha256 = record.sha256;
      ctx.detail.carveStatus = record.status;
      ctx.detail.carveSize = record.carveSize;
      // Unconditional: a legal hold refuses it (409 CARVE_ON_HOLD).
      const { bytesFreed } = await services.custody.delete(carveId);
      ctx.detail.bytesFreed = bytesFreed;
      ctx.res.json({ deleted: true, carveId, bytesFreed });
    }),
  );
};
