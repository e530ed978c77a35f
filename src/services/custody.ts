import { randomUUID } from "node:crypto";
import { AppError, isStorageFull } from "../errors.js";
import type { Logger } from "../logger.js";
import type { BlobStore, CarveCatalog, CatalogEntry } from "../storage/contracts.js";
import type { CarveRecord, LegalHold, Verification } from "../storage/model.js";
import { crashPoint } from "../util/crash-point.js";
import type { SessionCache } from "./ingest.js";
import { VISIBLE, type CarveReadsService } from "./records.js";
import type { Custody } from "./types.js";

/**
 * Deletes a carve in two steps: the catalog entry is marked deleting (from then on the carve is invisible to
 * every process), then its bytes and the entry are removed. A process that dies in between leaves a "deleting"
 * entry that retention (or this process's next start) finishes.
 */
export async function removeCarve(
  deps: { catalog: CarveCatalog; blobs: BlobStore; sessions: SessionCache; logger: Logger },
  entry: CatalogEntry,
  token: string,
): Promise<number> {
  deps.sessions.delete(entry.sessionId);
  const freed = await deps.blobs.delete({ carveId: entry.carveId, sessionId: entry.sessionId });
  await deps.catalog.remove(entry.carveId, { states: ["deleting"], claim: token });
  return freed;
}

/**
 * Runs a custody write; when it finds the storage full, the deployment's custody reserve (if any) is released and
 * the write tried once more: holds, verifications and their audit must keep working on a full disk.
 */
export async function withCustodyRoom<T>(releaseReserve: (() => boolean) | undefined, write: () => Promise<T>): Promise<T> {
  try {
    return await write();
  } catch (err) {
    if (!isStorageFull(err) || !releaseReserve?.()) throw err;
    return write();
  }
}

export class CustodyService implements Custody {
  constructor(
    private readonly deps: {
      catalog: CarveCatalog;
      blobs: BlobStore;
      reads: CarveReadsService;
      sessions: SessionCache;
      logger: Logger;
      now: () => Date;
      releaseReserve?: () => boolean;
    },
  ) {}

  private room<T>(write: () => Promise<T>): Promise<T> {
    return withCustodyRoom(this.deps.releaseReserve, write);
  }

  private async recordAfter(entry: CatalogEntry | null): Promise<CarveRecord> {
    if (!entry) throw new AppError("CARVE_NOT_FOUND");
    return (await this.deps.reads.withProgress(entry)).record;
  }

  async placeHold(carveId: string, hold: LegalHold): Promise<CarveRecord> {
    await this.deps.reads.entry(carveId);
    // One conditional update: two responders placing holds at once cannot both succeed.
    const placed = await this.room(() => this.deps.catalog.update(carveId, { states: VISIBLE, unheld: true }, { hold: { ...hold } }));
    if (placed) return this.recordAfter(placed);
    const current = await this.deps.reads.entry(carveId);
    if (current.hold) throw new AppError("HOLD_EXISTS");
    throw new AppError("CARVE_NOT_FOUND");
  }

  async releaseHold(carveId: string): Promise<CarveRecord> {
    await this.deps.reads.entry(carveId);
    return this.recordAfter(await this.room(() => this.deps.catalog.update(carveId, { states: VISIBLE }, { hold: null })));
  }

  async recordVerification(carveId: string, verification: Verification): Promise<CarveRecord> {
    await this.deps.reads.entry(carveId);
    const entry = await this.room(() => this.deps.catalog.update(carveId, { states: VISIBLE }, { addVerification: { ...verification } }));
    return this.recordAfter(entry);
  }

  async delete(carveId: string): Promise<{ bytesFreed: number }> {
    const entry = await this.deps.reads.entry(carveId);
    if (entry.hold) throw new AppError("CARVE_ON_HOLD");
    const { record } = await this.deps.reads.withProgress(entry);
    const token = randomUUID();
    const marked = await this.deps.catalog.update(
      carveId,
      { states: VISIBLE, unheld: true, sessionId: entry.sessionId },
      { state: "deleting", claim: token, stateSince: this.deps.now() },
    );
    if (!marked) {
      const current = await this.deps.reads.entry(carveId);
      throw new AppError(current.hold ? "CARVE_ON_HOLD" : "CARVE_NOT_FOUND");
    }
    crashPoint("delete.after-mark");
    await removeCarve(this.deps, marked, token);
    const bytesFreed = record.bytesReceived;
    this.deps.logger.info({ carveId, bytesFreed }, "carve deleted");
    return { bytesFreed };
  }
}
