import type { CatalogEntry, EntryState } from "../contracts.js";
import {
  copyAgent,
  type AgentInfo,
  type Compression,
  type ImportSource,
  type LegalHold,
  type Verification,
} from "../model.js";

/** One document per carve in `<bucket>.carves`; dates are BSON dates, the node key only as its SHA-256. */
export interface CarveDoc {
  _id: string;
  sessionId: string;
  requestId: string;
  nodeKeySha256: string | null;
  blockCount: number;
  blockSize: number;
  carveSize: number;
  agent: AgentInfo;
  createdAt: Date;
  state: EntryState;
  stateSince: Date;
  claim: string | null;
  completedAt: Date | null;
  sha256: string | null;
  compression: Compression | null;
  hold: LegalHold | null;
  origin: "agent" | "import";
  imported: ImportSource | null;
  verifications: Verification[];
}

export function copyHold(hold: LegalHold | null | undefined): LegalHold | null {
  return hold ? { by: hold.by, reason: hold.reason, at: hold.at } : null;
}

export function copyImported(src: ImportSource | null | undefined): ImportSource | null {
  if (!src) return null;
  return {
    host: src.host,
    originalPath: src.originalPath,
    description: src.description,
    importedBy: { displayName: src.importedBy.displayName, entityId: src.importedBy.entityId },
  };
}

export function copyVerification(v: Verification): Verification {
  return { claimedSha256: v.claimedSha256, match: v.match, by: v.by, at: v.at };
}

export function docOf(entry: CatalogEntry): CarveDoc {
  return {
    _id: entry.carveId,
    sessionId: entry.sessionId,
    requestId: entry.requestId,
    nodeKeySha256: entry.nodeKeySha256,
    blockCount: entry.blockCount,
    blockSize: entry.blockSize,
    carveSize: entry.carveSize,
    agent: copyAgent(entry.agent),
    createdAt: entry.createdAt,
    state: entry.state,
    stateSince: entry.stateSince,
    claim: entry.claim,
    completedAt: entry.completedAt,
    sha256: entry.sha256,
    compression: entry.compression,
    hold: copyHold(entry.hold),
    origin: entry.origin,
    imported: copyImported(entry.imported),
    verifications: entry.verifications.map(copyVerification),
  };
}

export function entryOf(doc: CarveDoc): CatalogEntry {
  return {
    carveId: doc._id,
    sessionId: doc.sessionId,
    requestId: doc.requestId,
    nodeKeySha256: doc.nodeKeySha256 ?? null,
    blockCount: doc.blockCount,
    blockSize: doc.blockSize,
    carveSize: doc.carveSize,
    agent: copyAgent(doc.agent),
    createdAt: doc.createdAt,
    state: doc.state,
    stateSince: doc.stateSince,
    claim: doc.claim ?? null,
    completedAt: doc.completedAt ?? null,
    sha256: doc.sha256 ?? null,
    compression: doc.compression ?? null,
    hold: copyHold(doc.hold),
    origin: doc.origin ?? "agent",
    imported: copyImported(doc.imported),
    verifications: (doc.verifications ?? []).map(copyVerification),
  };
}
