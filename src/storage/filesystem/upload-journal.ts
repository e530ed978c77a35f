import { createHash, type Hash } from "node:crypto";
import { promises as fsp } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import path from "node:path";
import { expectedBlockLength } from "../../carves/geometry.js";
import { Mutex } from "../../util/mutex.js";
import type { UploadProgress } from "../contracts.js";
import type { Session } from "../model.js";
import { errno, readFully } from "./fs-io.js";

/*
 * An upload's journal (sessions/<carve_id>/journal): 8-byte records (block id, check) appended after a block's
 * bytes are written, the durable list of stored blocks. This module reads it back and holds an upload's state in
 * memory (Upload); progress of an upload not in memory is read from its journal without building an Upload.
 */

export const JOURNAL_RECORD_SIZE = 8;

/** The journal's file in an upload's staging directory. */
export const journalIn = (sessionDir: string): string => path.join(sessionDir, "journal");
const JOURNAL_CHECK = 0xc4a7e5b1;

export function journalRecord(blockId: number): Buffer {
  const record = Buffer.allocUnsafe(JOURNAL_RECORD_SIZE);
  record.writeUInt32LE(blockId, 0);
  record.writeUInt32LE((blockId ^ JOURNAL_CHECK) >>> 0, 4);
  return record;
}

/** Block ids of a journal's valid records, in order; a torn or foreign record is skipped. */
export function* journalBlocks(buf: Buffer, blockCount: number): Generator<number> {
  const records = Math.floor(buf.length / JOURNAL_RECORD_SIZE);
  for (let i = 0; i < records; i++) {
    const id = buf.readUInt32LE(i * JOURNAL_RECORD_SIZE);
    const check = buf.readUInt32LE(i * JOURNAL_RECORD_SIZE + 4);
    if ((id ^ JOURNAL_CHECK) >>> 0 === check && id < blockCount) yield id;
  }
}

/** What a journal says about an upload. */
export interface JournalState {
  bitmap: Uint8Array;
  received: number;
  bytes: number;
  /** Length in whole records: a torn trailing record (crash mid-append) is overwritten by the next append. */
  length: number;
  /** The journal's mtime: when the last block was stored. */
  lastBlockAt: Date;
}

const hasBit = (bitmap: Uint8Array, id: number): boolean => ((bitmap[id >> 3] ?? 0) & (1 << (id & 7))) !== 0;

function missingOf(bitmap: Uint8Array, blockCount: number, limit: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < blockCount && out.length < limit; i++) if (!hasBit(bitmap, i)) out.push(i);
  return out;
}

/** Reads a journal; null when there is none (no block stored yet, or the staging is gone). */
export async function readJournal(file: string, session: Session): Promise<JournalState | null> {
  let fd: FileHandle;
  try {
    fd = await fsp.open(file, "r");
  } catch (err) {
    if (errno(err) === "ENOENT") return null;
    throw err;
  }
  try {
    const st = await fd.stat();
    const buf = await readFully(fd, st.size, 0);
    const bitmap = new Uint8Array(Math.ceil(session.blockCount / 8));
    let received = 0;
    let bytes = 0;
    for (const id of journalBlocks(buf, session.blockCount)) {
      if (hasBit(bitmap, id)) continue;
      bitmap[id >> 3] = (bitmap[id >> 3] ?? 0) | (1 << (id & 7));
      received++;
      bytes += expectedBlockLength(session, id);
    }
    const length = Math.floor(buf.length / JOURNAL_RECORD_SIZE) * JOURNAL_RECORD_SIZE;
    return { bitmap, received, bytes, length, lastBlockAt: st.mtime };
  } finally {
    await fd.close();
  }
}

/**
 * An upload's staging directory as its journal tells it (journal null: no block stored yet); null when there is
 * no staging directory. @throws the read's error other than ENOENT
 */
export async function readStaging(dir: string, session: Session): Promise<{ journal: JournalState | null } | null> {
  const journal = await readJournal(journalIn(dir), session);
  if (journal) return { journal };
  try {
    await fsp.access(dir);
  } catch {
    return null;
  }
  return { journal: null };
}

/** Progress as a journal tells it (null: no block stored yet). */
export function progressOf(state: JournalState | null, session: Session, missingLimit: number): UploadProgress {
  const missing = missingLimit > 0 ? missingOf(state?.bitmap ?? new Uint8Array(0), session.blockCount, missingLimit) : [];
  if (!state) return { blocksReceived: 0, bytesReceived: 0, lastBlockAt: session.createdAt, missing };
  return { blocksReceived: state.received, bytesReceived: state.bytes, lastBlockAt: state.lastBlockAt, missing };
}

/** One upload being received: which blocks are stored (from the journal), its open files, its running hash. */
export class Upload {
  readonly mutex = new Mutex();
  readonly bitmap: Uint8Array;
  received = 0;
  bytes = 0;
  lastBlockAt: Date;
  dataFd: FileHandle | null = null;
  journalFd: FileHandle | null = null;
  journalLength = 0;
  /** SHA-256 over blocks [0, hashedBlocks), fed as blocks arrive in order. */
  hash: Hash = createHash("sha256");
  hashedBlocks = 0;
  /** Dropped from memory (evicted, completed, deleted, or memory may disagree with disk after an I/O error). */
  stale = false;

  /** `journal` null: no block stored yet. */
  constructor(
    readonly session: Session,
    journal: JournalState | null,
  ) {
    this.bitmap = journal?.bitmap ?? new Uint8Array(Math.ceil(session.blockCount / 8));
    this.lastBlockAt = journal?.lastBlockAt ?? session.createdAt;
    if (journal) {
      this.received = journal.received;
      this.bytes = journal.bytes;
      this.journalLength = journal.length;
    }
  }

  has(blockId: number): boolean {
    return hasBit(this.bitmap, blockId);
  }

  mark(blockId: number): void {
    const i = blockId >> 3;
    this.bitmap[i] = (this.bitmap[i] ?? 0) | (1 << (blockId & 7));
  }

  missing(limit: number): number[] {
    return missingOf(this.bitmap, this.session.blockCount, limit);
  }

  resetHash(): void {
    this.hash = createHash("sha256");
    this.hashedBlocks = 0;
  }

  async closeFiles(): Promise<void> {
    const fds = [this.dataFd, this.journalFd];
    this.dataFd = null;
    this.journalFd = null;
    await Promise.all(fds.map((fd) => (fd ? fd.close().catch(() => undefined) : Promise.resolve())));
  }
}
