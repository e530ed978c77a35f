import { auditQuery, parseWith } from "../responder-schemas.js";
import { globalTarget, type RegisterRoutes } from "./frame.js";

/** GET /api/v1/audit (audit right): the responder audit trail, newest first. */
export const registerAuditRoutes: RegisterRoutes = (router, { services, endpoint }) => {
  router.get(
    "/api/v1/audit",
    endpoint("audit.read", globalTarget("audit"), async (ctx) => {
      const q = parseWith(auditQuery, ctx.req.query);
      const page = await services.audit.list({
        limit: q.limit,
        ...(q.carve_id ? { carveId: q.carve_id } : {}),
        ...(q.action ? { action: q.action } : {}),
        ...(q.since ? { since: q.since } : {}),
        ...(q.until ? { until: q.until } : {}),
        ...(q.cursor ? { cursor: q.cursor } : {}),
      });
      ctx.detail.count = page.events.length;
      ctx.res.json({ events: page.events.map((e) => ({ ...e, at: e.at.toISOString() })), nextCursor: page.nextCursor });
    }),
  );
};
