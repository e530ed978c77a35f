import type { ListQuery } from "../../storage/model.js";
import { redactQuery } from "../logging.js";
import { listCarvesQuery, noQuery, parseWith } from "../responder-schemas.js";
import { carveDetail, carveSummary, MISSING_SHOWN } from "../responder-views.js";
import { carveTarget, globalTarget, type RegisterRoutes } from "./frame.js";

/** GET /api/v1/carves (list right) and GET /api/v1/carves/:carve_id (read right): the catalog. */
export const registerCarveRoutes: RegisterRoutes = (router, { services, endpoint, now, expiry }) => {
  router.get(
    "/api/v1/carves",
    endpoint("carve.list", globalTarget("list"), async (ctx) => {
      const q = parseWith(listCarvesQuery, ctx.req.query);
      // The node key is a secret and never travels in a URL: the filter is a prefix of its SHA-256.
      const query: ListQuery = {
        limit: q.limit,
        ...(q.status ? { status: q.status } : {}),
        ...(q.node !== undefined ? { nodeSha256Prefix: q.node } : {}),
        ...(q.since ? { since: q.since } : {}),
        ...(q.until ? { until: q.until } : {}),
        ...(q.cursor ? { cursor: q.cursor } : {}),
      };
      const { carves, nextCursor } = await services.reads.list(query);
      const at = now();
      ctx.detail.count = carves.length;
      // Logged with the audit event: values of anything but our own parameters (a `token=`) are redacted.
      ctx.detail.query = redactQuery(new URLSearchParams(ctx.req.url.split("?")[1] ?? "").toString()).slice(0, 300) || null;
      ctx.res.json({ carves: carves.map((c) => carveSummary(c, at, expiry)), nextCursor });
    }),
  );

  router.get(
    "/api/v1/carves/:carve_id",
    endpoint("carve.read", carveTarget("read"), async (ctx) => {
      parseWith(noQuery, ctx.req.query);
      const carveId = ctx.carveId as string;
      const record = await services.reads.get(carveId);
      const missing = record.status === "complete" ? [] : await services.reads.missingBlocks(carveId, MISSING_SHOWN);
      ctx.detail.sha256 = record.sha256;
      ctx.detail.carveStatus = record.status;
      ctx.res.json(carveDetail(record, missing, now(), expiry));
    }),
  );
};
