/*
 * The records every storage contract speaks in (src/storage/contracts.ts). Plain data: no I/O, no backend.
 */
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
  /**
   * SHA-256 (hex) of osquery's node key, the node's enrollment secret: the key itself never reaches storage.
   * null when the agent sent none.
   */
  nodeKeySha256: string | null;
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
  /** Only carves whose node key's SHA-256 starts with these hex digits (lower case). */
  nodeSha256Prefix?: string;
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

