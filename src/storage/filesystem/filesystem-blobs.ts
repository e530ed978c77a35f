import { randomBytes } from "node:crypto";
import { constants as fsc, promises as fsp } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import path from "node:path";
import { AppError } from "../../errors.js";
import type { Logger } from "../../logger.js";
import { blockOffset, detectCompression, expectedBlockLength, isSafeId } from "../../carves/geometry.js";
import { crashPoint } from "../../util/crash-point.js";
import type { ArchiveFacts, ArchiveRef, BlobReader, BlobStore, BlockWrite, ImportLimits, UploadProgress } from "../contracts.js";
import type { ByteRange, Compression, Session, StoreHealth } from "../model.js";
import { DataDirPaths } from "./data-dir-paths.js";
import { acquireDirLock, type DirLock } from "./dir-lock.js";
import { SpaceReserve } from "./space-reserve.js";
import { errno, freeBytesOf, fsyncDir, hashFile, probeHealth, readFully, streamToFile, wrapIo, writeFully } from "./fs-io.js";
import { journalRecord, JournalProgressCache, progressOf, readStaging, Upload, type JournalState } from "./upload-journal.js";

/* The data directory's layout, and what makes a block stored: ./data-dir-paths.ts. */

/** Bytes of already-stored blocks hashed inline when an earlier gap fills; the rest waits for completion. */
const INLINE_CATCH_UP_BYTES = 64 * 1024 * 1024;

export interface FilesystemBlobsOptions {
  dataDir: string;
  logger: Logger;
  fsyncEachBlock?: boolean;
  /** Uploads kept in memory with open files; older ones are reloaded from their journal. */
  maxOpenUploads?: number;
  /** Progress of uploads not in memory kept from their journals, checked by a stat (./upload-journal.ts). */
  maxCachedProgress?: number;
  /** The clock of "last block stored" (tests move it). */
  now?: () => Date;
  /** Disk kept back for custody writes when the disk fills (./space-reserve.ts); default 8 MiB. */
  reserveBytes?: number;
}

export class FilesystemBlobs implements BlobStore {
  readonly kind = "filesystem";
  readonly root: string;
  private readonly paths: DataDirPaths;
  private readonly logger: Logger;
  private readonly fsyncEachBlock: boolean;
  private readonly maxOpen: number;
  private readonly now: () => Date;
  /** Uploads in memory with open files, least recently used first. */
  private readonly active = new Map<string, Upload>();
  private readonly loading = new Map<string, Promise<Upload | null>>();
  private readonly progressCache: JournalProgressCache;
  private closed = false;

  private constructor(
    root: string,
    options: FilesystemBlobsOptions,
    private readonly lock: DirLock,
    private readonly reserve: SpaceReserve,
  ) {
    this.root = root;
    this.paths = new DataDirPaths(root);
    this.logger = options.logger;
    this.fsyncEachBlock = options.fsyncEachBlock ?? false;
    this.maxOpen = options.maxOpenUploads ?? 256;
    this.now = options.now ?? (() => new Date());
    this.progressCache = new JournalProgressCache(options.maxCachedProgress ?? 4096);
  }

  /**
   * Opens (creating if needed) a data directory and takes its lock.
   * @throws Error when another live process holds the directory, or it cannot be created.
   */
  static async create(options: FilesystemBlobsOptions): Promise<FilesystemBlobs> {
    const root = path.resolve(options.dataDir);
    for (const dir of ["", "carves", "sessions", "tmp"]) await fsp.mkdir(path.join(root, dir), { recursive: true });
    const lock = await acquireDirLock(root);
    try {
      for (const name of await fsp.readdir(path.join(root, "tmp"))) {
        await fsp.rm(path.join(root, "tmp", name), { recursive: true, force: true });
      }
      const reserve = SpaceReserve.open(root, options.reserveBytes ?? 8 * 1024 * 1024, options.logger);
      return new FilesystemBlobs(root, options, lock, reserve);
    } catch (err) {
      await lock.release();
      throw err;
    }
  }

  private assertOpen(): void {
    if (this.closed) throw new AppError("STORAGE_UNAVAILABLE", "store is closed");
  }

  /** Block writes wait while the custody reserve is spent (see ./space-reserve.ts). */
  private assertRoom(): void {
    if (!this.reserve.writable(this.root)) throw new AppError("STORAGE_UNAVAILABLE", "storage full");
  }

  /** Gives the custody reserve to a custody write that found the disk full; false when none is left. */
  releaseReserve(): boolean {
    return this.reserve.release();
  }

  private static checkIds(target: { carveId: string; sessionId: string }): void {
    if (!isSafeId(target.carveId) || !isSafeId(target.sessionId)) throw new AppError("UNKNOWN_SESSION");
  }

  /** The published archive of a carve, if there is one. */
  private async published(carveId: string): Promise<{ file: string; compression: Compression } | null> {
    for (const compression of ["none", "zstd"] as const) {
      const file = this.paths.finalPath(carveId, compression);
      try {
        await fsp.access(file);
        return { file, compression };
      } catch {
        // try the other
      }
    }
    return null;
  }

  async begin(session: Session): Promise<void> {
    this.assertOpen();
    if (!isSafeId(session.carveId) || !isSafeId(session.sessionId)) throw new AppError("INVALID_START", "unsafe identifier");
    this.assertRoom();
    try {
      await fsp.mkdir(this.paths.sessionDir(session.carveId), { recursive: true });
    } catch (err) {
      throw wrapIo(err, `begin upload of ${session.carveId}`);
    }
  }

  // ---------------------------------------------------------------- uploads in memory

  /** The upload in memory, loaded from its journal if needed; null when it has no staging directory. */
  private async upload(session: Session): Promise<Upload | null> {
    const hit = this.inMemory(session);
    if (hit) return hit;
    const pending = this.loading.get(session.carveId);
    if (pending) return pending;
    const load = this.readStaging(session)
      .then((staging) => {
        const u = staging ? new Upload(session, staging.journal) : null;
        if (u) this.remember(u);
        return u;
      })
      .finally(() => this.loading.delete(session.carveId));
    this.loading.set(session.carveId, load);
    return load;
  }

  /** The session's upload if it is in memory and current. */
  private resident(session: Session): Upload | null {
    const hit = this.active.get(session.carveId);
    return hit && !hit.stale && hit.session.sessionId === session.sessionId ? hit : null;
  }

  /** The upload if it is in memory, marked most recently used, without a promise. */
  private inMemory(session: Session): Upload | null {
    const hit = this.resident(session);
    if (!hit) return null;
    this.active.delete(session.carveId); // re-insert: most recently used
    this.active.set(session.carveId, hit);
    return hit;
  }

  /** What the disk holds of an upload (journal null: no block stored yet); null when it has no staging. */
  private async readStaging(session: Session): Promise<{ journal: JournalState | null } | null> {
    const { carveId } = session;
    // A file in carves/ is a whole archive: staging beside it is a crash's leftover, never to be reopened.
    if (await this.published(carveId)) {
      await fsp.rm(this.paths.sessionDir(carveId), { recursive: true, force: true });
      return null;
    }
    try {
      return await readStaging(this.paths.sessionDir(carveId), session);
    } catch (err) {
      throw wrapIo(err, `read journal of ${carveId}`);
    }
  }

  /** Keeps an upload in memory; beyond the cap, idle ones are dropped (their files closed) oldest first. */
  private remember(upload: Upload): void {
    this.active.set(upload.session.carveId, upload);
    this.progressCache.drop(upload.session.carveId); // memory answers now
    for (const [id, u] of this.active) {
      if (this.active.size <= this.maxOpen) break;
      if (u === upload || !u.mutex.idle) continue;
      this.forget(u);
      this.active.delete(id);
    }
  }

  private forget(upload: Upload): void {
    upload.stale = true;
    this.progressCache.drop(upload.session.carveId);
    if (this.active.get(upload.session.carveId) === upload) this.active.delete(upload.session.carveId);
    void upload.closeFiles();
  }

  private async dataFile(upload: Upload): Promise<FileHandle> {
    // O_CREAT without O_TRUNC or O_APPEND: positional writes at each block's offset.
    upload.dataFd ??= await fsp.open(this.paths.partPath(upload.session.carveId), fsc.O_RDWR | fsc.O_CREAT, 0o640);
    return upload.dataFd;
  }

  private async journalFile(upload: Upload): Promise<FileHandle> {
    upload.journalFd ??= await fsp.open(this.paths.journalPath(upload.session.carveId), fsc.O_RDWR | fsc.O_CREAT, 0o640);
    return upload.journalFd;
  }

  // ---------------------------------------------------------------- blocks

  async putBlock(session: Session, blockId: number, data: Buffer): Promise<BlockWrite> {
    this.assertOpen();
    if (!Number.isInteger(blockId) || blockId < 0 || blockId >= session.blockCount) throw new AppError("BLOCK_OUT_OF_RANGE");
    if (data.length !== expectedBlockLength(session, blockId)) throw new AppError("BLOCK_LENGTH_MISMATCH");
    FilesystemBlobs.checkIds(session);
    const upload = this.inMemory(session) ?? (await this.upload(session));
    if (!upload) return this.compareWithArchive(session, blockId, data);
    if (!upload.has(blockId)) this.assertRoom();
    // The common case (a new small block of an upload in memory, nothing else running on it) is stored without
    // the mutex and without a promise per step: nothing can run in between, as nothing there waits. Same steps,
    // same order, same crash points as below (where a small block's writes are synchronous too).
    if (upload.mutex.idle && !this.fsyncEachBlock && upload.storableNow(blockId, data.length)) {
      try {
        upload.storeNow(blockId, data, this.now());
        return { duplicate: false, allStored: upload.received === session.blockCount, published: false };
      } catch (err) {
        return this.writeFailed(upload, blockId, data, err);
      }
    }
    return upload.mutex.run(async () => {
      this.assertOpen();
      // Queued behind an operation that dropped this object (completion, delete, I/O error): start over.
      if (upload.stale) return this.putBlock(session, blockId, data);
      const offset = blockOffset(session, blockId);
      try {
        if (upload.has(blockId)) {
          const stored = await readFully(await this.dataFile(upload), data.length, offset);
          if (!stored.equals(data)) throw new AppError("BLOCK_CONFLICT");
          return { duplicate: true, allStored: upload.received === session.blockCount, published: false };
        }
        crashPoint("block.before-write");
        const fd = await this.dataFile(upload);
        await writeFully(fd, data, offset);
        if (this.fsyncEachBlock) await fd.datasync();
        crashPoint("block.after-bytes");
        const journal = await this.journalFile(upload);
        // Positional write at the known end: a failed, torn write is overwritten by the next append.
        await writeFully(journal, journalRecord(blockId), upload.journalLength);
        if (this.fsyncEachBlock) await journal.datasync();
        upload.journaled(blockId, data.length, this.now());
        await this.advanceHash(upload, blockId, data);
        return { duplicate: false, allStored: upload.received === session.blockCount, published: false };
      } catch (err) {
        return this.writeFailed(upload, blockId, data, err);
      }
    });
  }

  private async writeFailed(upload: Upload, blockId: number, data: Buffer, err: unknown): Promise<BlockWrite> {
    if (err instanceof AppError) throw err;
    if (errno(err) === "ENOENT") {
      // The staging directory went away under us: deleted, or published by a completion.
      this.forget(upload);
      return this.compareWithArchive(upload.session, blockId, data);
    }
    // The state on disk may be ahead of memory: forget the upload, the journal is the truth.
    this.forget(upload);
    throw wrapIo(err, `store block ${blockId} of ${upload.session.carveId}`);
  }

  /** A block for an upload without staging: a re-send after publication, compared with the archive. */
  private async compareWithArchive(session: Session, blockId: number, data: Buffer): Promise<BlockWrite> {
    const archive = await this.published(session.carveId);
    if (!archive) throw new AppError("UNKNOWN_SESSION");
    try {
      const fd = await fsp.open(archive.file, "r");
      try {
        const stored = await readFully(fd, data.length, blockOffset(session, blockId));
        if (!stored.equals(data)) throw new AppError("BLOCK_CONFLICT");
      } finally {
        await fd.close();
      }
    } catch (err) {
      if (errno(err) === "ENOENT") throw new AppError("UNKNOWN_SESSION");
      throw wrapIo(err, `compare block ${blockId} of ${session.carveId}`);
    }
    return { duplicate: true, allStored: true, published: true };
  }

  /** Feeds the running SHA-256 while blocks arrive in order; a filled gap catches up from disk, capped. */
  private async advanceHash(upload: Upload, blockId: number, data: Buffer): Promise<void> {
    if (blockId !== upload.hashedBlocks) return;
    upload.hash.update(data);
    upload.hashedBlocks++;
    let budget = INLINE_CATCH_UP_BYTES;
    const { session } = upload;
    while (upload.hashedBlocks < session.blockCount && upload.has(upload.hashedBlocks) && budget > 0) {
      const len = expectedBlockLength(session, upload.hashedBlocks);
      upload.hash.update(await readFully(await this.dataFile(upload), len, blockOffset(session, upload.hashedBlocks)));
      upload.hashedBlocks++;
      budget -= len;
    }
  }

  async progress(session: Session, missingLimit: number): Promise<UploadProgress | null> {
    this.assertOpen();
    if (!isSafeId(session.carveId)) return null;
    const hit = this.resident(session);
    if (hit) return { blocksReceived: hit.received, bytesReceived: hit.bytes, lastBlockAt: hit.lastBlockAt, missing: hit.missing(missingLimit) };
    // Not in memory: a journal unchanged since it was last read answers from the cache (a list page's case).
    if (missingLimit === 0) {
      const cached = await this.progressCache.lookup(session, this.paths.journalPath(session.carveId));
      if (cached) return cached;
    }
    const staging = await this.readStaging(session);
    if (!staging) return null;
    if (staging.journal) this.progressCache.remember(session, staging.journal);
    return progressOf(staging.journal, session, missingLimit);
  }

  // ---------------------------------------------------------------- completion

  async complete(session: Session, heartbeat?: () => Promise<void>): Promise<ArchiveFacts> {
    this.assertOpen();
    FilesystemBlobs.checkIds(session);
    const upload = await this.upload(session);
    if (!upload) {
      // Published before (a crash after the rename, before the catalog heard of it): the facts again.
      const archive = await this.published(session.carveId);
      if (!archive) throw new AppError("UNKNOWN_SESSION");
      return this.factsOf(archive.file, archive.compression, heartbeat);
    }
    return upload.mutex.run(async () => {
      if (upload.stale) return this.complete(session, heartbeat);
      try {
        return await this.publish(upload, heartbeat);
      } catch (err) {
        // Never leave a half-fed hash behind: the next attempt re-hashes from disk.
        upload.resetHash();
        throw wrapIo(err, `complete ${session.carveId}`);
      }
    });
  }

  private async publish(upload: Upload, heartbeat?: () => Promise<void>): Promise<ArchiveFacts> {
    const { session } = upload;
    const { carveId } = session;
    if (upload.received !== session.blockCount) {
      throw new AppError("STORAGE_UNAVAILABLE", `${session.blockCount - upload.received} blocks of ${carveId} are missing`);
    }
    const fd = await this.dataFile(upload);
    for (let batch = 0; upload.hashedBlocks < session.blockCount; upload.hashedBlocks++) {
      const len = expectedBlockLength(session, upload.hashedBlocks);
      upload.hash.update(await readFully(fd, len, blockOffset(session, upload.hashedBlocks)));
      batch += len;
      if (heartbeat && batch >= 64 * 1024 * 1024) {
        await heartbeat();
        batch = 0;
      }
    }
    const head = await readFully(fd, Math.min(4, session.carveSize), 0);
    const { size } = await fd.stat();
    if (size !== session.carveSize) throw new Error(`stored size ${size} differs from carve_size ${session.carveSize}`);
    await fd.datasync();
    const sha256 = upload.hash.digest("hex");
    const compression = detectCompression(head);
    crashPoint("complete.after-hash");
    this.forget(upload);
    await upload.closeFiles();
    await fsp.rename(this.paths.partPath(carveId), this.paths.finalPath(carveId, compression));
    await fsyncDir(this.paths.p("carves"));
    crashPoint("complete.after-publish");
    await fsp.rm(this.paths.sessionDir(carveId), { recursive: true, force: true });
    return { sha256, compression, size };
  }

  private async factsOf(file: string, compression: Compression, heartbeat?: () => Promise<void>): Promise<ArchiveFacts> {
    try {
      const { sha256, size } = await hashFile(file, heartbeat);
      return { sha256, compression, size };
    } catch (err) {
      if (errno(err) === "ENOENT") throw new AppError("UNKNOWN_SESSION");
      throw wrapIo(err, `hash ${file}`);
    }
  }

  // ---------------------------------------------------------------- imports, reads, deletion

  async importArchive(
    target: { carveId: string; sessionId: string },
    data: AsyncIterable<Buffer>,
    limits: ImportLimits,
    heartbeat?: () => Promise<void>,
  ): Promise<ArchiveFacts> {
    this.assertOpen();
    FilesystemBlobs.checkIds(target);
    const part = this.paths.p("tmp", `${randomBytes(12).toString("hex")}.import`);
    let fd: FileHandle | null = null;
    let published: string | null = null;
    try {
      fd = await fsp.open(part, "wx", 0o640);
      const { sha256, head, size } = await streamToFile(fd, data, limits, heartbeat);
      if (size === 0) throw new AppError("IMPORT_EMPTY");
      if (limits.expectedSha256 && limits.expectedSha256.toLowerCase() !== sha256) {
        throw new AppError("IMPORT_HASH_MISMATCH", `got ${sha256}`);
      }
      await fd.datasync();
      await fd.close();
      fd = null;
      const compression = detectCompression(head);
      crashPoint("import.before-publish");
      published = this.paths.finalPath(target.carveId, compression);
      await fsp.rename(part, published);
      await fsyncDir(this.paths.p("carves"));
      return { sha256, compression, size };
    } catch (err) {
      await fd?.close().catch(() => undefined);
      await fsp.rm(part, { force: true });
      if (err instanceof AppError) throw err;
      if (published) await fsp.rm(published, { force: true });
      throw wrapIo(err, "import archive");
    }
  }

  async read(ref: ArchiveRef, range?: ByteRange): Promise<BlobReader> {
    this.assertOpen();
    if (!isSafeId(ref.carveId)) throw new AppError("CARVE_NOT_FOUND");
    try {
      const fd = await fsp.open(this.paths.finalPath(ref.carveId, ref.compression), "r");
      const stream = fd.createReadStream({
        autoClose: true,
        ...(range ? { start: range.start, end: range.end } : {}),
        highWaterMark: 256 * 1024,
      });
      const readAt = async (buffer: Buffer, length: number, position: number): Promise<number> =>
        (await fd.read(buffer, 0, length, position)).bytesRead;
      return { stream, readAt };
    } catch (err) {
      if (errno(err) === "ENOENT") throw new AppError("CARVE_NOT_FOUND");
      throw wrapIo(err, `open archive of ${ref.carveId}`);
    }
  }

  async delete(target: { carveId: string; sessionId: string }): Promise<number> {
    this.assertOpen();
    if (!isSafeId(target.carveId)) return 0;
    const hit = this.active.get(target.carveId);
    const run = async (): Promise<number> => {
      if (hit) this.forget(hit);
      this.progressCache.drop(target.carveId);
      let freed = 0;
      try {
        for (const file of [this.paths.finalPath(target.carveId, "none"), this.paths.finalPath(target.carveId, "zstd"), this.paths.partPath(target.carveId)]) {
          freed += await fsp.stat(file).then((s) => s.size, () => 0);
          await fsp.rm(file, { force: true });
        }
        crashPoint("delete.after-bytes");
        await fsp.rm(this.paths.sessionDir(target.carveId), { recursive: true, force: true });
      } catch (err) {
        throw wrapIo(err, `delete ${target.carveId}`);
      }
      return freed;
    };
    // Through the upload's mutex: a block write in progress finishes (and is then removed) first.
    return hit ? hit.mutex.run(run) : run();
  }

  async freeBytes(): Promise<number | null> {
    this.assertOpen();
    return freeBytesOf(this.root);
  }

  async health(): Promise<StoreHealth> {
    if (this.closed) return { ok: false, backend: this.kind, detail: { dataDir: this.root, error: "store is closed" } };
    return probeHealth(this.kind, this.root, { activeUploads: this.active.size, cachedProgress: this.progressCache.size });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.active.values()].map((u) => u.mutex.run(() => u.closeFiles())));
    this.active.clear();
    this.progressCache.clear();
    await this.lock.release();
    this.logger.debug({ dataDir: this.root }, "filesystem blobs closed");
  }
}
