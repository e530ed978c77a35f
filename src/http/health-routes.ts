import express, { type Router } from "express";
import type { Metrics } from "../metrics.js";
import type { StorageStatus } from "../services/types.js";

export function healthRouter(deps: {
  storage: StorageStatus;
  isShuttingDown: () => boolean;
  metrics?: Metrics | undefined;
}): Router {
  const router = express.Router();
  // Prometheus exposition. Counts and sizes only: no carve ids, node keys or tokens in any label.
  router.get("/metrics", async (_req, res) => {
    if (!deps.metrics) {
      res.status(404).json({ error: { code: "NOT_FOUND", message: "metrics disabled" } });
      return;
    }
    res.type(deps.metrics.registry.contentType).send(await deps.metrics.registry.metrics());
  });
  // Liveness, in the seed server's shape: the process answers HTTP.
  router.get("/status", (_req, res) => {
    res.json({ success: true });
  });
  // Readiness: storage can take writes and the service is not draining.
  router.get("/ready", async (_req, res) => {
    const storage = await deps.storage.health();
    const ready = storage.ok && !deps.isShuttingDown();
    res.status(ready ? 200 : 503).json({
      status: ready ? "ready" : "unavailable",
      shuttingDown: deps.isShuttingDown(),
      storage,
    });
  });
  return router;
}
