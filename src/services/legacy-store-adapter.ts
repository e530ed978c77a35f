import { createHash } from "node:crypto";
import { AppError } from "../errors.js";
import type { CarveRecord as StoredRecord, CarveStore } from "../storage/carve-store.js";
import type { ImportLimits } from "../storage/contracts.js";
import type { ArchiveHandle, CarveRecord, ListPage, ListQuery } from "../storage/model.js";
import { Mutex } from "../util/mutex.js";
import type { AuditTrail, CarveReads, Custody, Expiry, Imports, StorageStatus } from "./types.js";

/*
 * TEMPORARY: the service interfaces of src/services/types.ts over the current 17-method CarveStore, so HTTP can
 * call services while the storage redesign (issue 14) lands. The rules here are the store's own; the real
 * services replace this file, and with it the check-then-set of placeHold (serialised in this process only) and
 * the scanning node filter.
 */

export interface LegacyServices {
  reads: CarveReads;
  custody: Custody;
  imports: Imports;
  audit: AuditTrail;
  expiry: Expiry;
  status: StorageStatus;
}

/** A node-filtered listing reads at most this many records per request before returning a partial page. */
export const NODE_FILTER_SCAN = 5000;

function sha256Hex(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

/** The record as services hand it out: the node key (the node's enrollment secret) only as its SHA-256. */
export function fromStored(stored: StoredRecord): CarveRecord {
  const { nodeKey, ...rest } = stored;
  return { ...rest, nodeKeySha256: nodeKey === "" ? null : sha256Hex(nodeKey) };
}

function handleOf(handle: Awaited<ReturnType<CarveStore["openArchive"]>>): ArchiveHandle {
  return { ...handle, record: fromStored(handle.record) };
}

/**
 * Newest first. The store cannot filter by node key hash: a filtered listing reads store pages that ask for no
 * more than the matches still wanted (so each page's cursor is a valid resume point) and stops after
 * NODE_FILTER_SCAN records with what it found.
 */
async function list(store: CarveStore, query: ListQuery): Promise<ListPage> {
  const { nodeSha256Prefix: prefix, cursor: first, ...base } = query;
  if (prefix === undefined) {
    const page = await store.listCarves({ ...base, ...(first ? { cursor: first } : {}) });
    return { carves: page.carves.map(fromStored), nextCursor: page.nextCursor };
  }
  const carves: CarveRecord[] = [];
  let cursor = first;
  let scanned = 0;
  let nextCursor: string | null = null;
  for (;;) {
    const page = await store.listCarves({ ...base, limit: query.limit - carves.length, ...(cursor ? { cursor } : {}) });
    scanned += page.carves.length;
    for (const stored of page.carves) {
      const record = fromStored(stored);
      if (record.nodeKeySha256?.startsWith(prefix)) carves.push(record);
    }
    nextCursor = page.nextCursor;
    if (nextCursor === null || carves.length >= query.limit || scanned >= NODE_FILTER_SCAN) break;
    cursor = nextCursor;
  }
  return { carves, nextCursor };
}

export function legacyServices(store: CarveStore): LegacyServices {
  const reads: CarveReads = {
    get: async (carveId) => fromStored(await store.getCarve(carveId)),
    list: (query) => list(store, query),
    missingBlocks: (carveId, limit) => store.missingBlocks(carveId, limit),
    openArchive: async (carveId, range) => handleOf(await store.openArchive(carveId, range)),
  };

  const holds = new Mutex();
  const custody: Custody = {
    // Check, then set: the store has no conditional hold. Atomic within this process; the real Custody service
    // makes it atomic across processes.
    placeHold: (carveId, hold) =>
      holds.run(async () => {
        if ((await store.getCarve(carveId)).hold) throw new AppError("HOLD_EXISTS");
        return fromStored(await store.setHold(carveId, hold));
      }),
    releaseHold: async (carveId) => fromStored(await store.setHold(carveId, null)),
    async delete(carveId) {
      const { deleted, bytesFreed } = await store.deleteCarve(carveId);
      // Not deleted: another process was finishing the same delete; the carve is gone all the same.
      if (!deleted) throw new AppError("CARVE_NOT_FOUND");
      return { bytesFreed };
    },
    recordVerification: async (carveId, verification) => fromStored(await store.recordVerification(carveId, verification)),
  };

  const imports: Imports = {
    importArchive: async (spec, data, limits: ImportLimits) => fromStored(await store.importCarve(spec, data, limits)),
  };

  const audit: AuditTrail = {
    record: (event) => store.appendAudit(event),
    list: (query) => store.listAudit(query),
  };

  const expiry: Expiry = {
    findExpired: (criteria, limit) => store.findExpired(criteria, limit),
    deleteIfExpired: (carveId, criteria) => store.deleteCarve(carveId, { onlyIfExpired: criteria }),
  };

  const status: StorageStatus = {
    health: () => store.health(),
    freeBytes: () => store.freeBytes(),
  };

  return { reads, custody, imports, audit, expiry, status };
}
