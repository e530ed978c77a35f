import { expiresAt, type ExpiryPolicy } from "../carves/expiry.js";
import type { CarveRecord } from "../storage/model.js";

/**
 * A receiving carve that has had no block for this long is reported as "incomplete": osquery 5.22+ gives up
 * on a block after ~5 s of retries, older agents skip failed blocks and never come back, so a carve idle
 * for 10 minutes will not complete by itself.
 */
export const INCOMPLETE_AFTER_MS = 10 * 60 * 1000;

/** How many missing block ids the metadata shows. */
export const MISSING_SHOWN = 100;

export type ViewStatus = "receiving" | "incomplete" | "complete";

export function viewStatus(record: CarveRecord, now: Date): ViewStatus {
  if (record.status === "complete") return "complete";
  return now.getTime() - record.updatedAt.getTime() > INCOMPLETE_AFTER_MS ? "incomplete" : "receiving";
}

/** The node key is osquery's enrollment secret: only a short prefix of its SHA-256 is ever shown. */
export function nodeKeyPrefix(nodeKeySha256: string | null): string | null {
  return nodeKeySha256 === null ? null : nodeKeySha256.slice(0, 16);
}

/** File name and media type of what the archive endpoint sends. */
export function archiveRepresentation(record: CarveRecord, decompressed: boolean): { fileName: string; contentType: string } {
  if (record.compression === "zstd" && !decompressed) {
    return { fileName: `${record.carveId}.tar.zst`, contentType: "application/zstd" };
  }
  return { fileName: `${record.carveId}.tar`, contentType: "application/x-tar" };
}

function iso(d: Date | null): string | null {
  return d === null ? null : d.toISOString();
}

function lastVerification(record: CarveRecord): { match: boolean; by: string | null; at: string; count: number } | null {
  const last = record.verifications[record.verifications.length - 1];
  return last === undefined ? null : { match: last.match, by: last.by, at: last.at.toISOString(), count: record.verifications.length };
}

/** A carve as the list shows it. Never the node key, never the session id (it lets one send blocks). */
export function carveSummary(record: CarveRecord, now: Date, expiry?: ExpiryPolicy): Record<string, unknown> {
  const status = viewStatus(record, now);
  return {
    carveId: record.carveId,
    requestId: record.requestId,
    status,
    carveSize: record.carveSize,
    blockSize: record.blockSize,
    blockCount: record.blockCount,
    blocksReceived: record.blocksReceived,
    bytesReceived: record.bytesReceived,
    blocksMissing: record.status === "complete" ? 0 : record.blockCount - record.blocksReceived,
    sha256: record.sha256,
    compression: record.compression,
    node: { nodeKeySha256Prefix: nodeKeyPrefix(record.nodeKeySha256) },
    agent: {
      address: record.agent.address,
      userAgent: record.agent.userAgent,
      certificate: record.agent.certificate,
    },
    createdAt: iso(record.createdAt),
    updatedAt: iso(record.updatedAt),
    completedAt: iso(record.completedAt),
    idleSeconds: status === "complete" ? null : Math.max(0, Math.floor((now.getTime() - record.updatedAt.getTime()) / 1000)),
    origin: record.origin,
    /** The latest comparison with the host's sha256 (all of them are in the carve's metadata). */
    lastVerification: lastVerification(record),
    hold: record.hold ? { by: record.hold.by, reason: record.hold.reason, at: iso(record.hold.at) } : null,
    expiresAt: iso(expiresAt(record, expiry)),
  };
}

/** One carve's metadata: the summary plus the first missing block ids and where to download it. */
export function carveDetail(record: CarveRecord, missing: number[], now: Date, expiry?: ExpiryPolicy): Record<string, unknown> {
  const summary = carveSummary(record, now, expiry);
  const archive =
    record.status === "complete"
      ? {
          ...archiveRepresentation(record, false),
          size: record.carveSize,
          url: `/api/v1/carves/${record.carveId}/archive`,
          ...(record.compression === "zstd" ? { tarUrl: `/api/v1/carves/${record.carveId}/archive?format=tar` } : {}),
          filesUrl: `/api/v1/carves/${record.carveId}/files`,
        }
      : null;
  return {
    ...summary,
    /** The first MISSING_SHOWN missing block ids, ascending (blocksMissing has the count). */
    missingBlockIds: missing.slice(0, MISSING_SHOWN),
    incompleteAfterSeconds: INCOMPLETE_AFTER_MS / 1000,
    /** For imported carves: where the responder said the archive came from. */
    imported: record.imported,
    /** Comparisons of the stored SHA-256 with the one the host recorded. */
    verifications: record.verifications.map((v) => ({ ...v, at: v.at.toISOString() })),
    archive,
  };
}
