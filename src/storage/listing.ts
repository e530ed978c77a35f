import { AppError } from "../errors.js";
import type { AuditEvent } from "./model.js";

/** Position of a record in the newest-first order: (createdAt desc, carveId asc). */
export interface Cursor {
  t: number;
  id: string;
}

export function encodeCursor(record: { createdAt: Date; carveId: string }): string {
  return Buffer.from(JSON.stringify({ t: record.createdAt.getTime(), id: record.carveId })).toString("base64url");
}

/** @throws AppError INVALID_QUERY for a cursor this service did not make. */
export function decodeCursor(cursor: string): Cursor {
  try {
    const v = JSON.parse(Buffer.from(cursor, "base64url").toString("utf8")) as unknown;
    // A time outside what a Date holds (t=1e400 parses as Infinity) is as bad as any other forged cursor.
    const c = v as Partial<Cursor> | null;
    if (c && typeof c === "object" && Number.isSafeInteger(c.t) && Math.abs(c.t as number) <= 8.64e15 && typeof c.id === "string" && c.id.length <= 128) {
      return v as Cursor;
    }
  } catch {
    // fall through
  }
  throw new AppError("INVALID_QUERY", "bad cursor");
}

export function encodeAuditCursor(event: AuditEvent): string {
  return Buffer.from(JSON.stringify({ t: event.at.getTime(), id: event.id })).toString("base64url");
}
