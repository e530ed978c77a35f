import type { Request, Response } from "express";
import type { AppError } from "../errors.js";

/** Responder-facing error shape: `{"error": {"code", "message", "requestId"}}`. */
export function sendJsonError(req: Request, res: Response, err: AppError): void {
  res.status(err.status).json({ error: { code: err.code, message: err.publicMessage, requestId: typeof req.id === "string" ? req.id : JSON.stringify(req.id) } });
}
