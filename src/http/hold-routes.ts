import type { Request, Router } from "express";
import { AppError } from "../errors.js";
import type { CarveStore } from "../storage/carve-store.js";
import type { Endpoint, EndpointTarget } from "./responder-routes.js";
import { noQuery, parseWith } from "./responder-schemas.js";

export interface HoldRouteDeps {
  store: CarveStore;
  endpoint: Endpoint;
  now: () => Date;
  target: (req: Request) => EndpointTarget;
  readBody: (req: Request, limit: number) => Promise<Buffer>;
}

/** Control characters (NUL included) have no place in a reason that is shown, logged and exported. */
function hasControlCharacter(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x20 || (c >= 0x7f && c <= 0x9f)) return true;
  }
  return false;
}

/**
 * Legal holds: PUT places one, DELETE lifts it. A hold is custody evidence: who placed it, why and when is
 * never replaced by a second PUT (409 HOLD_EXISTS names the hold in place); lift it first to place another,
 * and both steps are audited.
 */
export function registerHoldRoutes(router: Router, deps: HoldRouteDeps): void {
  const { store, endpoint, now } = deps;
  router.put(
    "/api/v1/carves/:carve_id/hold",
    endpoint("carve.hold", deps.target, async (ctx) => {
      parseWith(noQuery, ctx.req.query);
      const raw = await deps.readBody(ctx.req, 16 * 1024);
      let reason: unknown;
      try {
        reason = (JSON.parse(raw.toString("utf8") || "{}") as { reason?: unknown }).reason;
      } catch {
        throw new AppError("INVALID_QUERY", 'body must be JSON: {"reason": "..."}');
      }
      if (typeof reason !== "string" || reason.trim() === "" || reason.length > 1000) {
        throw new AppError("INVALID_QUERY", 'a hold needs {"reason": "<1-1000 characters>"}');
      }
      if (hasControlCharacter(reason)) throw new AppError("INVALID_QUERY", "a hold reason must not contain control characters");
      const carveId = ctx.carveId as string;
      const before = await store.getCarve(carveId);
      if (before.hold) {
        ctx.detail.existingHoldBy = before.hold.by;
        ctx.detail.existingHoldAt = before.hold.at.toISOString();
        throw new AppError("HOLD_EXISTS", `placed by ${before.hold.by} at ${before.hold.at.toISOString()}; lift it first`);
      }
      const by = ctx.actor.displayName ?? ctx.actor.entityId ?? "unknown";
      const record = await store.setHold(carveId, { by, reason: reason.trim(), at: now() });
      ctx.detail.reason = reason.trim();
      ctx.res.json({ carveId: record.carveId, hold: record.hold ? { ...record.hold, at: record.hold.at.toISOString() } : null });
    }),
  );
  router.delete(
    "/api/v1/carves/:carve_id/hold",
    endpoint("carve.release", deps.target, async (ctx) => {
      parseWith(noQuery, ctx.req.query);
      const before = await store.getCarve(ctx.carveId as string);
      ctx.detail.previousReason = before.hold?.reason ?? null;
      const record = await store.setHold(ctx.carveId as string, null);
      ctx.res.json({ carveId: record.carveId, hold: null });
    }),
  );
}
