import type { Readable } from "node:stream";

/**
 * A verified TLS client certificate: passed by a trusted proxy (NGINX headers) or read from the service's
 * own TLS socket. Both sources produce exactly this shape.
 */
export interface CertificateIdentity {
  /** Subject distinguished name, RFC 2253 style (e.g. "CN=host-1,O=Example"). */
  subjectDn: string;
  /** SHA-256 fingerprint of the DER certificate, upper-case hex pairs joined by ":" (Node's format). */
  fingerprintSha256: string;
  source: "proxy" | "tls";
}

/** Where a carve came from on the agent side, as far as the server can tell. */
export interface AgentInfo {
  /** Client address as seen by the service (the proxy's view when behind a trusted proxy). */
  address: string | null;
  userAgent: string | null;
  /** The agent's verified client certificate, when a TLS layer verified one. */
  certificate: CertificateIdentity | null;
}

/** A deep copy: records handed out never share mutable parts with a store's state. */
export function copyAgent(agent: Omit<AgentInfo, "certificate"> & { certificate?: CertificateIdentity | null }): AgentInfo {
  return {
    address: agent.address ?? null,
    userAgent: agent.userAgent ?? null,
    certificate: agent.certificate ? { ...agent.certificate } : null,
  };
}

/** Who did something through the responder API, as Vault described the token. Never the token itself. */
export interface AuditActor {
  displayName: string | null;
  entityId: string | null;
  /** HMAC of the token under a per-process secret: correlates one token's actions, cannot be replayed. */
  tokenFingerprint: string | null;
}

export interface AuditEvent {
  id: string;
  at: Date;
  /** e.g. "carve.list", "carve.read", "carve.download", "carve.files", "carve.delete", "audit.read" */
  action: string;
  result: "allowed" | "denied" | "not-found" | "error";
  actor: AuditActor;
  client: { address: string | null; certificateSubject: string | null; requestId: string | null };
  carveId: string | null;
  /** Small scalar facts: sha256, byte range, bytes sent, reason of a denial... */
  detail: Record<string, string | number | boolean | null>;
}

export interface AuditQuery {
  carveId?: string;
  action?: string;
  since?: Date;
  until?: Date;
  limit: number;
  cursor?: string;
}

export interface AuditPage {
  events: AuditEvent[];
  nextCursor: string | null;
}

/** What an agent asked for in its start request, after validation. */
export interface SessionSpec {
  carveId: string;
  requestId: string;
  /** osquery's enrollment secret for the node; stored, never logged. May be "". */
  nodeKey: string;
  blockCount: number;
  blockSize: number;
  carveSize: number;
  agent: AgentInfo;
}

export interface Session extends SessionSpec {
  sessionId: string;
  createdAt: Date;
}

export type CarveStatus = "receiving" | "complete";

/** Where an archive collected out of band came from, as the responder who imported it said. */
export interface ImportSource {
  host: string | null;
  originalPath: string | null;
  description: string | null;
  importedBy: { displayName: string | null; entityId: string | null };
}

/** Verifications a carve keeps: the newest; each verification is also in the audit trail. */
export const MAX_VERIFICATIONS_KEPT = 100;

/** A comparison of the stored SHA-256 with the one the host recorded (osquery's carves.sha256). */
export interface Verification {
  claimedSha256: string;
  match: boolean;
  by: string | null;
  at: Date;
}

export interface ImportSpec {
  carveId: string;
  /** Id of the stored object (GridFS files _id); never used by agents. */
  sessionId: string;
  source: ImportSource;
  /** The importer's connection. */
  agent: AgentInfo;
}

export interface ImportLimits {
  maxBytes: number;
  /** When given, a different SHA-256 keeps nothing. */
  expectedSha256?: string;
}

/** A legal hold exempts a carve from retention and from deletion until it is lifted. */
export interface LegalHold {
  by: string;
  reason: string;
  at: Date;
}

/** What retention may delete: complete carves completed before, receiving carves idle since before. */
export interface ExpiryCriteria {
  completedBefore: Date;
  idleBefore: Date;
  /** Deletions begun before this instant and never finished (their process died) are finished. */
  staleDeleteBefore: Date;
}

export interface ExpiryCandidate {
  carveId: string;
  reason: "retention" | "abandoned" | "unfinished-delete";
  /** Carve bytes it holds (carve_size when complete, bytes received otherwise). */
  bytes: number;
}
export type Compression = "zstd" | "none";

export interface CarveRecord extends Session {
  status: CarveStatus;
  /** Last time a block was stored (createdAt before the first one). */
  updatedAt: Date;
  completedAt: Date | null;
  blocksReceived: number;
  bytesReceived: number;
  /** SHA-256 (hex) of the whole uploaded archive, set at completion. */
  sha256: string | null;
  compression: Compression | null;
  hold: LegalHold | null;
  /** "agent": uploaded by osquery; "import": imported by a responder. */
  origin: "agent" | "import";
  imported: ImportSource | null;
  verifications: Verification[];
}

export interface PutBlockResult {
  /** The identical block was already stored; nothing changed. */
  duplicate: boolean;
  /** The carve is complete after this call. */
  complete: boolean;
  /** This very call completed the carve: exactly one caller per carve ever sees true. */
  completedNow: boolean;
}

export interface CreateSessionResult {
  session: Session;
  /** False when a session for this carve_id already existed; `session` is then the existing one. */
  created: boolean;
}

export interface ListQuery {
  status?: CarveStatus;
  nodeKey?: string;
  /** Only carves created at or after this instant. */
  since?: Date;
  /** Only carves created before this instant. */
  until?: Date;
  limit: number;
  /** Opaque cursor from a previous page. */
  cursor?: string;
}

export interface ListPage {
  carves: CarveRecord[];
  nextCursor: string | null;
}

/** A byte range, both ends inclusive as in HTTP `Range: bytes=start-end`. */
export interface ByteRange {
  start: number;
  end: number;
}

export interface ArchiveHandle {
  record: CarveRecord;
  /** The archive's bytes (or the range's). Destroy it when done, read or not: it owns the open file. */
  stream: Readable;
  /**
   * Positional reads of the same bytes, when the store can do them (filesystem): a reader that reuses its
   * buffers makes no garbage per chunk, unlike the stream. `position` is absolute in the archive. Valid
   * until `stream` is destroyed; do not read the stream as well.
   */
  readAt?: (buffer: Buffer, length: number, position: number) => Promise<number>;
}

export interface StoreHealth {
  ok: boolean;
  backend: string;
  detail: Record<string, string | number | boolean | null>;
}

/**
 * The storage contract every backend implements in full; test/storage/conformance.ts runs against each.
 * Correctness across several service processes comes from the store itself (atomic renames, conditional
 * updates, unique indexes), never from in-process locks of the caller.
 *
 * Errors: every method rejects with an AppError from src/errors.ts for the listed cases and with
 * STORAGE_UNAVAILABLE (cause kept) when the backend itself fails; an unknown id raises the same code on
 * every backend.
 */
export interface CarveStore {
  readonly backend: string;

  /**
   * Opens a receiving session for `spec.carveId`, unless one exists: then nothing is written and the
   * existing session is returned with `created: false` (the caller decides whether that is a retried start).
   * `sessionId` is the id to use if this call creates the session. Safe to call concurrently: exactly one
   * session per carve_id ever exists.
   */
  createSession(spec: SessionSpec, sessionId: string): Promise<CreateSessionResult>;

  /**
   * The session with this id, receiving or complete.
   * @throws AppError UNKNOWN_SESSION
   */
  findSession(sessionId: string): Promise<Session>;

  /**
   * Stores one decoded block at its offset. Repeating an identical block is a success that changes nothing;
   * when the last missing block lands, the carve is completed once, atomically (SHA-256, compression).
   * @throws AppError BLOCK_OUT_OF_RANGE, BLOCK_LENGTH_MISMATCH (geometry), BLOCK_CONFLICT (different bytes
   *   already stored for that block), UNKNOWN_SESSION (the carve was deleted).
   */
  putBlock(session: Session, blockId: number, data: Buffer): Promise<PutBlockResult>;

  /**
   * @throws AppError CARVE_NOT_FOUND
   */
  getCarve(carveId: string): Promise<CarveRecord>;

  /** Block ids not yet stored, ascending, at most `limit` of them. @throws AppError CARVE_NOT_FOUND */
  missingBlocks(carveId: string, limit: number): Promise<number[]>;

  /** Carves newest first. */
  listCarves(query: ListQuery): Promise<ListPage>;

  /**
   * Streams a complete carve's archive, or an inclusive byte range of it, without buffering it.
   * @throws AppError CARVE_NOT_FOUND, CARVE_NOT_COMPLETE
   */
  openArchive(carveId: string, range?: ByteRange): Promise<ArchiveHandle>;

  /**
   * Deletes a carve and everything it owns (archive, blocks, session state). From the first step on the
   * carve is invisible (CARVE_NOT_FOUND / UNKNOWN_SESSION); a delete interrupted by a crash is finished by
   * the next deleteCarve of the same id. Returns the bytes of carve data freed.
   * With `onlyIfExpired`, the expiry is re-checked atomically with the delete (a block that arrived since
   * the carve was selected, or a hold placed meanwhile, keeps it): `deleted: false` then. Several processes
   * deleting one carve at once: exactly one gets `deleted: true`.
   * @throws AppError CARVE_NOT_FOUND, CARVE_ON_HOLD (unconditional delete of a held carve)
   */
  deleteCarve(carveId: string, options?: { onlyIfExpired?: ExpiryCriteria }): Promise<{ deleted: boolean; bytesFreed: number }>;

  /** Up to `limit` carves retention may delete now (never held ones), oldest first where it matters. */
  findExpired(criteria: ExpiryCriteria, limit: number): Promise<ExpiryCandidate[]>;

  /**
   * Streams an archive collected out of band into the store, hashing it on the way; it becomes a complete
   * carve like any other. Nothing is kept unless the whole stream arrived, within `maxBytes`, with the
   * expected SHA-256: a source stream that errors (client gone, multipart limit hit) aborts it.
   * Memory stays bounded whatever the size.
   * @throws AppError IMPORT_TOO_LARGE, IMPORT_HASH_MISMATCH, IMPORT_EMPTY, IMPORT_ABORTED (the source
   *   failed; an AppError raised by the source is rethrown as is), CARVE_ID_CONFLICT
   */
  importCarve(spec: ImportSpec, data: AsyncIterable<Buffer>, limits: ImportLimits): Promise<CarveRecord>;

  /** Appends a verification result to a carve, keeping the newest MAX_VERIFICATIONS_KEPT. @throws AppError CARVE_NOT_FOUND */
  recordVerification(carveId: string, verification: Verification): Promise<CarveRecord>;

  /** Places (hold) or lifts (null) a legal hold. @throws AppError CARVE_NOT_FOUND */
  setHold(carveId: string, hold: LegalHold | null): Promise<CarveRecord>;

  /** Records an audit event durably. */
  appendAudit(event: AuditEvent): Promise<void>;

  /** Audit events newest first. @throws AppError INVALID_QUERY for a bad cursor */
  listAudit(query: AuditQuery): Promise<AuditPage>;

  /** Bytes the backend can still store, when it can tell (a filesystem can; MongoDB manages its own). */
  freeBytes(): Promise<number | null>;

  health(): Promise<StoreHealth>;

  /** Flushes and releases everything; later calls fail. */
  close(): Promise<void>;
}
