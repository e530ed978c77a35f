import type { Collection, Db, Filter, IndexDescription } from "mongodb";
import { AppError } from "../../errors.js";
import type { Logger } from "../../logger.js";
import type { AuditLog } from "../contracts.js";
import { decodeCursor, encodeAuditCursor } from "../listing.js";
import type { AuditEvent, AuditPage, AuditQuery } from "../model.js";
import { isDuplicateKey, storageError } from "./mongo-connection.js";

/*
 * The responder audit trail in `<bucket>.audit`, one document per event (_id = event id, the rest as the
 * event), the shape the previous release wrote, so its trail reads on unchanged.
 */

export type AuditDoc = Omit<AuditEvent, "id"> & { _id: string };

export const AUDIT_ORDER = { at: -1, _id: -1 } as const;

export const AUDIT_INDEXES: IndexDescription[] = [
  // every page newest first; since/until/cursor bound `at`
  { key: { at: -1, _id: -1 }, name: "at_desc" },
  // one carve's or one action's events: equality, then the page order itself, so no in-memory sort
  { key: { carveId: 1, at: -1, _id: -1 }, name: "carveId_at_id" },
  { key: { action: 1, at: -1, _id: -1 }, name: "action_at_id" },
];

/** Index names of the previous release that a new index now covers (dropped by ./migrate-gridfs.ts). */
export const SUPERSEDED_AUDIT_INDEXES = ["carveId_at"];

export interface AuditShape {
  filter: Filter<AuditDoc>;
  sort: typeof AUDIT_ORDER;
}

export function auditShape(
  query: Omit<AuditQuery, "limit" | "cursor">,
  after: { t: number; id: string } | null,
): AuditShape {
  const filter: Filter<AuditDoc> = {};
  if (query.carveId !== undefined) filter.carveId = query.carveId;
  if (query.action !== undefined) filter.action = query.action;
  const at: { $gte?: Date; $lt?: Date; $lte?: Date } = {};
  if (query.since) at.$gte = query.since;
  if (query.until) at.$lt = query.until;
  if (after) {
    // (at, _id) after the cursor, both descending: the $lte bounds the scan, the $or only trims the tie.
    const t = new Date(after.t);
    at.$lte = t;
    filter.$or = [{ at: { $lt: t } }, { _id: { $lt: after.id } }];
  }
  if (Object.keys(at).length > 0) filter.at = at;
  return { filter, sort: AUDIT_ORDER };
}

export class MongoAuditLog implements AuditLog {
  readonly kind = "mongodb";
  private readonly audit: Collection<AuditDoc>;
  private closed = false;

  private constructor(db: Db, bucket: string) {
    this.audit = db.collection<AuditDoc>(`${bucket}.audit`);
  }

  /** @throws AppError STORAGE_UNAVAILABLE when an index cannot be created. */
  static async open(options: { db: Db; bucket: string; logger: Logger }): Promise<MongoAuditLog> {
    const log = new MongoAuditLog(options.db, options.bucket);
    try {
      await log.audit.createIndexes(AUDIT_INDEXES);
    } catch (err) {
      throw storageError(err, `create the indexes of ${options.bucket}.audit`);
    }
    return log;
  }

  private assertOpen(): void {
    if (this.closed) throw new AppError("STORAGE_UNAVAILABLE", "audit log is closed");
  }

  async append(event: AuditEvent): Promise<void> {
    this.assertOpen();
    const { id, ...rest } = event;
    try {
      await this.audit.insertOne({
        _id: id,
        ...rest,
        actor: { ...rest.actor },
        client: { ...rest.client },
        detail: { ...rest.detail },
      });
    } catch (err) {
      if (isDuplicateKey(err)) return; // a retried append: the event is recorded once
      throw storageError(err, "append an audit event");
    }
  }

  async query(query: AuditQuery): Promise<AuditPage> {
    this.assertOpen();
    const after = query.cursor !== undefined ? decodeCursor(query.cursor) : null;
    const shape = auditShape(query, after);
    let docs: AuditDoc[];
    try {
      docs = await this.audit
        .find(shape.filter)
        .sort(shape.sort)
        .limit(query.limit + 1)
        .toArray();
    } catch (err) {
      throw storageError(err, "query audit events");
    }
    const events: AuditEvent[] = docs.slice(0, query.limit).map(({ _id, ...rest }) => ({ id: _id, ...rest }));
    const last = events[events.length - 1];
    return { events, nextCursor: docs.length > query.limit && last ? encodeAuditCursor(last) : null };
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}
