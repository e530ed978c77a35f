import { readSmallBody } from "../body.js";
import { claimedSha256Of, noQuery, parseWith } from "../responder-schemas.js";
import { carveTarget, notComplete, type RegisterRoutes } from "./frame.js";

/** A verify body is one small JSON object. */
const VERIFY_BODY_LIMIT = 4 * 1024;

/**
 * POST /api/v1/carves/:carve_id/verify (read right): compares the stored SHA-256 with the one the host recorded
 * (osquery's carves.sha256); the outcome is kept with the carve and audited as carve.verify.
 */
export const registerVerifyRoutes: RegisterRoutes = (router, { services, endpoint, now, logger }) => {
  router.post(
    "/api/v1/carves/:carve_id/verify",
    endpoint("carve.verify", carveTarget("read"), async (ctx) => {
      parseWith(noQuery, ctx.req.query);
      const carveId = ctx.carveId as string;
      const claimedSha256 = claimedSha256Of(await readSmallBody(ctx.req, VERIFY_BODY_LIMIT));
      ctx.detail.claimedSha256 = claimedSha256;
      const record = await services.reads.get(carveId);
      ctx.detail.storedSha256 = record.sha256;
      if (record.status !== "complete" || record.sha256 === null) throw notComplete(record, now(), ": nothing to compare yet");
      const match = claimedSha256 === record.sha256;
      await services.custody.recordVerification(carveId, {
        claimedSha256,
        match,
        by: ctx.actor.displayName ?? ctx.actor.entityId ?? null,
        at: now(),
      });
      ctx.detail.match = match;
      ctx.detail.outcome = match ? "match" : "mismatch";
      if (!match) logger.warn({ carveId, storedSha256: record.sha256, claimedSha256 }, "carve does not match the host's sha256");
      ctx.res.json({ carveId, match, storedSha256: record.sha256, claimedSha256 });
    }),
  );
};
