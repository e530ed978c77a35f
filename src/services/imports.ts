import { AppError } from "../errors.js";
import type { Logger } from "../logger.js";
import type { BlobStore, CarveCatalog, CatalogEntry, ImportLimits } from "../storage/contracts.js";
import type { CarveRecord, ImportSpec } from "../storage/model.js";
import { copyAgent } from "../storage/model.js";
import { isSafeId } from "../carves/geometry.js";
import type { CarveReadsService } from "./records.js";
import type { Imports } from "./types.js";

/**
 * The geometry an imported archive reports: one block holding the whole archive. It arrived in one piece, not
 * in osquery blocks, and every backend reports it the same way whatever it uses internally.
 */
export function importGeometry(size: number): { blockCount: number; blockSize: number; carveSize: number } {
  return { blockCount: 1, blockSize: size, carveSize: size };
}

export class ImportService implements Imports {
  constructor(
    private readonly deps: { catalog: CarveCatalog; blobs: BlobStore; reads: CarveReadsService; logger: Logger; now: () => Date },
  ) {}

  async importArchive(spec: ImportSpec, data: AsyncIterable<Buffer>, limits: ImportLimits): Promise<CarveRecord> {
    const { catalog, blobs } = this.deps;
    if (!isSafeId(spec.carveId) || !isSafeId(spec.sessionId)) throw new AppError("INVALID_START", "unsafe identifier");
    const now = this.deps.now();
    const entry: CatalogEntry = {
      carveId: spec.carveId,
      sessionId: spec.sessionId,
      requestId: "import",
      nodeKeySha256: null,
      ...importGeometry(0),
      agent: copyAgent(spec.agent),
      createdAt: now,
      // Invisible until the whole archive is in: retention removes it if this process dies meanwhile.
      state: "importing",
      stateSince: now,
      claim: null,
      completedAt: null,
      sha256: null,
      compression: null,
      hold: null,
      origin: "import",
      imported: spec.source,
      verifications: [],
    };
    // The carve id is claimed first, so nothing else can take it while the bytes stream in.
    const { created } = await catalog.create(entry);
    if (!created) throw new AppError("CARVE_ID_CONFLICT");
    const mine = { states: ["importing"] as const, sessionId: spec.sessionId };
    const target = { carveId: spec.carveId, sessionId: spec.sessionId };
    let facts;
    try {
      facts = await blobs.importArchive(target, data, limits, async () => {
        await catalog.update(spec.carveId, mine, { stateSince: this.deps.now() });
      });
    } catch (err) {
      await blobs.delete(target).catch(() => undefined);
      await catalog.remove(spec.carveId, mine).catch(() => undefined);
      throw err;
    }
    const completedAt = this.deps.now();
    const done = await catalog.update(spec.carveId, mine, {
      state: "complete",
      stateSince: completedAt,
      completedAt,
      sha256: facts.sha256,
      compression: facts.compression,
      ...importGeometry(facts.size),
    });
    if (!done) {
      // Removed as a dead import meanwhile (the process stalled past the stale limit): keep nothing.
      await blobs.delete(target).catch(() => undefined);
      throw new AppError("STORAGE_UNAVAILABLE", "the import was abandoned while it streamed");
    }
    this.deps.logger.info({ carveId: spec.carveId, sha256: facts.sha256, compression: facts.compression, size: facts.size }, "archive imported");
    return this.deps.reads.get(spec.carveId);
  }
}
