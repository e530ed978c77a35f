import { createHash, type Hash } from "node:crypto";
import { promises as fsp } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import path from "node:path";
import { blockOffset, expectedBlockLength } from "../../carves/geometry.js";
import { crashPoint } from "../../util/crash-point.js";
import { Mutex } from "../../util/mutex.js";
import type { UploadProgress } from "../contracts.js";
import type { Session } from "../model.js";
import { errno, readFully, SYNC_WRITE_MAX, writeFullySync } from "./fs-io.js";

/*
 * An upload's journal (sessions/<carve_id>/journal): 8-byte records (block id, check) appended after a block's
 * bytes are written, the durable list of stored blocks. This module reads it back, holds an upload's state in
 * memory (Upload), and answers progress of uploads not in memory from a bounded cache of what their journals
 * said, checked against the journal's stat each time.
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

/**
 * Which content of a journal file was read. The store only ever appends to a journal (a torn trailing record
 * is overwritten by a longer write), so every write changes its size and mtime; a re-created file has a new
 * inode or starts again from size 0.
 */
export interface JournalStamp {
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  ino: number;
}

function stampOf(st: { size: number; mtimeMs: number; ctimeMs: number; ino: number }): JournalStamp {
  return { size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, ino: st.ino };
}

function sameStamp(a: JournalStamp, b: JournalStamp): boolean {
  return a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs && a.ino === b.ino;
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
  stamp: JournalStamp;
}

const hasBit = (bitmap: Uint8Array, id: number): boolean => ((bitmap[id >> 3] ?? 0) & (1 << (id & 7))) !== 0;
const setBit = (bitmap: Uint8Array, id: number): void => {
  bitmap[id >> 3] = (bitmap[id >> 3] ?? 0) | (1 << (id & 7));
};

function missingOf(bitmap: Uint8Array, blockCount: number, limit: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < blockCount && out.length < limit; i++) if (!hasBit(bitmap, i)) out.push(i);
  return out;
}

/**
 * Reads a journal; null when there is none (no block stored yet, or the staging is gone). The stamp is taken
 * before the bytes are read, so a block appended meanwhile makes the stamp stale rather than the state.
 */
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
      setBit(bitmap, id);
      received++;
      bytes += expectedBlockLength(session, id);
    }
    const length = Math.floor(buf.length / JOURNAL_RECORD_SIZE) * JOURNAL_RECORD_SIZE;
    return { bitmap, received, bytes, length, lastBlockAt: st.mtime, stamp: stampOf(st) };
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

  /** Whether a block can be stored synchronously (storeNow): files open, small, not stored, no hash catch-up. */
  storableNow(blockId: number, length: number): boolean {
    if (this.dataFd === null || this.journalFd === null || length > SYNC_WRITE_MAX || this.has(blockId)) return false;
    return !(blockId === this.hashedBlocks && this.has(blockId + 1));
  }

  /**
   * Stores a new block with no promise and no wait, so nothing else runs on this upload meanwhile: its bytes,
   * then its journal record, the same steps and crash points as the asynchronous path. Only when storableNow().
   */
  storeNow(blockId: number, data: Buffer, at: Date): void {
    crashPoint("block.before-write");
    writeFullySync((this.dataFd as FileHandle).fd, data, blockOffset(this.session, blockId));
    crashPoint("block.after-bytes");
    writeFullySync((this.journalFd as FileHandle).fd, journalRecord(blockId), this.journalLength);
    this.journaled(blockId, data.length, at);
    if (blockId === this.hashedBlocks) {
      this.hash.update(data);
      this.hashedBlocks++;
    }
  }

  /** Counts a block whose bytes and journal record (at the journal's end) are written. */
  journaled(blockId: number, length: number, at: Date): void {
    this.journalLength += JOURNAL_RECORD_SIZE;
    crashPoint("block.after-journal");
    this.mark(blockId);
    this.received++;
    this.bytes += length;
    this.lastBlockAt = at;
  }

  mark(blockId: number): void {
    setBit(this.bitmap, blockId);
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

interface CachedProgress {
  sessionId: string;
  stamp: JournalStamp;
  blocksReceived: number;
  bytesReceived: number;
  lastBlockAt: Date;
}

/**
 * Progress of uploads not in memory, as their journals said when last read (a list page asks for the same
 * receiving carves again and again; reading each journal costs an open, fstat, read and close). An answer is
 * given only while the journal's stat still matches the one taken before it was read: one stat instead of a read,
 * and exact, because every stored block changes the journal's size and mtime. Counts only, no block bitmap, so
 * an entry has a fixed size; at most `max` entries, least recently used dropped first.
 */
export class JournalProgressCache {
  private readonly entries = new Map<string, CachedProgress>();

  constructor(private readonly max: number) {}

  get size(): number {
    return this.entries.size;
  }

  /** The cached progress if the journal at `file` is unchanged since; undefined when it must be read. */
  async lookup(session: Session, file: string): Promise<UploadProgress | undefined> {
    const hit = this.entries.get(session.carveId);
    if (!hit) return undefined;
    if (hit.sessionId !== session.sessionId) {
      this.entries.delete(session.carveId);
      return undefined;
    }
    const current = (): boolean => this.entries.get(session.carveId) === hit;
    let stamp: JournalStamp;
    try {
      stamp = stampOf(await fsp.stat(file));
    } catch {
      // Gone (deleted, published) or unreadable: the caller's read of the journal gives the answer or the error.
      if (current()) this.entries.delete(session.carveId);
      return undefined;
    }
    if (!sameStamp(stamp, hit.stamp)) {
      if (current()) this.entries.delete(session.carveId);
      return undefined;
    }
    if (current()) {
      // Re-insert, most recently used; unless a newer read replaced the entry while the stat ran.
      this.entries.delete(session.carveId);
      this.entries.set(session.carveId, hit);
    }
    return { blocksReceived: hit.blocksReceived, bytesReceived: hit.bytesReceived, lastBlockAt: hit.lastBlockAt, missing: [] };
  }

  remember(session: Session, state: JournalState): void {
    if (this.max <= 0) return;
    this.entries.delete(session.carveId);
    this.entries.set(session.carveId, {
      sessionId: session.sessionId,
      stamp: state.stamp,
      blocksReceived: state.received,
      bytesReceived: state.bytes,
      lastBlockAt: state.lastBlockAt,
    });
    for (const id of this.entries.keys()) {
      if (this.entries.size <= this.max) break;
      this.entries.delete(id);
    }
  }

  /** Forgets a carve's entry: its upload is in memory, published or deleted. */
  drop(carveId: string): void {
    this.entries.delete(carveId);
  }

  clear(): void {
    this.entries.clear();
  }
}
