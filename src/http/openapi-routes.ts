import express, { type Router } from "express";
import { openApiText } from "./openapi.js";

/** GET /api/v1/openapi.json: the responder API's contract, public (it holds no data), built once. */
export function openApiRouter(): Router {
  const router = express.Router();
  let text: string | null = null;
  router.get("/api/v1/openapi.json", (_req, res) => {
    text ??= openApiText();
    res.setHeader("Content-Type", "application/json; charset=utf-8");
    res.setHeader("Cache-Control", "no-cache");
    res.send(text);
  });
  return router;
}
