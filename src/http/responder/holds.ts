import { AppError, isAppError } from "../../errors.js";
import { readSmallBody } from "../body.js";
import { holdReasonOf, noQuery, parseWith } from "../responder-schemas.js";
import { carveTarget, type RegisterRoutes } from "./frame.js";

/** A hold request is one small JSON object. */
const HOLD_BODY_LIMIT = 16 * 1024;

/**
 * Legal holds (hold right): PUT places one, DELETE lifts it. A hold is custody evidence: who placed it, why and
 * when is never replaced by a second PUT (409 HOLD_EXISTS names the hold in place); lift it first to place
 * another, and both steps are audited.
 */
export const registerHoldRoutes: RegisterRoutes = (router, { services, endpoint, now }) => {
  router.put(
    "/api/v1/carves/:carve_id/hold",
    endpoint("carve.hold", carveTarget("hold"), async (ctx) => {
      parseWith(noQuery, ctx.req.query);
      const reason = holdReasonOf(await readSmallBody(ctx.req, HOLD_BODY_LIMIT));
      const carveId = ctx.carveId as string;
      const by = ctx.actor.displayName ?? ctx.actor.entityId ?? "unknown";
      let record;
      try {
        record = await services.custody.placeHold(carveId, { by, reason, at: now() });
      } catch (err) {
        if (!isAppError(err) || err.code !== "HOLD_EXISTS") throw err;
        // The hold that was kept, named in the reply and the audit trail (a hold is replaced only by lifting it).
        const kept = await services.reads.get(carveId).then((r) => r.hold, () => null);
        if (!kept) throw err;
        ctx.detail.existingHoldBy = kept.by;
        ctx.detail.existingHoldAt = kept.at.toISOString();
        throw new AppError("HOLD_EXISTS", `placed by ${kept.by} at ${kept.at.toISOString()}; lift it first`);
      }
      ctx.detail.reason = reason;
      ctx.res.json({ carveId: record.carveId, hold: record.hold ? { ...record.hold, at: record.hold.at.toISOString() } : null });
    }),
  );
  router.delete(
    "/api/v1/carves/:carve_id/hold",
    endpoint("carve.release", carveTarget("hold"), async (ctx) => {
      parseWith(noQuery, ctx.req.query);
      const carveId = ctx.carveId as string;
      // The reason of the hold lifted, for the audit trail.
      const before = await services.reads.get(carveId);
      ctx.detail.previousReason = before.hold?.reason ?? null;
      const record = await services.custody.releaseHold(carveId);
      ctx.res.json({ carveId: record.carveId, hold: null });
    }),
  );
};
