import type { ServerResponse } from "node:http";
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
 *
 * Replies are written with plain node:http calls (an Express response is one too), so the block fast path
 * that runs before Express (agent-routes.ts) answers byte for byte as the Express routes do.
 */

const JSON_TYPE = "application/json; charset=utf-8";
const TEXT_TYPE = "text/plain; charset=utf-8";

function send(res: ServerResponse, status: number, type: string, body: string | Buffer): void {
  res.statusCode = status;
  res.setHeader("Content-Type", type);
  res.setHeader("Content-Length", typeof body === "string" ? Buffer.byteLength(body) : body.length);
  res.end(body);
}

export function replyStartAccepted(res: ServerResponse, sessionId: string): void {
  send(res, 200, JSON_TYPE, JSON.stringify({ session_id: sessionId }));
}

const BLOCK_ACCEPTED = '{"success":true}';

export function replyBlockAccepted(res: ServerResponse): void {
  send(res, 200, JSON_TYPE, BLOCK_ACCEPTED);
}

function asAppError(err: unknown): AppError {
  return err instanceof AppError ? err : new AppError("INTERNAL", undefined, { cause: err });
}

/** Text that is never valid JSON (it starts with a letter that begins no JSON literal). */
export function refusalText(err: AppError): string {
  return `refused: ${err.code}: ${err.publicMessage}\n`;
}

export function refuseNonJson(res: ServerResponse, error: unknown): AppError {
  const err = asAppError(error);
  send(res, err.status, TEXT_TYPE, refusalText(err));
  return err;
}

export function refuseStart(res: ServerResponse, error: unknown): AppError {
  const err = asAppError(error);
  // Transient server trouble: non-JSON, so a 5.22+ agent retries. A full disk is not transient: fail at once.
  if (err.status >= 500 && err.code !== "INSUFFICIENT_STORAGE") return refuseNonJson(res, err);
  send(res, err.status, JSON_TYPE, JSON.stringify({ error: { code: err.code, message: err.publicMessage } }));
  return err;
}
