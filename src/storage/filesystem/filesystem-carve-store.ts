import { createHash, randomBytes, type Hash } from "node:crypto";
import { constants as fsc, promises as fsp, writeSync } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import path from "node:path";
import { AppError } from "../../errors.js";
import type { Logger } from "../../logger.js";
import {
  archiveExtension,
  blockOffset,
  detectCompression,
  expectedBlockLength,
  isSafeId,
} from "../../carves/geometry.js";
import { crashPoint } from "../../util/crash-point.js";
import { Mutex } from "../../util/mutex.js";
import { LruMap } from "../../util/lru.js";
import type {
  AuditEvent,
  AuditPage,
  AuditQuery,
  CertificateIdentity,
  ArchiveHandle,
  ByteRange,
  CarveRecord,
  CarveStore,
  Compression,
  CreateSessionResult,
  ExpiryCandidate,
  ExpiryCriteria,
  ImportLimits,
  ImportSource,
  ImportSpec,
  LegalHold,
  Verification,
  ListPage,
  ListQuery,
  PutBlockResult,
  Session,
  SessionSpec,
  StoreHealth,
} from "../carve-store.js";
import { copyAgent, MAX_VERIFICATIONS_KEPT } from "../carve-store.js";
import {
  auditMatches,
  compareAuditNewestFirst,
  compareNewestFirst,
  decodeCursor,
  encodeAuditCursor,
  encodeCursor,
  matchesQuery,
} from "../listing.js";
import { acquireDirLock, type DirLock } from "./dir-lock.js";

/*
 * Layout under the data directory (every path is built from validated ids and checked to stay inside):
 *
 *   carves/<carve_id>.tar[.zst]   completed archives, plain files an operator can pick up
 *   meta/<carve_id>.json          the carve record; created once (hard link = atomic claim of the carve_id),
 *                                 replaced atomically (rename) when the carve completes
 *   sessions/<carve_id>/data.part the archive being received, each block written at its offset
 *   sessions/<carve_id>/journal   8-byte records (block id, check) appended after a block's bytes are written:
 *                                 the durable list of stored blocks, replayed after a restart
 *   index/<session_id>            symlink whose target is the carve_id (session id -> carve lookup)
 *   audit/<yyyy-mm-dd>.jsonl      audit events, one JSON object per line, appended
 *   tmp/                          staging for atomic renames and links; emptied at start-up
 *   .lock                         pid of the one process that owns this directory
 *
 * Crash safety: a block is acknowledged only after its bytes and its journal record are written (fsync of
 * each is optional: a process crash keeps the page cache, a power loss needs fsyncEachBlock). Completion
 * fsyncs the data, renames it into carves/ and then rewrites the meta file; start-up recovery finishes any
 * completion that was interrupted between those steps. No partial archive is ever placed in carves/.
 */

const JOURNAL_RECORD_SIZE = 8;
/** Writes up to this size are done synchronously (see writeFully). */
const SYNC_WRITE_MAX = 64 * 1024;
const JOURNAL_CHECK = 0xc4a7e5b1;
/** Bytes of already-stored blocks hashed inline when an earlier gap fills; the rest waits for completion. */
const INLINE_CATCH_UP_BYTES = 64 * 1024 * 1024;

interface MetaFile {
  version: 1;
  carveId: string;
  requestId: string;
  sessionId: string;
  nodeKey: string;
  blockCount: number;
  blockSize: number;
  carveSize: number;
  agent: { address: string | null; userAgent: string | null; certificate?: CertificateIdentity | null };
  createdAt: string;
  /** "deleting": a delete has begun; the carve is invisible and the next delete finishes it.
   *  "importing": an import is streaming in; invisible, and removed at start-up if the process died. */
  status: "receiving" | "complete" | "deleting" | "importing";
  completedAt: string | null;
  sha256: string | null;
  compression: Compression | null;
  hold?: { by: string; reason: string; at: string } | null;
  deletingSince?: string | null;
  origin?: "agent" | "import";
  imported?: ImportSource | null;
  verifications?: Array<Omit<Verification, "at"> & { at: string }>;
}

interface Completion {
  completedAt: Date;
  sha256: string;
  compression: Compression;
}

class ActiveCarve {
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
  completion: Completion | null;
  hold: LegalHold | null = null;
  origin: "agent" | "import" = "agent";
  imported: ImportSource | null = null;
  verifications: Verification[] = [];
  /** Dropped from memory (evicted, or memory may disagree with disk after an I/O error): reload. */
  stale = false;

  constructor(
    readonly session: Session,
    completion: Completion | null,
  ) {
    this.bitmap = new Uint8Array(Math.ceil(session.blockCount / 8));
    this.completion = completion;
    this.lastBlockAt = completion?.completedAt ?? session.createdAt;
  }

  has(blockId: number): boolean {
    return ((this.bitmap[blockId >> 3] ?? 0) & (1 << (blockId & 7))) !== 0;
  }

  mark(blockId: number): void {
    const i = blockId >> 3;
    this.bitmap[i] = (this.bitmap[i] ?? 0) | (1 << (blockId & 7));
  }

  async closeFiles(): Promise<void> {
    const fds = [this.dataFd, this.journalFd];
    this.dataFd = null;
    this.journalFd = null;
    await Promise.all(fds.map((fd) => (fd ? fd.close().catch(() => undefined) : Promise.resolve())));
  }
}

export interface FilesystemCarveStoreOptions {
  dataDir: string;
  logger: Logger;
  fsyncEachBlock?: boolean;
  /** Receiving carves kept in memory with open files; older ones are reloaded from their journal. */
  maxOpenCarves?: number;
  now?: () => Date;
}

function wrapIo(err: unknown, what: string): AppError {
  if (err instanceof AppError) return err;
  return new AppError("STORAGE_UNAVAILABLE", undefined, { cause: Object.assign(new Error(what), { cause: err }) });
}

function errno(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

export class FilesystemCarveStore implements CarveStore {
  readonly backend = "filesystem";
  private readonly root: string;
  private readonly logger: Logger;
  private readonly fsyncEachBlock: boolean;
  private readonly now: () => Date;
  /** Carves in memory with open files, least recently used first. */
  private readonly active = new Map<string, ActiveCarve>();
  private readonly maxOpenCarves: number;
  /** Loads in progress, so two requests for one carve share one ActiveCarve. */
  private readonly loading = new Map<string, Promise<ActiveCarve>>();
  private readonly sessionCache = new LruMap<string, Session>(10_000);
  private closed = false;

  private constructor(
    root: string,
    options: FilesystemCarveStoreOptions,
    private readonly lock: DirLock,
  ) {
    this.root = root;
    this.logger = options.logger;
    this.fsyncEachBlock = options.fsyncEachBlock ?? false;
    this.now = options.now ?? (() => new Date());
    this.maxOpenCarves = options.maxOpenCarves ?? 256;
  }

  /**
   * Opens (creating if needed) a data directory, takes its lock and finishes any completion a crash
   * interrupted.
   * @throws Error when another live process holds the directory, or it cannot be created.
   */
  static async create(options: FilesystemCarveStoreOptions): Promise<FilesystemCarveStore> {
    const root = path.resolve(options.dataDir);
    for (const dir of ["", "carves", "meta", "sessions", "index", "tmp", "audit"]) {
      await fsp.mkdir(path.join(root, dir), { recursive: true });
    }
    const lock = await acquireDirLock(root);
    const store = new FilesystemCarveStore(root, options, lock);
    try {
      await store.cleanTmp();
      await store.recover();
    } catch (err) {
      await lock.release();
      throw err;
    }
    return store;
  }

  // ---------------------------------------------------------------- paths

  private p(...parts: string[]): string {
    const full = path.join(this.root, ...parts);
    if (full !== this.root && !full.startsWith(this.root + path.sep)) {
      throw new AppError("INTERNAL", "path escapes the data directory");
    }
    return full;
  }

  private metaPath(carveId: string): string {
    return this.p("meta", `${carveId}.json`);
  }

  private sessionDir(carveId: string): string {
    return this.p("sessions", carveId);
  }

  private partPath(carveId: string): string {
    return this.p("sessions", carveId, "data.part");
  }

  private journalPath(carveId: string): string {
    return this.p("sessions", carveId, "journal");
  }

  private finalPath(carveId: string, compression: Compression): string {
    return this.p("carves", `${carveId}${archiveExtension(compression)}`);
  }

  private tmpPath(suffix: string): string {
    return this.p("tmp", `${randomBytes(12).toString("hex")}${suffix}`);
  }

  private assertOpen(): void {
    if (this.closed) throw new AppError("STORAGE_UNAVAILABLE", "store is closed");
  }

  // ---------------------------------------------------------------- meta files

  /** The carve's meta file, or null when there is no carve (a deletion in progress counts as none). */
  private async readMeta(carveId: string): Promise<MetaFile | null> {
    const meta = await this.readMetaRaw(carveId);
    return meta && meta.status !== "deleting" && meta.status !== "importing" ? meta : null;
  }

  private async readMetaRaw(carveId: string): Promise<MetaFile | null> {
    try {
      return JSON.parse(await fsp.readFile(this.metaPath(carveId), "utf8")) as MetaFile;
    } catch (err) {
      if (errno(err) === "ENOENT") return null;
      throw wrapIo(err, `read meta of ${carveId}`);
    }
  }

  private async writeTmp(content: string, suffix: string): Promise<string> {
    const tmp = this.tmpPath(suffix);
    const fd = await fsp.open(tmp, "wx", 0o640);
    try {
      await fd.writeFile(content);
      await fd.datasync();
    } finally {
      await fd.close();
    }
    return tmp;
  }

  private async fsyncDir(dir: string): Promise<void> {
    const fd = await fsp.open(dir, "r");
    try {
      await fd.sync();
    } catch (err) {
      // Some filesystems refuse fsync on directories; the rename itself is still atomic.
      if (errno(err) !== "EINVAL" && errno(err) !== "EISDIR") throw err;
    } finally {
      await fd.close();
    }
  }

  private async replaceMeta(meta: MetaFile): Promise<void> {
    const tmp = await this.writeTmp(JSON.stringify(meta), ".json");
    await fsp.rename(tmp, this.metaPath(meta.carveId));
    await this.fsyncDir(this.p("meta"));
  }

  private static sessionOf(meta: MetaFile): Session {
    return {
      sessionId: meta.sessionId,
      carveId: meta.carveId,
      requestId: meta.requestId,
      nodeKey: meta.nodeKey,
      blockCount: meta.blockCount,
      blockSize: meta.blockSize,
      carveSize: meta.carveSize,
      agent: copyAgent(meta.agent),
      createdAt: new Date(meta.createdAt),
    };
  }

  private static applyExtras(carve: ActiveCarve, meta: MetaFile): void {
    carve.hold = FilesystemCarveStore.holdOf(meta);
    carve.origin = meta.origin ?? "agent";
    carve.imported = meta.imported ?? null;
    carve.verifications = (meta.verifications ?? []).map((v) => ({ ...v, at: new Date(v.at) }));
  }

  private static holdOf(meta: MetaFile): LegalHold | null {
    return meta.hold ? { by: meta.hold.by, reason: meta.hold.reason, at: new Date(meta.hold.at) } : null;
  }

  private static completionOf(meta: MetaFile): Completion | null {
    if (meta.status !== "complete" || !meta.completedAt || !meta.sha256 || !meta.compression) return null;
    return { completedAt: new Date(meta.completedAt), sha256: meta.sha256, compression: meta.compression };
  }

  // ---------------------------------------------------------------- sessions

  async createSession(spec: SessionSpec, sessionId: string): Promise<CreateSessionResult> {
    this.assertOpen();
    if (!isSafeId(spec.carveId) || !isSafeId(sessionId)) {
      throw new AppError("INVALID_START", "unsafe identifier");
    }
    const meta: MetaFile = {
      version: 1,
      carveId: spec.carveId,
      requestId: spec.requestId,
      sessionId,
      nodeKey: spec.nodeKey,
      blockCount: spec.blockCount,
      blockSize: spec.blockSize,
      carveSize: spec.carveSize,
      agent: copyAgent(spec.agent),
      createdAt: this.now().toISOString(),
      status: "receiving",
      completedAt: null,
      sha256: null,
      compression: null,
    };
    let created = true;
    let winner = meta;
    try {
      const tmp = await this.writeTmp(JSON.stringify(meta), ".json");
      try {
        // link() fails with EEXIST if the carve_id is taken: the atomic claim, across processes too.
        await fsp.link(tmp, this.metaPath(spec.carveId));
        await this.fsyncDir(this.p("meta"));
      } catch (err) {
        if (errno(err) !== "EEXIST") throw err;
        created = false;
      } finally {
        await fsp.unlink(tmp).catch(() => undefined);
      }
      if (!created) {
        const existing = await this.readMeta(spec.carveId);
        if (!existing) throw new AppError("CARVE_ID_CONFLICT", "the carve is being deleted");
        winner = existing;
      }
      // Every step below is idempotent, so a retried start repairs a start that crashed half-way.
      if (winner.status === "receiving") {
        await fsp.mkdir(this.sessionDir(winner.carveId), { recursive: true });
      }
      try {
        await fsp.symlink(winner.carveId, this.p("index", winner.sessionId));
      } catch (err) {
        if (errno(err) !== "EEXIST") throw err;
      }
    } catch (err) {
      throw wrapIo(err, `create session for ${spec.carveId}`);
    }
    const session = FilesystemCarveStore.sessionOf(winner);
    this.sessionCache.set(session.sessionId, session);
    return { session, created };
  }

  async findSession(sessionId: string): Promise<Session> {
    this.assertOpen();
    const cached = this.sessionCache.get(sessionId);
    if (cached) return cached;
    if (!isSafeId(sessionId)) throw new AppError("UNKNOWN_SESSION");
    let carveId: string;
    try {
      carveId = await fsp.readlink(this.p("index", sessionId));
    } catch (err) {
      if (errno(err) === "ENOENT" || errno(err) === "EINVAL") throw new AppError("UNKNOWN_SESSION");
      throw wrapIo(err, "read session index");
    }
    if (!isSafeId(carveId)) throw new AppError("UNKNOWN_SESSION");
    const meta = await this.readMeta(carveId);
    if (!meta || meta.sessionId !== sessionId) throw new AppError("UNKNOWN_SESSION");
    const session = FilesystemCarveStore.sessionOf(meta);
    this.sessionCache.set(sessionId, session);
    return session;
  }

  // ---------------------------------------------------------------- active carves

  private async activeCarve(carveId: string): Promise<ActiveCarve> {
    const hit = this.active.get(carveId);
    if (hit && !hit.stale) {
      // Map keeps insertion order: re-insert to mark it most recently used.
      this.active.delete(carveId);
      this.active.set(carveId, hit);
      return hit;
    }
    const pending = this.loading.get(carveId);
    if (pending) return pending;
    const load = this.loadCarve(carveId)
      .then((carve) => {
        this.remember(carve);
        return carve;
      })
      .finally(() => this.loading.delete(carveId));
    this.loading.set(carveId, load);
    return load;
  }

  /** The carve's state, from memory when it is active, else read from disk without keeping it. */
  private async peekCarve(carveId: string): Promise<ActiveCarve> {
    const hit = this.active.get(carveId);
    if (hit && !hit.stale) return hit;
    return this.loadCarve(carveId);
  }

  private async loadCarve(carveId: string): Promise<ActiveCarve> {
    const meta = await this.readMeta(carveId);
    if (!meta) throw new AppError("CARVE_NOT_FOUND");
    const carve = new ActiveCarve(FilesystemCarveStore.sessionOf(meta), FilesystemCarveStore.completionOf(meta));
    FilesystemCarveStore.applyExtras(carve, meta);
    if (!carve.completion) {
      await this.replayJournal(carve);
    }
    return carve;
  }

  /** Keeps a carve in memory; beyond the cap, idle carves are dropped (their files closed) oldest first. */
  private remember(carve: ActiveCarve): void {
    this.active.set(carve.session.carveId, carve);
    if (this.active.size <= this.maxOpenCarves) return;
    for (const [id, c] of this.active) {
      if (this.active.size <= this.maxOpenCarves) break;
      if (c === carve || !c.mutex.idle) continue;
      this.active.delete(id);
      c.stale = true;
      void c.closeFiles();
    }
  }

  private async replayJournal(carve: ActiveCarve): Promise<void> {
    const { carveId } = carve.session;
    let buf: Buffer;
    try {
      buf = await fsp.readFile(this.journalPath(carveId));
      const st = await fsp.stat(this.journalPath(carveId));
      carve.lastBlockAt = st.mtime;
    } catch (err) {
      if (errno(err) !== "ENOENT") throw wrapIo(err, `read journal of ${carveId}`);
      buf = Buffer.alloc(0);
    }
    const records = Math.floor(buf.length / JOURNAL_RECORD_SIZE);
    for (let i = 0; i < records; i++) {
      const id = buf.readUInt32LE(i * JOURNAL_RECORD_SIZE);
      const check = buf.readUInt32LE(i * JOURNAL_RECORD_SIZE + 4);
      if ((id ^ JOURNAL_CHECK) >>> 0 !== check || id >= carve.session.blockCount || carve.has(id)) continue;
      carve.mark(id);
      carve.received++;
      carve.bytes += expectedBlockLength(carve.session, id);
    }
    // A torn trailing record (crash mid-append) is ignored and overwritten by the next append.
    carve.journalLength = records * JOURNAL_RECORD_SIZE;
  }

  private async dataFile(carve: ActiveCarve): Promise<FileHandle> {
    if (!carve.dataFd) {
      // O_CREAT without O_TRUNC or O_APPEND: positional writes at each block's offset.
      carve.dataFd = await fsp.open(this.partPath(carve.session.carveId), fsc.O_RDWR | fsc.O_CREAT, 0o640);
    }
    return carve.dataFd;
  }

  private async journalFile(carve: ActiveCarve): Promise<FileHandle> {
    if (!carve.journalFd) {
      carve.journalFd = await fsp.open(this.journalPath(carve.session.carveId), fsc.O_RDWR | fsc.O_CREAT, 0o640);
    }
    return carve.journalFd;
  }

  /**
   * Writes all of `data` at `position`. Small writes (journal records, osquery's default 8 KiB blocks) go
   * straight to the page cache synchronously: a thread-pool round trip costs more than the copy itself.
   */
  private static async writeFully(fd: FileHandle, data: Buffer, position: number): Promise<void> {
    if (data.length <= SYNC_WRITE_MAX) {
      let done = 0;
      while (done < data.length) {
        const n = writeSync(fd.fd, data, done, data.length - done, position + done);
        if (n <= 0) throw new Error("short write");
        done += n;
      }
      return;
    }
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await fd.write(data, done, data.length - done, position + done);
      if (bytesWritten <= 0) throw new Error("short write");
      done += bytesWritten;
    }
  }

  private static async readFully(fd: FileHandle, length: number, position: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await fd.read(buf, done, length - done, position + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done === length ? buf : buf.subarray(0, done);
  }

  /** Path of the bytes of a receiving carve: data.part, or the final file if completion was interrupted. */
  private async locateData(carveId: string): Promise<string> {
    // A file in carves/ is only ever the complete data (it is renamed there after every block is stored and
    // synced), so it wins over any data.part; a stray data.part next to it is removed by the completion.
    for (const c of [this.finalPath(carveId, "none"), this.finalPath(carveId, "zstd"), this.partPath(carveId)]) {
      try {
        await fsp.access(c);
        return c;
      } catch {
        // try the next
      }
    }
    return this.partPath(carveId);
  }

  async putBlock(session: Session, blockId: number, data: Buffer): Promise<PutBlockResult> {
    this.assertOpen();
    if (!Number.isInteger(blockId) || blockId < 0 || blockId >= session.blockCount) {
      throw new AppError("BLOCK_OUT_OF_RANGE");
    }
    if (data.length !== expectedBlockLength(session, blockId)) throw new AppError("BLOCK_LENGTH_MISMATCH");
    let carve: ActiveCarve;
    try {
      carve = await this.activeCarve(session.carveId);
    } catch (err) {
      if (err instanceof AppError && err.code === "CARVE_NOT_FOUND") throw new AppError("UNKNOWN_SESSION");
      throw err;
    }
    if (carve.session.sessionId !== session.sessionId) throw new AppError("UNKNOWN_SESSION");
    return carve.mutex.run(async () => {
      this.assertOpen();
      // Queued behind an operation that dropped this object: continue on a fresh load (other mutex).
      if (carve.stale) return this.putBlock(session, blockId, data);
      const offset = blockOffset(session, blockId);
      try {
        if (carve.completion) {
          await this.compareStored(carve, blockId, data);
          return { duplicate: true, complete: true, completedNow: false };
        }
        if (carve.received === carve.session.blockCount) {
          // Every block is stored but the completion was interrupted (crash, disk full): this re-send (the
          // agent never got its answer) finishes it, then is compared with the completed archive.
          await this.finalize(carve);
          await this.compareStored(carve, blockId, data);
          return { duplicate: true, complete: true, completedNow: true };
        }
        if (carve.has(blockId)) {
          const fd = await this.dataFile(carve);
          const stored = await FilesystemCarveStore.readFully(fd, data.length, offset);
          if (!stored.equals(data)) throw new AppError("BLOCK_CONFLICT");
          return { duplicate: true, complete: false, completedNow: false };
        }
        crashPoint("block.before-write");
        const fd = await this.dataFile(carve);
        await FilesystemCarveStore.writeFully(fd, data, offset);
        if (this.fsyncEachBlock) await fd.datasync();
        crashPoint("block.after-bytes");
        await this.appendJournal(carve, blockId);
        crashPoint("block.after-journal");
        carve.mark(blockId);
        carve.received++;
        carve.bytes += data.length;
        carve.lastBlockAt = this.now();
        await this.advanceHash(carve, blockId, data);
        if (carve.received === carve.session.blockCount) {
          await this.finalize(carve);
          return { duplicate: false, complete: true, completedNow: true };
        }
        return { duplicate: false, complete: false, completedNow: false };
      } catch (err) {
        if (err instanceof AppError) throw err;
        // The state on disk may be ahead of memory: forget the carve, the journal is the truth.
        this.forget(carve);
        throw wrapIo(err, `store block ${blockId} of ${session.carveId}`);
      }
    });
  }

  private forget(carve: ActiveCarve): void {
    carve.stale = true;
    if (this.active.get(carve.session.carveId) === carve) this.active.delete(carve.session.carveId);
    void carve.closeFiles();
  }

  private async appendJournal(carve: ActiveCarve, blockId: number): Promise<void> {
    const record = Buffer.allocUnsafe(JOURNAL_RECORD_SIZE);
    record.writeUInt32LE(blockId, 0);
    record.writeUInt32LE((blockId ^ JOURNAL_CHECK) >>> 0, 4);
    const fd = await this.journalFile(carve);
    // Positional write at the known end: a failed, torn write is overwritten by the next append.
    await FilesystemCarveStore.writeFully(fd, record, carve.journalLength);
    if (this.fsyncEachBlock) await fd.datasync();
    carve.journalLength += JOURNAL_RECORD_SIZE;
  }

  private async compareStored(carve: ActiveCarve, blockId: number, data: Buffer): Promise<void> {
    const completion = carve.completion;
    if (!completion) return;
    const fd = await fsp.open(this.finalPath(carve.session.carveId, completion.compression), "r");
    try {
      const stored = await FilesystemCarveStore.readFully(fd, data.length, blockOffset(carve.session, blockId));
      if (!stored.equals(data)) throw new AppError("BLOCK_CONFLICT");
    } finally {
      await fd.close();
    }
  }

  /** Feeds the running SHA-256 while blocks arrive in order; a filled gap catches up from disk, capped. */
  private async advanceHash(carve: ActiveCarve, blockId: number, data: Buffer): Promise<void> {
    if (blockId !== carve.hashedBlocks) return;
    carve.hash.update(data);
    carve.hashedBlocks++;
    let budget = INLINE_CATCH_UP_BYTES;
    while (carve.hashedBlocks < carve.session.blockCount && carve.has(carve.hashedBlocks) && budget > 0) {
      const len = expectedBlockLength(carve.session, carve.hashedBlocks);
      const fd = await this.dataFile(carve);
      const bytes = await FilesystemCarveStore.readFully(fd, len, blockOffset(carve.session, carve.hashedBlocks));
      carve.hash.update(bytes);
      carve.hashedBlocks++;
      budget -= len;
    }
  }

  /** Completes a carve whose every block is stored. Idempotent; resumes after a crash at any step. */
  private async finalize(carve: ActiveCarve): Promise<void> {
    const { carveId } = carve.session;
    try {
      const source = await this.locateData(carveId);
      const ownFd = source !== this.partPath(carveId);
      const fd = ownFd ? await fsp.open(source, "r") : await this.dataFile(carve);
      let head: Buffer;
      try {
        for (; carve.hashedBlocks < carve.session.blockCount; carve.hashedBlocks++) {
          const len = expectedBlockLength(carve.session, carve.hashedBlocks);
          const offset = blockOffset(carve.session, carve.hashedBlocks);
          carve.hash.update(await FilesystemCarveStore.readFully(fd, len, offset));
        }
        head = await FilesystemCarveStore.readFully(fd, Math.min(4, carve.session.carveSize), 0);
        const { size } = await fd.stat();
        if (size !== carve.session.carveSize) {
          throw new Error(`stored size ${size} differs from carve_size ${carve.session.carveSize}`);
        }
        await fd.datasync();
      } finally {
        if (ownFd) await fd.close().catch(() => undefined);
      }
      const sha256 = carve.hash.digest("hex");
      const compression = detectCompression(head);
      crashPoint("complete.after-hash");
      const completion: Completion = { completedAt: this.now(), sha256, compression };
      await carve.closeFiles();
      const target = this.finalPath(carveId, compression);
      if (source !== target) {
        await fsp.rename(source, target);
        await this.fsyncDir(this.p("carves"));
      } else {
        await fsp.rm(this.partPath(carveId), { force: true }); // an empty leftover, never data
      }
      crashPoint("complete.after-publish");
      const meta = await this.readMeta(carveId);
      if (!meta) throw new Error(`meta of ${carveId} vanished during completion`);
      await this.replaceMeta({
        ...meta,
        status: "complete",
        completedAt: completion.completedAt.toISOString(),
        sha256,
        compression,
      });
      crashPoint("complete.after-record");
      carve.completion = completion;
      carve.lastBlockAt = completion.completedAt;
      await fsp.rm(this.sessionDir(carveId), { recursive: true, force: true });
      this.logger.info(
        { carveId, sha256, compression, carveSize: carve.session.carveSize, blockCount: carve.session.blockCount },
        "carve complete",
      );
    } catch (err) {
      // Never leave a half-fed hash behind: the next attempt re-hashes from disk.
      carve.hash = createHash("sha256");
      carve.hashedBlocks = 0;
      throw err;
    }
  }

  // ---------------------------------------------------------------- start-up

  private async cleanTmp(): Promise<void> {
    const dir = this.p("tmp");
    for (const name of await fsp.readdir(dir)) {
      await fsp.rm(path.join(dir, name), { recursive: true, force: true });
    }
  }

  /** Finishes completions that a crash interrupted, so no carve with every block stored stays "receiving";
   * removes imports that never finished (their client never got a success). */
  private async recover(): Promise<void> {
    for (const name of await fsp.readdir(this.p("meta"))) {
      const carveId = name.endsWith(".json") ? name.slice(0, -".json".length) : "";
      if (!isSafeId(carveId)) continue;
      const meta = await this.readMetaRaw(carveId);
      if (meta?.status !== "importing") continue;
      this.logger.warn({ carveId }, "removing an import interrupted by a restart");
      for (const c of ["none", "zstd"] as const) await fsp.rm(this.finalPath(carveId, c), { force: true });
      await fsp.rm(this.metaPath(carveId), { force: true });
    }
    for (const carveId of await fsp.readdir(this.p("sessions"))) {
      if (!isSafeId(carveId)) continue;
      const meta = await this.readMeta(carveId);
      if (!meta) {
        // A session directory without its claim cannot be reached by any agent: leave it to retention.
        continue;
      }
      if (meta.status === "complete") {
        await fsp.rm(this.sessionDir(carveId), { recursive: true, force: true });
        continue;
      }
      const carve = await this.activeCarve(carveId);
      if (!carve.completion && carve.received === carve.session.blockCount) {
        this.logger.warn({ carveId }, "finishing a completion interrupted by a restart");
        await carve.mutex.run(() => this.finalize(carve));
      }
    }
  }

  // ---------------------------------------------------------------- reads

  private recordOf(carve: ActiveCarve): CarveRecord {
    const c = carve.completion;
    return {
      ...carve.session,
      agent: copyAgent(carve.session.agent),
      status: c ? "complete" : "receiving",
      updatedAt: carve.lastBlockAt,
      completedAt: c?.completedAt ?? null,
      blocksReceived: c ? carve.session.blockCount : carve.received,
      bytesReceived: c ? carve.session.carveSize : carve.bytes,
      sha256: c?.sha256 ?? null,
      compression: c?.compression ?? null,
      hold: carve.hold ? { ...carve.hold } : null,
      origin: carve.origin,
      imported: carve.imported ? { ...carve.imported, importedBy: { ...carve.imported.importedBy } } : null,
      verifications: carve.verifications.map((v) => ({ ...v })),
    };
  }

  async getCarve(carveId: string): Promise<CarveRecord> {
    this.assertOpen();
    if (!isSafeId(carveId)) throw new AppError("CARVE_NOT_FOUND");
    return this.recordOf(await this.peekCarve(carveId));
  }

  async missingBlocks(carveId: string, limit: number): Promise<number[]> {
    this.assertOpen();
    if (!isSafeId(carveId)) throw new AppError("CARVE_NOT_FOUND");
    const carve = await this.peekCarve(carveId);
    if (carve.completion) return [];
    const out: number[] = [];
    for (let i = 0; i < carve.session.blockCount && out.length < limit; i++) if (!carve.has(i)) out.push(i);
    return out;
  }

  async listCarves(query: ListQuery): Promise<ListPage> {
    this.assertOpen();
    const after = query.cursor ? decodeCursor(query.cursor) : null;
    const records: CarveRecord[] = [];
    for (const name of await fsp.readdir(this.p("meta"))) {
      if (!name.endsWith(".json")) continue;
      const carveId = name.slice(0, -".json".length);
      if (!isSafeId(carveId)) continue;
      try {
        const record = await this.getCarve(carveId);
        if (matchesQuery(record, query, after)) records.push(record);
      } catch (err) {
        if (err instanceof AppError && err.code === "CARVE_NOT_FOUND") continue; // deleted meanwhile
        throw err;
      }
    }
    records.sort(compareNewestFirst);
    const page = records.slice(0, query.limit);
    const last = page[page.length - 1];
    return { carves: page, nextCursor: records.length > query.limit && last ? encodeCursor(last) : null };
  }

  async openArchive(carveId: string, range?: ByteRange): Promise<ArchiveHandle> {
    this.assertOpen();
    const record = await this.getCarve(carveId);
    if (record.status !== "complete" || !record.compression) throw new AppError("CARVE_NOT_COMPLETE");
    const file = this.finalPath(carveId, record.compression);
    try {
      const fd = await fsp.open(file, "r");
      const stream = fd.createReadStream({
        autoClose: true,
        ...(range ? { start: range.start, end: range.end } : {}),
        highWaterMark: 256 * 1024,
      });
      const readAt = async (buffer: Buffer, length: number, position: number): Promise<number> =>
        (await fd.read(buffer, 0, length, position)).bytesRead;
      return { record, stream, readAt };
    } catch (err) {
      if (errno(err) === "ENOENT") throw new AppError("CARVE_NOT_FOUND");
      throw wrapIo(err, `open archive of ${carveId}`);
    }
  }

  async deleteCarve(
    carveId: string,
    options: { onlyIfExpired?: ExpiryCriteria } = {},
  ): Promise<{ deleted: boolean; bytesFreed: number }> {
    this.assertOpen();
    if (!isSafeId(carveId)) throw new AppError("CARVE_NOT_FOUND");
    const first = await this.readMetaRaw(carveId);
    if (!first) throw new AppError("CARVE_NOT_FOUND");
    if (first.status === "deleting") {
      const since = first.deletingSince ? Date.parse(first.deletingSince) : 0;
      if (options.onlyIfExpired && since >= options.onlyIfExpired.staleDeleteBefore.getTime()) {
        return { deleted: false, bytesFreed: 0 }; // another deletion is under way right now
      }
      return { deleted: true, bytesFreed: await this.removeCarveFiles(first, 0) };
    }
    // Through the carve's mutex: no block write can land between the expiry check and the delete.
    const carve = await this.activeCarve(carveId);
    return carve.mutex.run(async () => {
      const meta = await this.readMetaRaw(carveId);
      if (!meta || meta.status === "deleting") {
        if (options.onlyIfExpired) return { deleted: false, bytesFreed: 0 };
        throw new AppError("CARVE_NOT_FOUND");
      }
      if (meta.hold) {
        if (options.onlyIfExpired) return { deleted: false, bytesFreed: 0 };
        throw new AppError("CARVE_ON_HOLD");
      }
      const criteria = options.onlyIfExpired;
      if (criteria) {
        const expired = carve.completion
          ? carve.completion.completedAt < criteria.completedBefore
          : carve.lastBlockAt < criteria.idleBefore;
        if (!expired) return { deleted: false, bytesFreed: 0 };
      }
      const bytes = carve.completion ? carve.session.carveSize : carve.bytes;
      try {
        // Step 1 makes the carve invisible everywhere (reads, new blocks, listings); the rest frees space.
        await this.replaceMeta({ ...meta, status: "deleting", deletingSince: this.now().toISOString() });
      } catch (err) {
        throw wrapIo(err, `delete ${carveId}`);
      }
      crashPoint("delete.after-mark");
      this.forget(carve);
      return { deleted: true, bytesFreed: await this.removeCarveFiles(meta, bytes) };
    });
  }

  /** Everything a carve owns, meta last: an interrupted run is finished by the next delete. */
  private async removeCarveFiles(meta: MetaFile, bytesFreed: number): Promise<number> {
    const { carveId } = meta;
    try {
      this.sessionCache.delete(meta.sessionId);
      for (const file of [this.finalPath(carveId, "none"), this.finalPath(carveId, "zstd"), this.partPath(carveId)]) {
        await fsp.rm(file, { force: true });
      }
      await fsp.rm(this.sessionDir(carveId), { recursive: true, force: true }); // journal included
      crashPoint("delete.after-bytes");
      await fsp.rm(this.p("index", meta.sessionId), { force: true });
      await fsp.rm(this.metaPath(carveId), { force: true });
    } catch (err) {
      throw wrapIo(err, `delete ${carveId}`);
    }
    this.logger.info({ carveId, bytesFreed }, "carve deleted");
    return bytesFreed;
  }

  async findExpired(criteria: ExpiryCriteria, limit: number): Promise<ExpiryCandidate[]> {
    this.assertOpen();
    const found: Array<ExpiryCandidate & { age: number }> = [];
    for (const name of await fsp.readdir(this.p("meta"))) {
      if (!name.endsWith(".json")) continue;
      const carveId = name.slice(0, -".json".length);
      if (!isSafeId(carveId)) continue;
      const meta = await this.readMetaRaw(carveId);
      if (!meta) continue;
      if (meta.status === "deleting") {
        const since = meta.deletingSince ? Date.parse(meta.deletingSince) : 0;
        if (since < criteria.staleDeleteBefore.getTime()) {
          found.push({ carveId, reason: "unfinished-delete", bytes: 0, age: since });
        }
        continue;
      }
      if (meta.hold || meta.status === "importing") continue; // imports in flight belong to their request
      if (meta.status === "complete") {
        const at = Date.parse(meta.completedAt ?? meta.createdAt);
        if (at < criteria.completedBefore.getTime()) {
          found.push({ carveId, reason: "retention", bytes: meta.carveSize, age: at });
        }
        continue;
      }
      const lastActivity = await this.lastActivity(meta);
      if (lastActivity < criteria.idleBefore.getTime()) {
        found.push({ carveId, reason: "abandoned", bytes: (await this.peekCarve(carveId)).bytes, age: lastActivity });
      }
    }
    found.sort((a, b) => a.age - b.age);
    return found.slice(0, limit).map(({ age: _age, ...c }) => c);
  }

  private async lastActivity(meta: MetaFile): Promise<number> {
    const active = this.active.get(meta.carveId);
    if (active) return active.lastBlockAt.getTime();
    try {
      return (await fsp.stat(this.journalPath(meta.carveId))).mtime.getTime();
    } catch {
      return Date.parse(meta.createdAt);
    }
  }

  async importCarve(spec: ImportSpec, data: AsyncIterable<Buffer>, limits: ImportLimits): Promise<CarveRecord> {
    this.assertOpen();
    if (!isSafeId(spec.carveId) || !isSafeId(spec.sessionId)) throw new AppError("INVALID_START", "unsafe identifier");
    const startedAt = this.now();
    const meta: MetaFile = {
      version: 1,
      carveId: spec.carveId,
      requestId: "import",
      sessionId: spec.sessionId,
      nodeKey: "",
      blockCount: 1,
      blockSize: 1,
      carveSize: 0,
      agent: copyAgent(spec.agent),
      createdAt: startedAt.toISOString(),
      status: "importing",
      completedAt: null,
      sha256: null,
      compression: null,
      origin: "import",
      imported: spec.source,
      verifications: [],
    };
    // Claim the carve id first (atomic link), so nothing else can take it while the bytes stream in.
    try {
      const claim = await this.writeTmp(JSON.stringify(meta), ".json");
      try {
        await fsp.link(claim, this.metaPath(spec.carveId));
      } finally {
        await fsp.unlink(claim).catch(() => undefined);
      }
    } catch (err) {
      if (errno(err) === "EEXIST") throw new AppError("CARVE_ID_CONFLICT");
      throw wrapIo(err, "claim import");
    }
    const part = this.tmpPath(".import");
    let fd: FileHandle | null = null;
    try {
      fd = await fsp.open(part, "wx", 0o640);
      const hash = createHash("sha256");
      const head: Buffer[] = [];
      let size = 0;
      try {
        for await (const chunk of data) {
          size += chunk.length;
          if (size > limits.maxBytes) throw new AppError("IMPORT_TOO_LARGE");
          hash.update(chunk);
          if (size - chunk.length < 4) head.push(chunk.subarray(0, 4));
          await FilesystemCarveStore.writeFully(fd, chunk, size - chunk.length);
          crashPoint("import.mid-stream");
        }
      } catch (err) {
        if (err instanceof AppError) throw err;
        throw new AppError("IMPORT_ABORTED", undefined, { cause: err });
      }
      if (size === 0) throw new AppError("IMPORT_EMPTY");
      const sha256 = hash.digest("hex");
      if (limits.expectedSha256 && limits.expectedSha256.toLowerCase() !== sha256) {
        throw new AppError("IMPORT_HASH_MISMATCH", `got ${sha256}`);
      }
      await fd.datasync();
      await fd.close();
      fd = null;
      const compression = detectCompression(Buffer.concat(head).subarray(0, 4));
      crashPoint("import.before-publish");
      await fsp.rename(part, this.finalPath(spec.carveId, compression));
      await this.fsyncDir(this.p("carves"));
      const completedAt = this.now();
      await this.replaceMeta({
        ...meta,
        blockSize: size,
        carveSize: size,
        status: "complete",
        completedAt: completedAt.toISOString(),
        sha256,
        compression,
      });
      this.logger.info({ carveId: spec.carveId, sha256, compression, size }, "archive imported");
      return this.getCarve(spec.carveId);
    } catch (err) {
      await fd?.close().catch(() => undefined);
      await fsp.rm(part, { force: true });
      for (const c of ["none", "zstd"] as const) await fsp.rm(this.finalPath(spec.carveId, c), { force: true });
      await fsp.rm(this.metaPath(spec.carveId), { force: true });
      if (err instanceof AppError) throw err;
      throw wrapIo(err, "import archive");
    }
  }

  async recordVerification(carveId: string, verification: Verification): Promise<CarveRecord> {
    this.assertOpen();
    if (!isSafeId(carveId)) throw new AppError("CARVE_NOT_FOUND");
    const carve = await this.activeCarve(carveId);
    return carve.mutex.run(async () => {
      const meta = await this.readMeta(carveId);
      if (!meta) throw new AppError("CARVE_NOT_FOUND");
      const verifications = [...(meta.verifications ?? []), { ...verification, at: verification.at.toISOString() }].slice(-MAX_VERIFICATIONS_KEPT);
      try {
        await this.replaceMeta({ ...meta, verifications });
      } catch (err) {
        throw wrapIo(err, `record verification of ${carveId}`);
      }
      carve.verifications = verifications.map((v) => ({ ...v, at: new Date(v.at) }));
      return this.recordOf(carve);
    });
  }

  async setHold(carveId: string, hold: LegalHold | null): Promise<CarveRecord> {
    this.assertOpen();
    if (!isSafeId(carveId)) throw new AppError("CARVE_NOT_FOUND");
    const carve = await this.activeCarve(carveId);
    return carve.mutex.run(async () => {
      const meta = await this.readMeta(carveId);
      if (!meta) throw new AppError("CARVE_NOT_FOUND");
      try {
        await this.replaceMeta({ ...meta, hold: hold ? { by: hold.by, reason: hold.reason, at: hold.at.toISOString() } : null });
      } catch (err) {
        throw wrapIo(err, `set hold on ${carveId}`);
      }
      carve.hold = hold ? { ...hold } : null;
      return this.recordOf(carve);
    });
  }

  private readonly auditMutex = new Mutex();

  async appendAudit(event: AuditEvent): Promise<void> {
    this.assertOpen();
    const line = `${JSON.stringify({ ...event, at: event.at.toISOString() })}\n`;
    const file = this.p("audit", `${event.at.toISOString().slice(0, 10)}.jsonl`);
    await this.auditMutex.run(async () => {
      try {
        await fsp.appendFile(file, line, { mode: 0o640 });
      } catch (err) {
        throw wrapIo(err, "append audit event");
      }
    });
  }

  async listAudit(query: AuditQuery): Promise<AuditPage> {
    this.assertOpen();
    const after = query.cursor ? decodeCursor(query.cursor) : null;
    const files = (await fsp.readdir(this.p("audit"))).filter((f) => /^\d{4}-\d{2}-\d{2}\.jsonl$/.test(f)).sort().reverse();
    const found: AuditEvent[] = [];
    for (const file of files) {
      const day = file.slice(0, 10);
      // Whole days outside the window are skipped without reading them.
      if (query.since && day < query.since.toISOString().slice(0, 10)) break;
      if (query.until && day > query.until.toISOString().slice(0, 10)) continue;
      if (after && day > new Date(after.t).toISOString().slice(0, 10)) continue;
      const text = await fsp.readFile(this.p("audit", file), "utf8");
      for (const line of text.split("\n")) {
        if (!line) continue;
        let raw: AuditEvent & { at: string };
        try {
          raw = JSON.parse(line) as AuditEvent & { at: string };
        } catch {
          continue; // a torn last line after a crash
        }
        const event: AuditEvent = { ...raw, at: new Date(raw.at) };
        if (auditMatches(event, query, after)) found.push(event);
      }
      if (found.length > query.limit) break;
    }
    found.sort(compareAuditNewestFirst);
    const page = found.slice(0, query.limit);
    const last = page[page.length - 1];
    return { events: page, nextCursor: found.length > query.limit && last ? encodeAuditCursor(last) : null };
  }

  async freeBytes(): Promise<number | null> {
    this.assertOpen();
    try {
      const fs = await fsp.statfs(this.root);
      return fs.bavail * fs.bsize;
    } catch (err) {
      throw wrapIo(err, "statfs");
    }
  }

  async health(): Promise<StoreHealth> {
    const detail: Record<string, string | number | boolean | null> = { dataDir: this.root };
    try {
      this.assertOpen();
      const probe = await this.writeTmp("probe", ".probe");
      await fsp.unlink(probe);
      const fs = await fsp.statfs(this.root);
      detail.freeBytes = fs.bavail * fs.bsize;
      detail.activeCarves = this.active.size;
      return { ok: true, backend: this.backend, detail };
    } catch (err) {
      detail.error = errno(err) ?? (err instanceof Error ? err.message : "unknown");
      return { ok: false, backend: this.backend, detail };
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Let in-flight writes finish, then close their files.
    await Promise.all([...this.active.values()].map((c) => c.mutex.run(() => c.closeFiles())));
    this.active.clear();
    await this.lock.release();
  }
}
