import { AppError } from "../errors.js";
import type { AuditEvent, AuditQuery, CarveRecord, ListQuery } from "./carve-store.js";

/** Position of a record in the newest-first order: (createdAt desc, carveId asc). */
export interface Cursor {
  t: number;
  id: string;
}

export function encodeCursor(record: CarveRecord): string {
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

export function compareNewestFirst(a: CarveRecord, b: CarveRecord): number {
  const dt = b.createdAt.getTime() - a.createdAt.getTime();
  if (dt !== 0) return dt;
  return a.carveId < b.carveId ? -1 : a.carveId > b.carveId ? 1 : 0;
}

/** Whether a record passes the query's filters and comes after the cursor. */
export function matchesQuery(record: CarveRecord, query: ListQuery, after: Cursor | null): boolean {
  if (query.status && record.status !== query.status) return false;
  if (query.nodeKey !== undefined && record.nodeKey !== query.nodeKey) return false;
  const t = record.createdAt.getTime();
  if (query.since && t < query.since.getTime()) return false;
  if (query.until && t >= query.until.getTime()) return false;
  if (after) {
    if (t > after.t) return false;
    if (t === after.t && record.carveId <= after.id) return false;
  }
  return true;
}

export function encodeAuditCursor(event: AuditEvent): string {
  return Buffer.from(JSON.stringify({ t: event.at.getTime(), id: event.id })).toString("base64url");
}

/** Audit events newest first: (at desc, id desc). */
export function compareAuditNewestFirst(a: AuditEvent, b: AuditEvent): number {
  const dt = b.at.getTime() - a.at.getTime();
  if (dt !== 0) return dt;
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

export function auditMatches(event: AuditEvent, query: AuditQuery, after: Cursor | null): boolean {
  if (query.carveId !== undefined && event.carveId !== query.carveId) return false;
  if (query.action !== undefined && event.action !== query.action) return false;
  const t = event.at.getTime();
  if (query.since && t < query.since.getTime()) return false;
  if (query.until && t >= query.until.getTime()) return false;
  if (after) {
    if (t > after.t) return false;
    if (t === after.t && event.id >= after.id) return false;
  }
  return true;
}
