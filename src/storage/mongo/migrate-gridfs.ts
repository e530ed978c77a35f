import { createHash } from "node:crypto";
import type { Db } from "mongodb";
import type { Logger } from "../../logger.js";
import { crashPoint } from "../../util/crash-point.js";
import type { CatalogEntry, EntryState } from "../contracts.js";
import { copyAgent } from "../model.js";
import type { AgentInfo, Compression, ImportSource, LegalHold, Verification } from "../model.js";
import { docOf, type CarveDoc } from "./carve-doc.js";
import { SUPERSEDED_AUDIT_INDEXES } from "./mongo-audit-log.js";
import { isDuplicateKey, storageError } from "./mongo-connection.js";

/*
 * Upgrade in place of a database written by the release whose GridFS store kept one `<bucket>.sessions`
 * document per carve holding everything: catalog fields, upload progress, and osquery's raw node key.
 * Afterwards the catalog lives in `<bucket>.carves` (node key as SHA-256 only) and `<bucket>.sessions` holds
 * upload progress of unfinished uploads only, marked `v: 2`; a document without `v` is from the old release.
 *
 * Per document, in this order: (1) insert its catalog entry unless one exists, (2) strip the catalog fields and
 * the raw node key from the sessions document and mark it v: 2, or remove it when the upload is over
 * (complete: the files document and chunks are the archive; deleting or importing: the catalog entry is
 * enough for retention to finish the delete or drop the import). A kill between the steps is repaired by the
 * next start: step 1 finds its entry and writes nothing, step 2 runs. Step 1 never overwrites, so a second
 * process migrating at the same time, or a later start, cannot replace an entry the service has moved on.
 * `<bucket>.files` documents already held only node_key_sha256 and are the archive format; `<bucket>.chunks`
 * and `<bucket>.audit` documents keep their shape.
 */

/** A `<bucket>.sessions` document as the previous release wrote it. */
interface V1SessionDoc {
  _id: string;
  v?: number;
  sessionId: string;
  requestId: string;
  nodeKey: string;
  blockCount: number;
  blockSize: number;
  carveSize: number;
  agent: AgentInfo;
  createdAt: Date;
  updatedAt: Date;
  status: EntryState;
  completingSince?: Date | null;
  completer?: string | null;
  deletingSince?: Date | null;
  sha256?: string | null;
  compression?: Compression | null;
  completedAt?: Date | null;
  hold?: LegalHold | null;
  origin?: "agent" | "import";
  imported?: ImportSource | null;
  verifications?: Verification[];
}

const STATES: readonly string[] = ["receiving", "completing", "complete", "deleting", "importing"];

/**
 * Fields of a v1 sessions document that are not upload progress (src/storage/gridfs/gridfs-blobs.ts, UploadDoc):
 * the catalog's, the raw node key, and the status (the catalog's state now; a claim lives there too).
 */
const CATALOG_ONLY = [
  "status",
  "requestId",
  "nodeKey",
  "agent",
  "completingSince",
  "completer",
  "deletingSince",
  "sha256",
  "compression",
  "completedAt",
  "hold",
  "origin",
  "imported",
  "verifications",
] as const;

/**
 * Indexes the previous release kept on `<bucket>.sessions` for listing and retention, which the catalog does now:
 * left in place, every block would still update status_updatedAt.
 */
const OLD_SESSIONS_INDEXES = ["status_updatedAt", "createdAt_desc"];

export interface MigrationReport {
  /** Catalog entries written by this run. */
  entries: number;
  /** Sessions documents turned into v2 progress documents. */
  progress: number;
  /** Sessions documents removed (uploads that were over). */
  removed: number;
  /** Documents without `v` that are not v1 documents either: left untouched, logged. */
  skipped: number;
}

function isV1(doc: Record<string, unknown>): doc is Record<string, unknown> & V1SessionDoc {
  return (
    typeof doc._id === "string" &&
    typeof doc.sessionId === "string" &&
    typeof doc.requestId === "string" &&
    typeof doc.nodeKey === "string" &&
    typeof doc.agent === "object" &&
    doc.agent !== null &&
    doc.createdAt instanceof Date &&
    doc.updatedAt instanceof Date &&
    typeof doc.status === "string" &&
    STATES.includes(doc.status)
  );
}

/** The catalog entry a v1 document describes; exported for the migration test. */
export function entryFromV1(doc: V1SessionDoc): CatalogEntry {
  const stateSince =
    doc.status === "completing"
      ? (doc.completingSince ?? doc.updatedAt)
      : doc.status === "deleting"
        ? (doc.deletingSince ?? doc.updatedAt)
        : doc.status === "complete"
          ? (doc.completedAt ?? doc.updatedAt)
          : doc.updatedAt;
  const origin = doc.origin ?? "agent";
  // An import is one block holding the whole archive on every backend (importGeometry, src/services/imports.ts);
  // this release recorded its 1 MiB GridFS chunks instead. Its bytes are read by the files document, not this.
  const geometry =
    origin === "import"
      ? { blockCount: 1, blockSize: doc.carveSize, carveSize: doc.carveSize }
      : { blockCount: doc.blockCount, blockSize: doc.blockSize, carveSize: doc.carveSize };
  return {
    carveId: doc._id,
    sessionId: doc.sessionId,
    requestId: doc.requestId,
    nodeKeySha256: doc.nodeKey === "" ? null : createHash("sha256").update(doc.nodeKey, "utf8").digest("hex"),
    ...geometry,
    agent: copyAgent(doc.agent),
    createdAt: doc.createdAt,
    state: doc.status,
    stateSince,
    claim: doc.status === "completing" ? (doc.completer ?? null) : null,
    completedAt: doc.completedAt ?? null,
    sha256: doc.sha256 ?? null,
    compression: doc.compression ?? null,
    hold: doc.hold ?? null,
    origin,
    imported: doc.imported ?? null,
    verifications: doc.verifications ?? [],
  };
}

/**
 * Migrates every v1 sessions document of `bucket` (none: a couple of cheap queries). Safe to run at every
 * start, from several processes at once, and again after a kill at any point.
 * @throws AppError STORAGE_UNAVAILABLE when MongoDB fails; what was migrated stays migrated.
 */
export async function migrateGridfsV1(options: { db: Db; bucket: string; logger: Logger }): Promise<MigrationReport> {
  const { db, bucket, logger } = options;
  const sessions = db.collection<Record<string, unknown> & { _id: string }>(`${bucket}.sessions`);
  const carves = db.collection<CarveDoc>(`${bucket}.carves`);
  const report: MigrationReport = { entries: 0, progress: 0, removed: 0, skipped: 0 };
  const v1 = { v: { $exists: false } };
  try {
    // Ids first, then each document read afresh: another process may have migrated it meanwhile.
    const ids = await sessions
      .find(v1, { projection: { _id: 1 } })
      .map((d) => d._id)
      .toArray();
    for (const id of ids) {
      const doc = await sessions.findOne({ _id: id, ...v1 }, { projection: { b: 0 } });
      if (!doc) continue;
      if (!isV1(doc)) {
        report.skipped++;
        logger.warn(
          { collection: sessions.collectionName, id },
          "a sessions document of unknown shape is left as it is",
        );
        continue;
      }
      const entry = docOf(entryFromV1(doc));
      try {
        await carves.insertOne(entry);
        report.entries++;
      } catch (err) {
        if (!isDuplicateKey(err)) throw err;
        // Written by a run that was killed before step 2, or by another process: never overwritten.
        if (!(await carves.findOne({ _id: entry._id }, { projection: { _id: 1 } }))) throw err;
      }
      crashPoint("migrate.mid-gridfs");
      if (doc.status === "receiving" || doc.status === "completing") {
        const unset = Object.fromEntries(CATALOG_ONLY.map((f) => [f, ""] as [string, ""]));
        const done = await sessions.updateOne({ _id: id, ...v1 }, { $set: { v: 2 }, $unset: unset });
        report.progress += done.modifiedCount;
      } else {
        const done = await sessions.deleteOne({ _id: id, ...v1 });
        report.removed += done.deletedCount;
      }
    }
    await dropSuperseded(db, `${bucket}.audit`, SUPERSEDED_AUDIT_INDEXES);
    await dropSuperseded(db, `${bucket}.sessions`, OLD_SESSIONS_INDEXES);
  } catch (err) {
    throw storageError(err, `upgrade ${bucket}.sessions`);
  }
  if (report.entries + report.progress + report.removed > 0) {
    logger.info({ bucket, ...report }, "upgraded the carve records of the previous release into the catalog");
  }
  return report;
}

async function dropSuperseded(db: Db, collection: string, names: readonly string[]): Promise<void> {
  let present: string[];
  try {
    present = (await db.collection(collection).listIndexes().toArray()).map((i: { name?: unknown }) => String(i.name));
  } catch (err) {
    if ((err as { code?: unknown }).code === 26) return; // NamespaceNotFound: no audit trail yet
    throw err;
  }
  for (const name of names) {
    if (!present.includes(name)) continue;
    await db
      .collection(collection)
      .dropIndex(name)
      .catch((err: unknown) => {
        // IndexNotFound: another process starting at the same time dropped it first.
        if ((err as { code?: unknown }).code !== 27) throw err;
      });
  }
}
