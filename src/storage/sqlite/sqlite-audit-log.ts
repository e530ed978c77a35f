import type Database from "better-sqlite3";
import { AppError } from "../../errors.js";
import type { AuditLog } from "../contracts.js";
import { decodeCursor, encodeAuditCursor } from "../listing.js";
import type { AuditEvent, AuditPage, AuditQuery } from "../model.js";
import { BUSY_SLICE_MS, openCatalogDatabase, runStep, statementCache } from "./sqlite-database.js";

/*
 * The audit trail of the embedded deployment: table `audit` of <dataDir>/catalog.sqlite (sqlite-database.ts),
 * queried newest first through one of three indexes, so a page costs the same after years of events.
 */

export interface AuditRow {
  id: string;
  at: number;
  action: string;
  result: AuditEvent["result"];
  actor: string;
  client: string;
  carve_id: string | null;
  detail: string;
}

/** Inserts an event unless its id is recorded already (a retried append). */
export const INSERT_AUDIT =
  "INSERT INTO audit (id, at, action, result, actor, client, carve_id, detail) " +
  "VALUES (@id, @at, @action, @result, @actor, @client, @carve_id, @detail) ON CONFLICT (id) DO NOTHING";

export function auditRowOf(e: AuditEvent): AuditRow {
  const { displayName, entityId, tokenFingerprint } = e.actor;
  const { address, certificateSubject, requestId } = e.client;
  return {
    id: e.id,
    at: e.at.getTime(),
    action: e.action,
    result: e.result,
    actor: JSON.stringify({ displayName, entityId, tokenFingerprint }),
    client: JSON.stringify({ address, certificateSubject, requestId }),
    carve_id: e.carveId,
    detail: JSON.stringify(e.detail),
  };
}

function eventOf(r: AuditRow): AuditEvent {
  return {
    id: r.id,
    at: new Date(r.at),
    action: r.action,
    result: r.result,
    actor: JSON.parse(r.actor) as AuditEvent["actor"],
    client: JSON.parse(r.client) as AuditEvent["client"],
    carveId: r.carve_id,
    detail: JSON.parse(r.detail) as AuditEvent["detail"],
  };
}

export class SqliteAuditLog implements AuditLog {
  readonly kind = "sqlite";
  private closed = false;

  private readonly stmt: (sql: string) => Database.Statement;

  private constructor(private readonly db: Database.Database) {
    this.stmt = statementCache(db);
  }

  /** @throws AppError STORAGE_UNAVAILABLE */
  static async open(options: { dataDir: string }): Promise<SqliteAuditLog> {
    return Promise.resolve(new SqliteAuditLog(openCatalogDatabase(options.dataDir, { busySliceMs: BUSY_SLICE_MS })));
  }

  private run<T>(what: string, step: () => T): Promise<T> {
    return runStep(this.db, () => (this.closed ? "audit log is closed" : null), what, step);
  }

  append(event: AuditEvent): Promise<void> {
    return this.run("append audit event", () => {
      this.stmt(INSERT_AUDIT).run(auditRowOf(event));
    });
  }

  query(query: AuditQuery): Promise<AuditPage> {
    return this.run("query audit", () => {
      const { sql, params } = SqliteAuditLog.querySql(query);
      const rows = this.stmt(sql).all(params) as AuditRow[];
      const events = rows.slice(0, query.limit).map(eventOf);
      const last = events[events.length - 1];
      return { events, nextCursor: rows.length > query.limit && last ? encodeAuditCursor(last) : null };
    });
  }

  /** The statement of a query (its shapes are checked against the query plan in the tests). */
  static querySql(query: AuditQuery): { sql: string; params: Record<string, string | number> } {
    if (!Number.isSafeInteger(query.limit) || query.limit < 1) throw new AppError("INVALID_QUERY", "limit must be a positive integer");
    const params: Record<string, string | number> = { limit: query.limit + 1 };
    const where: string[] = [];
    // With both a carve and an action, the carve's events are the fewer: its index, the action filtered.
    let index = "audit_at";
    if (query.action !== undefined) {
      params.action = query.action;
      where.push("action = @action");
      index = "audit_action";
    }
    if (query.carveId !== undefined) {
      params.carveId = query.carveId;
      where.push("carve_id = @carveId");
      index = "audit_carve";
    }
    if (query.since) {
      params.since = query.since.getTime();
      where.push("at >= @since");
    }
    if (query.until) {
      params.until = query.until.getTime();
      where.push("at < @until");
    }
    if (query.cursor !== undefined) {
      const after = decodeCursor(query.cursor);
      params.afterT = after.t;
      params.afterId = after.id;
      where.push("at <= @afterT", "(at < @afterT OR id < @afterId)");
    }
    const filter = where.length ? `WHERE ${where.join(" AND ")}` : "";
    return { sql: `SELECT * FROM audit INDEXED BY ${index} ${filter} ORDER BY at DESC, id DESC LIMIT @limit`, params };
  }

  close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.db.close();
    }
    return Promise.resolve();
  }
}
