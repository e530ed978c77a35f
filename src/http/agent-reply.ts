import type { Response } from "express";
import { AppError } from "../errors.js";

/*
 * osquery ignores HTTP status codes: any reply whose body is empty or JSON counts as success
 * (osquery-carver-protocol.md section 2). So:
 *  - a start the agent must give up on at once gets JSON WITHOUT session_id (it fails the carve, no retry);
 *  - a block we refuse gets a NON-JSON body: the only reply that makes a 5.22+ agent retry and then stop
 *    instead of counting a lost block as sent;
 *  - a server-side problem gets a non-JSON 503 on both endpoints, so 5.22+ agents retry (except a start
 *    refused for lack of disk space: JSON 507, the agent fails that carve at once).
 * Status codes are still meaningful for proxies, logs and humans.
 */

export function replyStartAccepted(res: Response, sessionId: string): void {
  res.status(200).json({ session_id: sessionId });
}

export function replyBlockAccepted(res: Response): void {
  res.status(200).json({ success: true });
}

function asAppError(err: unknown): AppError {
  return err instanceof AppError ? err : new AppError("INTERNAL", undefined, { cause: err });
}

/** Text that is never valid JSON (it starts with a letter that begins no JSON literal). */
export function refusalText(err: AppError): string {
  return `refused: ${err.code}: ${err.publicMessage}\n`;
}

export function refuseNonJson(res: Response, error: unknown): AppError {
  const err = asAppError(error);
  res.status(err.status).type("text/plain; charset=utf-8").send(refusalText(err));
  return err;
}

export function refuseStart(res: Response, error: unknown): AppError {
  const err = asAppError(error);
  // Transient server trouble: non-JSON, so a 5.22+ agent retries. A full disk is not transient: fail at once.
  if (err.status >= 500 && err.code !== "INSUFFICIENT_STORAGE") return refuseNonJson(res, err);
  res.status(err.status).json({ error: { code: err.code, message: err.publicMessage } });
  return err;
}
