import type { Readable } from "node:stream";
import type {
  AgentInfo,
  AuditEvent,
  AuditPage,
  AuditQuery,
  ByteRange,
  Compression,
  ExpiryCriteria,
  ImportSource,
  LegalHold,
  ListQuery,
  Session,
  StoreHealth,
  Verification,
} from "./model.js";

/*
 * Storage by role. A deployment is one catalog (what carves exist and in which state), one blob store (their
 * bytes) and one audit log; src/services/ holds the rules that combine them, written once for every backend.
 * Correctness across several service processes comes from these contracts themselves (conditional updates,
 * unique keys, atomic renames), never from in-process locks of a caller.
 *
 * Errors: methods reject with an AppError (src/errors.ts) for the cases their JSDoc lists, and with
 * STORAGE_UNAVAILABLE (cause kept) when the backend itself fails. The conformance suites in test/storage/contracts/
 * run every implementation against these texts.
 */

// ------------------------------------------------------------------------------------------------ catalog

/**
 * The lifecycle of a catalog entry. Only "receiving" and "complete" are visible to readers ("completing" reads
 * as receiving); "importing" and "deleting" entries are invisible and exist so that a crash in the middle of
 * an import or a delete can be finished (or undone) later.
 */
export type EntryState = "receiving" | "completing" | "complete" | "importing" | "deleting";

export interface CatalogEntry extends Session {
  state: EntryState;
  /** When the entry entered its state: the age of a completion claim, a delete or an import. */
  stateSince: Date;
  /** Random token of whoever holds a "completing" or "deleting" claim; null otherwise. */
  claim: string | null;
  completedAt: Date | null;
  sha256: string | null;
  compression: Compression | null;
  hold: LegalHold | null;
  origin: "agent" | "import";
  imported: ImportSource | null;
  /** Newest last, at most MAX_VERIFICATIONS_KEPT (src/storage/model.ts). */
  verifications: Verification[];
}

/** What must hold for a conditional update or removal to happen; every given field must match. */
export interface EntryCondition {
  states?: readonly EntryState[];
  sessionId?: string;
  /** The claim token must be exactly this (null: no claim). */
  claim?: string | null;
  /** stateSince must be strictly before this instant (a stale claim, an unfinished delete). */
  stateSinceBefore?: Date;
  /** stateSince must be exactly this instant (a takeover that races another takeover). */
  stateSince?: Date;
  /** No legal hold may be in place. */
  unheld?: boolean;
  /** completedAt must be strictly before this instant. */
  completedBefore?: Date;
}

/** Fields an update may change. Identity and geometry never change, except an import's, set once when it lands. */
export type EntryPatch = Partial<
  Pick<
    CatalogEntry,
    | "state"
    | "stateSince"
    | "claim"
    | "completedAt"
    | "sha256"
    | "compression"
    | "hold"
    | "blockCount"
    | "blockSize"
    | "carveSize"
  >
> & {
  /** Appended to the verifications, dropping the oldest beyond MAX_VERIFICATIONS_KEPT. */
  addVerification?: Verification;
};

export interface ReceivingLoad {
  carves: number;
  fromAgent: number;
  declaredBytes: number;
}

export interface EntryPage {
  entries: CatalogEntry[];
  nextCursor: string | null;
}

/** Catalog entries retention should look at: the service decides, with the blob store's view of activity. */
export interface ExpirySweep {
  /** Complete, unheld, completed before criteria.completedBefore; oldest completion first. */
  retention: CatalogEntry[];
  /** Receiving, unheld, created before criteria.idleBefore (their last block may be newer); oldest first. */
  idle: CatalogEntry[];
  /** Deleting, importing or completing since before criteria.staleDeleteBefore: their process died. */
  stale: CatalogEntry[];
}

/**
 * The index of carve records: sessions, states, custody (holds, verifications), listings and retention
 * candidates. Never touched per block (the blob store keeps upload progress next to the bytes), so its cost
 * does not grow with blocks, and its queries are indexed, so it does not grow with the number of carves.
 */
export interface CarveCatalog {
  readonly kind: string;

  /**
   * Inserts `entry` unless its carve id is taken: then nothing is written and the existing entry (in any state)
   * is returned with `created: false`. Exactly one entry per carve id and per session id ever exists, across
   * processes. @throws AppError CARVE_ID_CONFLICT when the session id is taken by another carve.
   */
  create(entry: CatalogEntry): Promise<{ entry: CatalogEntry; created: boolean }>;

  /** The entry of a carve in any state, or null. */
  get(carveId: string): Promise<CatalogEntry | null>;

  /** The entry owning a session id, in any state, or null. */
  getBySession(sessionId: string): Promise<CatalogEntry | null>;

  /**
   * Visible entries (receiving, completing, complete), newest first by (createdAt desc, carveId asc), filtered
   * by status ("receiving" includes completing), node key prefix and creation time, from an opaque cursor.
   * @throws AppError INVALID_QUERY for a cursor this catalog did not make.
   */
  list(query: ListQuery): Promise<EntryPage>;

  /**
   * Applies `patch` atomically if `condition` holds for the entry of `carveId`; returns the entry after the
   * update, or null when there is no such entry or the condition failed (nothing changed then).
   */
  update(carveId: string, condition: EntryCondition, patch: EntryPatch): Promise<CatalogEntry | null>;

  /** Removes the entry if `condition` holds. Returns whether this call removed it. */
  remove(carveId: string, condition: EntryCondition): Promise<boolean>;

  /** Up to `limit` entries of each kind retention considers, see ExpirySweep. */
  sweep(criteria: ExpiryCriteria, limit: number): Promise<ExpirySweep>;

  /** Visible entries by status, for capacity checks and metrics. */
  count(): Promise<{ receiving: number; complete: number }>;

  /**
   * Upper bounds for the limits a start is checked against, from the catalog alone (the blob store knows which
   * of these are still active and how much they received): receiving entries (completing included), those
   * from `agent`, and the sum of their declared carve sizes. An entry is from `agent` when it has the same
   * certificate fingerprint, or, for an agent without a certificate, no certificate and the same address
   * (agentKeyOf in src/services/ingest.ts). One read of the receiving entries' index, never of every carve.
   */
  receivingLoad(agent: AgentInfo): Promise<ReceivingLoad>;

  health(): Promise<StoreHealth>;
  close(): Promise<void>;
}

// ------------------------------------------------------------------------------------------------ blobs

/** Facts of a published archive, computed by the blob store from the bytes it holds. */
export interface ArchiveFacts {
  sha256: string;
  compression: Compression;
  size: number;
}

/** Where a published archive is; all a blob store needs to find it again. */
export interface ArchiveRef {
  carveId: string;
  sessionId: string;
  compression: Compression;
  size: number;
}

export interface BlockWrite {
  /** The identical block was stored before (or the carve is published and holds these bytes): nothing changed. */
  duplicate: boolean;
  /** Every block of the upload is stored now: the caller should have it completed. */
  allStored: boolean;
  /** The upload was already published; the block was compared with the archive. */
  published: boolean;
}

export interface UploadProgress {
  blocksReceived: number;
  bytesReceived: number;
  /** Last time a block was stored (the session's creation before the first one). */
  lastBlockAt: Date;
  /** Block ids not yet stored, ascending, at most the limit asked for. */
  missing: number[];
}

export interface BlobReader {
  /** The archive's bytes (or the range's). Destroy it when done, read or not: it owns the open file. */
  stream: Readable;
  /**
   * Positional reads of the same bytes, when the store can do them (filesystem): a reader that reuses its
   * buffers makes no garbage per chunk, unlike the stream. `position` is absolute in the archive. Valid
   * until `stream` is destroyed; do not read the stream as well.
   */
  readAt?: (buffer: Buffer, length: number, position: number) => Promise<number>;
}

export interface ImportLimits {
  maxBytes: number;
  /** When given, a different SHA-256 keeps nothing. */
  expectedSha256?: string;
}

/**
 * Bytes: blocks written at their offsets with a per-upload journal (the durable record of which blocks are
 * stored, kept next to the bytes), completion into a published archive, ranged reads, imports, deletion.
 * Knows nothing of carve states, holds or retention: those are the catalog's and the services'.
 */
export interface BlobStore {
  readonly kind: string;

  /**
   * Prepares the staging of a new upload. Idempotent (a retried start repairs a start that crashed half-way).
   * @throws AppError INVALID_START when the geometry cannot be stored by this backend.
   */
  begin(session: Session): Promise<void>;

  /**
   * Stores one decoded block at its offset, then records it in the journal; resolves only when both are
   * written. A repeated identical block changes nothing; after publication it is compared with the archive.
   * @throws AppError BLOCK_OUT_OF_RANGE, BLOCK_LENGTH_MISMATCH, BLOCK_CONFLICT (different bytes stored for that
   *   block), UNKNOWN_SESSION (no staging and no archive: never begun, or deleted).
   */
  putBlock(session: Session, blockId: number, data: Buffer): Promise<BlockWrite>;

  /** Progress of an unpublished upload, or null when it has no staging (published, deleted, never begun). */
  progress(session: Session, missingLimit: number): Promise<UploadProgress | null>;

  /**
   * Publishes an upload whose every block is stored: hashes it in block order, detects compression, makes it
   * readable as one archive and drops the staging. Idempotent: after a crash at any step, calling it again
   * finishes it (or re-reads the facts of an archive already published). Never publishes a partial archive.
   * `heartbeat` is called between batches of work; it throws to abandon the completion (the claim was lost).
   * Several processes must not complete one upload at once: the caller holds the catalog's claim.
   * @throws AppError STORAGE_UNAVAILABLE when a block is missing or the stored size is wrong.
   */
  complete(session: Session, heartbeat?: () => Promise<void>): Promise<ArchiveFacts>;

  /**
   * Streams an archive collected out of band into a published archive under `sessionId`, hashing on the way.
   * Nothing is kept unless the whole stream arrived within `limits`; memory stays bounded whatever the size.
   * `heartbeat` is called now and then while bytes arrive.
   * @throws AppError IMPORT_TOO_LARGE, IMPORT_HASH_MISMATCH, IMPORT_EMPTY, IMPORT_ABORTED (the source failed; an
   *   AppError raised by the source is rethrown as is)
   */
  importArchive(
    target: { carveId: string; sessionId: string },
    data: AsyncIterable<Buffer>,
    limits: ImportLimits,
    heartbeat?: () => Promise<void>,
  ): Promise<ArchiveFacts>;

  /**
   * Opens a published archive, or an inclusive byte range of it, without buffering it.
   * @throws AppError CARVE_NOT_FOUND when the archive is gone.
   */
  read(ref: ArchiveRef, range?: ByteRange): Promise<BlobReader>;

  /** Removes everything stored for the carve (staging, journal, archive). Idempotent; returns bytes freed. */
  delete(target: { carveId: string; sessionId: string }): Promise<number>;

  /** Bytes the backend can still store, when it can tell (a filesystem can; MongoDB manages its own). */
  freeBytes(): Promise<number | null>;

  health(): Promise<StoreHealth>;
  /** Lets in-flight writes finish and releases every file or connection; later calls fail. */
  close(): Promise<void>;
}

// ------------------------------------------------------------------------------------------------ audit

/** The responder audit trail: append-only, queried newest first through indexes. */
export interface AuditLog {
  readonly kind: string;
  /** Records an event durably before resolving; an event id already recorded is ignored (a retried append). */
  append(event: AuditEvent): Promise<void>;
  /** Events newest first by (at desc, id desc). @throws AppError INVALID_QUERY for a bad cursor. */
  query(query: AuditQuery): Promise<AuditPage>;
  close(): Promise<void>;
}

// ------------------------------------------------------------------------------------------------ deployment

/** One deployment's storage: a catalog, a blob store and an audit log, opened together by src/storage/factory.ts. */
export interface Storage {
  catalog: CarveCatalog;
  blobs: BlobStore;
  audit: AuditLog;
  /** This process alone uses the storage (the filesystem data directory's lock): any claim left is a dead one's. */
  exclusive: boolean;
  /**
   * Frees disk kept back for custody, when a custody write (hold, verification, audit event) found the storage
   * full; false when there is none (or the backend manages its own space). Block writes pause meanwhile.
   */
  releaseReserve?: () => boolean;
  /** Closes all three and what they share (a database connection, the directory lock). */
  close(): Promise<void>;
}
