import type { Collection, Db, FindCursor, UpdateFilter } from "mongodb";
import { AppError } from "../../errors.js";
import type { Logger } from "../../logger.js";
import type { CarveCatalog, CatalogEntry, EntryCondition, EntryPage, EntryPatch, ExpirySweep, ReceivingLoad } from "../contracts.js";
import { decodeCursor, encodeCursor } from "../listing.js";
import {
  MAX_VERIFICATIONS_KEPT,
  type AgentInfo,
  type ExpiryCriteria,
  type LegalHold,
  type ListQuery,
  type StoreHealth,
} from "../model.js";
import { copyHold, copyVerification, docOf, entryOf, type CarveDoc } from "./carve-doc.js";
import {
  CATALOG_INDEXES,
  conditionShape,
  countShapes,
  listShape,
  receivingLoadPipeline,
  sessionShape,
  sweepShapes,
  type QueryShape,
} from "./catalog-queries.js";
import { migrateGridfsV1 } from "./migrate-gridfs.js";
import { isDuplicateKey, pingHealth, storageError } from "./mongo-connection.js";

/*
 * The carve catalog in `<bucket>.carves`, one document per carve (_id = carve id). Every transition is one
 * conditional write whose condition is in the filter (findOneAndUpdate, deleteOne), so concurrent service
 * processes agree without locks; uniqueness of carve id and session id comes from the _id and sessionId
 * indexes. The queries and their indexes are in ./catalog-queries.ts.
 */

export interface MongoCatalogOptions {
  /** From openMongo (./mongo-connection.ts); the catalog never closes the client it was given. */
  db: Db;
  bucket: string;
  logger: Logger;
}

const NODE_PREFIX = /^[0-9a-f]{0,64}$/;

export class MongoCarveCatalog implements CarveCatalog {
  readonly kind = "mongodb";
  private readonly carves: Collection<CarveDoc>;
  private closed = false;

  private constructor(private readonly options: MongoCatalogOptions) {
    this.carves = options.db.collection<CarveDoc>(`${options.bucket}.carves`);
  }

  /**
   * Creates the catalog's indexes (the driver's lazy creation swallows errors, so it is not relied upon), then
   * upgrades a database written by the release that kept everything in `<bucket>.sessions`
   * (./migrate-gridfs.ts): the catalog is complete when this resolves.
   * @throws AppError STORAGE_UNAVAILABLE when an index cannot be created or the upgrade fails.
   */
  static async open(options: MongoCatalogOptions): Promise<MongoCarveCatalog> {
    const catalog = new MongoCarveCatalog(options);
    try {
      await catalog.carves.createIndexes(CATALOG_INDEXES);
    } catch (err) {
      throw storageError(err, `create the indexes of ${options.bucket}.carves`);
    }
    await migrateGridfsV1(options);
    return catalog;
  }

  private assertOpen(): void {
    if (this.closed) throw new AppError("STORAGE_UNAVAILABLE", "catalog is closed");
  }

  private async run<T>(what: string, op: () => Promise<T>): Promise<T> {
    this.assertOpen();
    try {
      return await op();
    } catch (err) {
      throw storageError(err, what);
    }
  }

  private find(shape: QueryShape, limit: number): FindCursor<CarveDoc> {
    let cursor = this.carves.find(shape.filter);
    if (shape.sort) cursor = cursor.sort(shape.sort);
    if (shape.hint) cursor = cursor.hint(shape.hint);
    return cursor.limit(limit);
  }

  async create(entry: CatalogEntry): Promise<{ entry: CatalogEntry; created: boolean }> {
    const doc = docOf(entry);
    // A duplicate key names the carve id or the session id; which one is read back. Another attempt only
    // when the conflicting entry was removed in between.
    for (let attempt = 0; attempt < 3; attempt++) {
      const inserted = await this.run(`create the entry of ${entry.carveId}`, async () => {
        try {
          await this.carves.insertOne(doc);
          return true;
        } catch (err) {
          if (isDuplicateKey(err)) return false;
          throw err;
        }
      });
      if (inserted) return { entry: entryOf(doc), created: true };
      const existing = await this.get(entry.carveId);
      if (existing) return { entry: existing, created: false };
      if (await this.getBySession(entry.sessionId)) {
        throw new AppError("CARVE_ID_CONFLICT", "the session id belongs to another carve");
      }
    }
    throw new AppError("STORAGE_UNAVAILABLE", "the entry kept changing while it was created");
  }

  async get(carveId: string): Promise<CatalogEntry | null> {
    const doc = await this.run(`read the entry of ${carveId}`, () => this.carves.findOne({ _id: carveId }));
    return doc ? entryOf(doc) : null;
  }

  async getBySession(sessionId: string): Promise<CatalogEntry | null> {
    const doc = await this.run("read an entry by session", () => this.carves.findOne(sessionShape(sessionId).filter));
    return doc ? entryOf(doc) : null;
  }

  async list(query: ListQuery): Promise<EntryPage> {
    this.assertOpen();
    const after = query.cursor !== undefined ? decodeCursor(query.cursor) : null;
    const prefix = query.nodeSha256Prefix?.toLowerCase();
    if (prefix !== undefined && !NODE_PREFIX.test(prefix))
      throw new AppError("INVALID_QUERY", "node prefix is not hex");
    const shape = listShape(
      {
        ...(query.status ? { status: query.status } : {}),
        ...(prefix ? { nodeSha256Prefix: prefix } : {}),
        ...(query.since ? { since: query.since } : {}),
        ...(query.until ? { until: query.until } : {}),
      },
      after,
    );
    const docs = await this.run("list entries", () => this.find(shape, query.limit + 1).toArray());
    const entries = docs.slice(0, query.limit).map(entryOf);
    const last = entries[entries.length - 1];
    return { entries, nextCursor: docs.length > query.limit && last ? encodeCursor(last) : null };
  }

  async update(carveId: string, condition: EntryCondition, patch: EntryPatch): Promise<CatalogEntry | null> {
    const { filter } = conditionShape(carveId, condition);
    const { addVerification, ...fields } = patch;
    const set: Partial<CarveDoc> = {};
    for (const [key, value] of Object.entries(fields)) {
      if (value !== undefined)
        (set as Record<string, unknown>)[key] = key === "hold" ? copyHold(value as LegalHold | null) : value;
    }
    const update: UpdateFilter<CarveDoc> = {};
    if (Object.keys(set).length > 0) update.$set = set;
    if (addVerification) {
      update.$push = { verifications: { $each: [copyVerification(addVerification)], $slice: -MAX_VERIFICATIONS_KEPT } };
    }
    const doc = await this.run(`update the entry of ${carveId}`, () =>
      Object.keys(update).length === 0
        ? this.carves.findOne(filter)
        : this.carves.findOneAndUpdate(filter, update, { returnDocument: "after" }),
    );
    return doc ? entryOf(doc) : null;
  }

  async remove(carveId: string, condition: EntryCondition): Promise<boolean> {
    const { filter } = conditionShape(carveId, condition);
    const result = await this.run(`remove the entry of ${carveId}`, () => this.carves.deleteOne(filter));
    return result.deletedCount === 1;
  }

  async sweep(criteria: ExpiryCriteria, limit: number): Promise<ExpirySweep> {
    const shapes = sweepShapes(criteria);
    const [retention, idle, stale] = await this.run("find expired entries", () =>
      Promise.all([shapes.retention, shapes.idle, shapes.stale].map((s) => this.find(s, limit).toArray())),
    );
    return { retention: retention!.map(entryOf), idle: idle!.map(entryOf), stale: stale!.map(entryOf) };
  }

  async count(): Promise<{ receiving: number; complete: number }> {
    const shapes = countShapes();
    const [receiving, complete] = await this.run("count entries", () =>
      Promise.all([
        this.carves.countDocuments(shapes.receiving.filter),
        this.carves.countDocuments(shapes.complete.filter),
      ]),
    );
    return { receiving, complete };
  }

  async receivingLoad(agent: AgentInfo): Promise<ReceivingLoad> {
    const { pipeline } = receivingLoadPipeline(agent);
    const [load] = await this.run("sum the receiving entries", () => this.carves.aggregate<ReceivingLoad>(pipeline).toArray());
    return { carves: load?.carves ?? 0, fromAgent: load?.fromAgent ?? 0, declaredBytes: load?.declaredBytes ?? 0 };
  }

  async health(): Promise<StoreHealth> {
    const detail = { database: this.options.db.databaseName, collection: this.carves.collectionName };
    if (this.closed) return { ok: false, backend: this.kind, detail: { ...detail, error: "closed" } };
    return pingHealth(this.options.db, this.kind, detail);
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}
