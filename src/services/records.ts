import { AppError } from "../errors.js";
import type { BlobStore, CarveCatalog, CatalogEntry, EntryState, UploadProgress } from "../storage/contracts.js";
import type { ByteRange, CarveRecord, ListPage, ListQuery, Session, ArchiveHandle } from "../storage/model.js";
import { copyAgent } from "../storage/model.js";
import { isSafeId } from "../carves/geometry.js";
import type { CarveReads } from "./types.js";

/** States a reader sees; "completing" reads as receiving. */
export const VISIBLE: readonly EntryState[] = ["receiving", "completing", "complete"];

export function sessionOf(entry: CatalogEntry): Session {
  return {
    sessionId: entry.sessionId,
    carveId: entry.carveId,
    requestId: entry.requestId,
    nodeKeySha256: entry.nodeKeySha256,
    blockCount: entry.blockCount,
    blockSize: entry.blockSize,
    carveSize: entry.carveSize,
    agent: copyAgent(entry.agent),
    createdAt: entry.createdAt,
  };
}

/**
 * A catalog entry as readers see it. Progress of a carve being received comes from the blob store (the catalog
 * is not written per block); `progress` null for a receiving carve means its staging is gone (deleted meanwhile).
 */
export function recordOf(entry: CatalogEntry, progress: UploadProgress | null): CarveRecord {
  const complete = entry.state === "complete";
  // Field by field rather than `...sessionOf(entry)` and the rest: V8 builds a spread followed by this many
  // properties on a slow path, ~20 us per record, which was most of a list page's CPU.
  return {
    sessionId: entry.sessionId,
    carveId: entry.carveId,
    requestId: entry.requestId,
    nodeKeySha256: entry.nodeKeySha256,
    blockCount: entry.blockCount,
    blockSize: entry.blockSize,
    carveSize: entry.carveSize,
    agent: copyAgent(entry.agent),
    createdAt: entry.createdAt,
    status: complete ? "complete" : "receiving",
    updatedAt: complete ? (entry.completedAt ?? entry.stateSince) : (progress?.lastBlockAt ?? entry.createdAt),
    completedAt: complete ? entry.completedAt : null,
    blocksReceived: complete ? entry.blockCount : (progress?.blocksReceived ?? (entry.state === "completing" ? entry.blockCount : 0)),
    bytesReceived: complete ? entry.carveSize : (progress?.bytesReceived ?? (entry.state === "completing" ? entry.carveSize : 0)),
    sha256: complete ? entry.sha256 : null,
    compression: complete ? entry.compression : null,
    hold: entry.hold ? { ...entry.hold } : null,
    origin: entry.origin,
    imported: entry.imported ? { ...entry.imported, importedBy: { ...entry.imported.importedBy } } : null,
    verifications: entry.verifications.map((v) => ({ ...v })),
  };
}

/** Reads of records and archives: one catalog read per request, plus the blob store for progress or bytes. */
export class CarveReadsService implements CarveReads {
  constructor(private readonly deps: { catalog: CarveCatalog; blobs: BlobStore }) {}

  /** The visible entry of a carve. @throws AppError CARVE_NOT_FOUND */
  async entry(carveId: string): Promise<CatalogEntry> {
    if (!isSafeId(carveId)) throw new AppError("CARVE_NOT_FOUND");
    const entry = await this.deps.catalog.get(carveId);
    if (!entry || !VISIBLE.includes(entry.state)) throw new AppError("CARVE_NOT_FOUND");
    return entry;
  }

  async withProgress(entry: CatalogEntry, missingLimit = 0): Promise<{ record: CarveRecord; missing: number[] }> {
    if (entry.state === "complete") return { record: recordOf(entry, null), missing: [] };
    const progress = await this.deps.blobs.progress(sessionOf(entry), missingLimit);
    return { record: recordOf(entry, progress), missing: progress?.missing ?? [] };
  }

  async get(carveId: string): Promise<CarveRecord> {
    return (await this.withProgress(await this.entry(carveId))).record;
  }

  async list(query: ListQuery): Promise<ListPage> {
    const page = await this.deps.catalog.list(query);
    const carves = await Promise.all(page.entries.map(async (e) => (await this.withProgress(e)).record));
    return { carves, nextCursor: page.nextCursor };
  }

  async missingBlocks(carveId: string, limit: number): Promise<number[]> {
    return (await this.withProgress(await this.entry(carveId), limit)).missing;
  }

  async openArchive(carveId: string, range?: ByteRange): Promise<ArchiveHandle> {
    const entry = await this.entry(carveId);
    if (entry.state !== "complete" || !entry.compression) throw new AppError("CARVE_NOT_COMPLETE");
    const reader = await this.deps.blobs.read(
      { carveId, sessionId: entry.sessionId, compression: entry.compression, size: entry.carveSize },
      range,
    );
    return { record: recordOf(entry, null), stream: reader.stream, ...(reader.readAt ? { readAt: reader.readAt } : {}) };
  }
}
