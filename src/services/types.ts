import type { ImportLimits } from "../storage/contracts.js";
import type {
  ArchiveHandle,
  AuditEvent,
  AuditPage,
  AuditQuery,
  ByteRange,
  CarveRecord,
  ExpiryCandidate,
  ExpiryCriteria,
  ImportSpec,
  LegalHold,
  ListPage,
  ListQuery,
  StoreHealth,
  Verification,
} from "../storage/model.js";

/*
 * What HTTP handlers, jobs and CLIs call. Handlers validate, call one of these and answer; the rules (protocol
 * checks, state transitions, custody, expiry) live behind them, written once for every backend.
 */

/** Reads of carve records and archives. */
export interface CarveReads {
  /** @throws AppError CARVE_NOT_FOUND */
  get(carveId: string): Promise<CarveRecord>;
  /** Newest first. @throws AppError INVALID_QUERY for a bad cursor */
  list(query: ListQuery): Promise<ListPage>;
  /** Block ids not yet stored, ascending, at most `limit`. @throws AppError CARVE_NOT_FOUND */
  missingBlocks(carveId: string, limit: number): Promise<number[]>;
  /**
   * A complete carve's record and its archive's bytes (or a range), from one record read.
   * @throws AppError CARVE_NOT_FOUND, CARVE_NOT_COMPLETE
   */
  openArchive(carveId: string, range?: ByteRange): Promise<ArchiveHandle>;
}

/** Legal holds, deletion and verifications. */
export interface Custody {
  /** @throws AppError CARVE_NOT_FOUND, HOLD_EXISTS (a hold is in place: it is kept) */
  placeHold(carveId: string, hold: LegalHold): Promise<CarveRecord>;
  /** Lifts the hold; lifting none is not an error. @throws AppError CARVE_NOT_FOUND */
  releaseHold(carveId: string): Promise<CarveRecord>;
  /** Deletes a carve and everything it owns. @throws AppError CARVE_NOT_FOUND, CARVE_ON_HOLD */
  delete(carveId: string): Promise<{ bytesFreed: number }>;
  /** Keeps the newest MAX_VERIFICATIONS_KEPT. @throws AppError CARVE_NOT_FOUND */
  recordVerification(carveId: string, verification: Verification): Promise<CarveRecord>;
}

/** Archives collected out of band become carves like any other. */
export interface Imports {
  /**
   * @throws AppError IMPORT_TOO_LARGE, IMPORT_HASH_MISMATCH, IMPORT_EMPTY, IMPORT_ABORTED, CARVE_ID_CONFLICT
   */
  importArchive(spec: ImportSpec, data: AsyncIterable<Buffer>, limits: ImportLimits): Promise<CarveRecord>;
}

/** The one audit trail, used by HTTP, retention and the CLIs alike. */
export interface AuditTrail {
  record(event: AuditEvent): Promise<void>;
  /** @throws AppError INVALID_QUERY for a bad cursor */
  list(query: AuditQuery): Promise<AuditPage>;
}

/** What retention may delete, and deleting it only if it still may. */
export interface Expiry {
  /** Up to `limit` carves retention may delete now (never held ones), oldest first. */
  findExpired(criteria: ExpiryCriteria, limit: number): Promise<ExpiryCandidate[]>;
  /**
   * Deletes the carve if, atomically with the delete, it is still expired and unheld (a block or a hold since it
   * was selected keeps it); finishes a delete or a completion a dead process left. Several processes at once:
   * exactly one gets `deleted: true`.
   */
  deleteIfExpired(carveId: string, criteria: ExpiryCriteria): Promise<{ deleted: boolean; bytesFreed: number }>;
  /**
   * Finishes completions whose claim is older than `staleBefore` (their process died) and uploads whose every
   * block is stored but whose completion never began; with `exclusive`, claims of any age and imports in progress
   * (this process owns the storage).
   */
  recover(options: { exclusive: boolean; staleBefore: Date; limit?: number }): Promise<{ completed: number; deleted: number }>;
}

export interface StorageStatus {
  health(): Promise<StoreHealth>;
  /** Bytes storage can still take, when it can tell. */
  freeBytes(): Promise<number | null>;
}
