import { createHash } from "node:crypto";
import { closeSync, existsSync, fsyncSync, openSync, readdirSync, readFileSync, readlinkSync, rmdirSync, rmSync } from "node:fs";
import path from "node:path";
import type { Logger } from "../../logger.js";
import { crashPoint } from "../../util/crash-point.js";
import type { CatalogEntry, EntryState } from "../contracts.js";
import { copyAgent, MAX_VERIFICATIONS_KEPT, type AuditEvent, type CertificateIdentity, type Verification } from "../model.js";
import { auditRowOf, INSERT_AUDIT } from "./sqlite-audit-log.js";
import { INSERT_CARVE, rowOf } from "./sqlite-catalog.js";
import { openCatalogDatabase, storageFailure } from "./sqlite-database.js";

/*
 * Upgrade in place of a data directory written before the catalog existed: carve records in meta/<carve_id>.json,
 * session ids as index/<session_id> symlinks, the audit trail in audit/<yyyy-mm-dd>.jsonl. Their content moves
 * into catalog.sqlite (raw node keys become their SHA-256), then the files are removed. Blocks, journals and
 * archives (sessions/, carves/) stay where they are: the filesystem blob store reads the same layout.
 *
 * Crash-safe and idempotent without any marker: rows are inserted unless present (a carve id or an event id
 * written by an earlier, interrupted run is kept as it is), and a file is removed only after the row that holds
 * its content is committed. A run killed anywhere leaves files whose rows exist or will be written by the next
 * run; a run that finds nothing to read costs four directory lookups.
 *
 * Two processes may upgrade at once (the service and the cleanup CLI). Each meta file is read inside the write
 * transaction that inserts it, so a file is either still there (and its row, if present, is untouched: nothing
 * changes entries before its opener's upgrade returned, which is after the files were gone) or gone (skipped).
 */

const LEGACY_STATES: Record<string, EntryState> = {
  receiving: "receiving",
  complete: "complete",
  deleting: "deleting",
  importing: "importing",
};

/** The record format of meta/<carve_id>.json as the filesystem store wrote it. */
interface LegacyMeta {
  version: 1;
  carveId: string;
  requestId: string;
  sessionId: string;
  nodeKey?: string;
  blockCount: number;
  blockSize: number;
  carveSize: number;
  agent?: { address?: string | null; userAgent?: string | null; certificate?: CertificateIdentity | null };
  createdAt: string;
  status: string;
  completedAt?: string | null;
  sha256?: string | null;
  compression?: string | null;
  hold?: { by: string; reason: string; at: string } | null;
  deletingSince?: string | null;
  origin?: string;
  imported?: {
    host?: string | null;
    originalPath?: string | null;
    description?: string | null;
    importedBy?: { displayName?: string | null; entityId?: string | null };
  } | null;
  verifications?: Array<Omit<Verification, "at"> & { at: string }>;
}

export interface FilesystemUpgrade {
  /** Entries this run wrote (an earlier, interrupted run may have written others). */
  carves: number;
  auditEvents: number;
  /** Meta files left in place, with why: unreadable, or their ids belong to another entry. */
  kept: Array<{ file: string; reason: string }>;
  /** Audit lines that were no event (a line torn by a crash): the release that wrote them skipped them as well. */
  skippedAuditLines: number;
}

/** Must equal the ingest's digest of a node key (src/services/ingest.ts); the upgrade test holds them together. */
function nodeKeyDigest(nodeKey: string | undefined): string | null {
  return nodeKey ? createHash("sha256").update(nodeKey, "utf8").digest("hex") : null;
}

function date(value: unknown): Date | null {
  if (typeof value !== "string") return null;
  const t = Date.parse(value);
  return Number.isFinite(t) ? new Date(t) : null;
}

const str = (v: unknown): string | null => (typeof v === "string" ? v : null);

/** The catalog entry of a meta file, or why it cannot be one. */
export function entryFromMeta(text: string, fileName: string): CatalogEntry | string {
  let m: LegacyMeta;
  try {
    m = JSON.parse(text) as LegacyMeta;
  } catch {
    return "not JSON";
  }
  if (!m || typeof m !== "object") return "not a record";
  if (typeof m.carveId !== "string" || `${m.carveId}.json` !== fileName) return "carveId differs from the file name";
  if (typeof m.sessionId !== "string" || typeof m.requestId !== "string") return "no session id or request id";
  if (![m.blockCount, m.blockSize, m.carveSize].every((n) => Number.isSafeInteger(n) && n >= 0)) return "bad geometry";
  const state = LEGACY_STATES[m.status];
  const createdAt = date(m.createdAt);
  if (!state || !createdAt) return "bad status or createdAt";
  const completedAt = date(m.completedAt);
  const compression = m.compression ?? null;
  if (compression !== null && compression !== "none" && compression !== "zstd") return "bad compression";
  if (state === "complete" && (!completedAt || !m.sha256 || !compression)) return "complete without its sha256, compression or time";
  const hold = m.hold ? { by: m.hold.by, reason: m.hold.reason, at: date(m.hold.at) } : null;
  if (hold && (typeof hold.by !== "string" || typeof hold.reason !== "string" || !hold.at)) return "bad hold";
  const verifications: Verification[] = [];
  for (const v of m.verifications ?? []) {
    const at = date(v.at);
    if (!at || typeof v.claimedSha256 !== "string" || typeof v.match !== "boolean") return "bad verification";
    verifications.push({ claimedSha256: v.claimedSha256, match: v.match, by: str(v.by), at });
  }
  const origin = m.origin ?? "agent";
  if (origin !== "agent" && origin !== "import") return "bad origin";
  const i = m.imported;
  const stateSince: Record<EntryState, Date | null> = {
    receiving: createdAt,
    completing: createdAt,
    complete: completedAt,
    importing: createdAt,
    // Without a time, the release that wrote it took an unfinished delete as stale at once: so does epoch 0.
    deleting: date(m.deletingSince) ?? new Date(0),
  };
  return {
    carveId: m.carveId,
    sessionId: m.sessionId,
    requestId: m.requestId,
    nodeKeySha256: nodeKeyDigest(m.nodeKey),
    blockCount: m.blockCount,
    blockSize: m.blockSize,
    carveSize: m.carveSize,
    agent: copyAgent({ address: str(m.agent?.address), userAgent: str(m.agent?.userAgent), certificate: m.agent?.certificate ?? null }),
    createdAt,
    state,
    stateSince: stateSince[state] ?? createdAt,
    claim: null,
    completedAt,
    sha256: str(m.sha256),
    compression,
    hold: hold?.at ? { by: hold.by, reason: hold.reason, at: hold.at } : null,
    origin,
    imported: i
      ? {
          host: str(i.host),
          originalPath: str(i.originalPath),
          description: str(i.description),
          importedBy: { displayName: str(i.importedBy?.displayName), entityId: str(i.importedBy?.entityId) },
        }
      : null,
    verifications: verifications.slice(-MAX_VERIFICATIONS_KEPT),
  };
}

/** An audit event of one line of audit/<day>.jsonl, or null for a line that is none. */
export function eventFromLine(line: string): AuditEvent | null {
  let raw: Partial<Omit<AuditEvent, "at">> & { at?: unknown };
  try {
    raw = JSON.parse(line) as typeof raw;
  } catch {
    return null;
  }
  const at = date(raw?.at);
  if (!raw || !at || typeof raw.id !== "string" || typeof raw.action !== "string" || typeof raw.result !== "string") return null;
  return {
    id: raw.id,
    at,
    action: raw.action,
    result: raw.result,
    actor: {
      displayName: str(raw.actor?.displayName),
      entityId: str(raw.actor?.entityId),
      tokenFingerprint: str(raw.actor?.tokenFingerprint),
    },
    client: {
      address: str(raw.client?.address),
      certificateSubject: str(raw.client?.certificateSubject),
      requestId: str(raw.client?.requestId),
    },
    carveId: str(raw.carveId),
    detail: raw.detail && typeof raw.detail === "object" ? raw.detail : {},
  };
}

function errno(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

/** Names in a directory; none when it does not exist. */
function names(dir: string): string[] {
  try {
    return readdirSync(dir).sort();
  } catch (err) {
    if (errno(err) === "ENOENT" || errno(err) === "ENOTDIR") return [];
    throw err;
  }
}

function readIfThere(file: string): string | null {
  try {
    return readFileSync(file, "utf8");
  } catch (err) {
    if (errno(err) === "ENOENT") return null;
    throw err;
  }
}

function fsyncDir(dir: string): void {
  let fd: number;
  try {
    fd = openSync(dir, "r");
  } catch (err) {
    if (errno(err) === "ENOENT") return;
    throw err;
  }
  try {
    fsyncSync(fd);
  } catch (err) {
    // Some filesystems refuse fsync on directories; the unlinks themselves stand.
    if (errno(err) !== "EINVAL" && errno(err) !== "EISDIR") throw err;
  } finally {
    closeSync(fd);
  }
}

const AUDIT_FILE = /^\d{4}-\d{2}-\d{2}\.jsonl$/;

/**
 * Moves the records, session index and audit trail of a data directory written by the release before the catalog
 * into <dataDir>/catalog.sqlite, then removes those files. Call it before opening the catalog, the audit log or the
 * blob store of a filesystem deployment; it returns at once when there is nothing to upgrade.
 * @throws AppError STORAGE_UNAVAILABLE when the files or the database cannot be read or written (nothing is lost:
 *   run it again).
 */
export async function upgradeFilesystemDataDir(options: { dataDir: string; logger: Logger; batchSize?: number }): Promise<FilesystemUpgrade> {
  const root = path.resolve(options.dataDir);
  const dir = (name: string): string => path.join(root, name);
  const batchSize = options.batchSize ?? 500;
  const report: FilesystemUpgrade = { carves: 0, auditEvents: 0, kept: [], skippedAuditLines: 0 };
  try {
    const metaFiles = names(dir("meta")).filter((n) => n.endsWith(".json"));
    const indexLinks = names(dir("index"));
    const auditFiles = names(dir("audit")).filter((n) => AUDIT_FILE.test(n));
    // Staging copies of meta files a crash left in tmp/ (they hold raw node keys too).
    const staged = names(dir("tmp")).filter((n) => n.endsWith(".json"));
    // A run killed after its last removal leaves the empty directories only: those go as well.
    const legacyDirs = ["meta", "index", "audit"].filter((name) => existsSync(dir(name)));
    if (legacyDirs.length + staged.length === 0) return Promise.resolve(report);

    // About 1 ms per record: say so before a large directory keeps the service from listening for a while.
    options.logger.info({ dataDir: root, records: metaFiles.length, auditFiles: auditFiles.length }, "upgrading a data directory of the previous release");
    const db = openCatalogDatabase(root);
    const migrated: string[] = [];
    try {
      const insert = db.prepare(INSERT_CARVE);
      const owner = db.prepare("SELECT carve_id FROM carves WHERE carve_id = ? AND session_id = ?").pluck();
      const carveBatch = db.transaction((batch: string[]) => {
        let written = 0;
        for (const file of batch) {
          const text = readIfThere(path.join(dir("meta"), file));
          if (text === null) continue; // removed by another process's upgrade, after its commit
          const entry = entryFromMeta(text, file);
          if (typeof entry === "string") {
            report.kept.push({ file: `meta/${file}`, reason: entry });
          } else if (insert.get(rowOf(entry))) {
            written++;
            migrated.push(file);
          } else if (owner.get(entry.carveId, entry.sessionId)) {
            migrated.push(file); // written by an earlier run
          } else {
            report.kept.push({ file: `meta/${file}`, reason: "its carve id or session id belongs to another entry" });
          }
        }
        return written;
      });
      for (let i = 0; i < metaFiles.length; i += batchSize) {
        report.carves += carveBatch.immediate(metaFiles.slice(i, i + batchSize));
        crashPoint("migrate.mid");
      }

      const insertAudit = db.prepare(INSERT_AUDIT);
      const auditBatch = db.transaction((events: AuditEvent[]) => {
        let written = 0;
        for (const e of events) written += insertAudit.run(auditRowOf(e)).changes;
        return written;
      });
      for (const file of auditFiles) {
        const text = readIfThere(path.join(dir("audit"), file)) ?? "";
        const events: AuditEvent[] = [];
        for (const line of text.split("\n")) {
          if (line.trim() === "") continue;
          const event = eventFromLine(line);
          if (event) events.push(event);
          else report.skippedAuditLines++;
        }
        for (let i = 0; i < events.length; i += batchSize) {
          report.auditEvents += auditBatch.immediate(events.slice(i, i + batchSize));
          crashPoint("migrate.mid");
        }
      }
    } finally {
      db.close();
    }

    // Every row is committed: the files may go. A crash among the removals leaves files the next run re-reads.
    let removed = 0;
    const remove = (file: string): void => {
      rmSync(file, { force: true });
      if (++removed % batchSize === 0) crashPoint("migrate.mid");
    };
    const keptIds = new Set(report.kept.map((k) => path.basename(k.file, ".json")));
    for (const file of migrated) remove(path.join(dir("meta"), file));
    for (const link of indexLinks) {
      let target: string | null = null;
      try {
        target = readlinkSync(path.join(dir("index"), link));
      } catch (err) {
        if (errno(err) === "ENOENT") continue;
        if (errno(err) !== "EINVAL") throw err; // EINVAL: not a link, nothing the old store made
      }
      if (target !== null && !keptIds.has(target)) remove(path.join(dir("index"), link));
    }
    for (const file of auditFiles) remove(path.join(dir("audit"), file));
    for (const file of staged) remove(path.join(dir("tmp"), file));
    for (const name of ["meta", "index", "audit", "tmp"]) fsyncDir(dir(name));
    for (const name of ["meta", "index", "audit"]) {
      try {
        rmdirSync(dir(name));
      } catch (err) {
        if (errno(err) !== "ENOENT" && errno(err) !== "ENOTEMPTY" && errno(err) !== "EEXIST") throw err;
      }
    }
    fsyncDir(root);
  } catch (err) {
    return Promise.reject(storageFailure(err, `upgrade the data directory ${root}`));
  }
  for (const k of report.kept) options.logger.warn({ file: k.file, reason: k.reason }, "left a carve record of the previous release in place");
  if (report.carves || report.auditEvents) {
    options.logger.info(
      { carves: report.carves, auditEvents: report.auditEvents, skippedAuditLines: report.skippedAuditLines },
      "moved carve records and audit trail of the previous release into catalog.sqlite",
    );
  }
  return Promise.resolve(report);
}
