import { createHash, type Hash } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { Binary, type Collection, type Db } from "mongodb";
import { AppError } from "../../errors.js";
import type { Logger } from "../../logger.js";
import { archiveExtension, detectCompression, expectedBlockLength, isSafeId } from "../../carves/geometry.js";
import { crashPoint } from "../../util/crash-point.js";
import { ByteBudget } from "../../util/byte-budget.js";
import { LruMap } from "../../util/lru.js";
import type { ArchiveFacts, ArchiveRef, BlobReader, BlobStore, BlockWrite, ImportLimits, UploadProgress } from "../contracts.js";
import type { ByteRange, Session, StoreHealth } from "../model.js";
import {
  checkedChunk,
  chunkId,
  chunksPerBlock,
  fetchChunks,
  isDuplicateKey,
  openChunkStream,
  wrap,
  bytesOf,
  type ChunkDoc,
  type FileDoc,
} from "./gridfs-chunks.js";

/*
 * Carve bytes in MongoDB GridFS, shared by any number of service processes (database `database`, prefix `bucket`):
 *   <bucket>.sessions  upload progress, one document per carve being received (_id = carve id): geometry, counters
 *                      and one marker field per stored block (b.r<block_id>). Marker and counters change in ONE
 *                      conditional update, so a block is counted exactly once whichever process stores it. This is
 *                      the upload's journal; the catalog is not touched per block.
 *   <bucket>.chunks    GridFS chunks, written as blocks arrive: block i is chunk(s) n = i*k.., _id "<session_id>/<n>"
 *                      with the unique {files_id, n} index: a re-sent block hits the duplicate key and is compared.
 *   <bucket>.files     the GridFS file document, inserted at publication (_id = session id, filename
 *                      <carve_id>.tar[.zst], metadata with sha256): from then on an ordinary GridFS file.
 * Nothing is held in memory between requests except running hashes (an optimisation, never the truth).
 */

/** Marker fields live in the progress document; this keeps it far below 16 MB (~13 bytes a block). */
export const MAX_GRIDFS_BLOCKS = 500_000;
/** Bytes of chunks fetched per query while hashing a completed upload. */
const HASH_BATCH_BYTES = 4 * 1024 * 1024;
/** Completions hashing at once in this process: memory stays bounded when many carves end together. */
const CONCURRENT_COMPLETIONS = 2;
/** Chunk size of imported archives (they have no osquery block geometry). */
const IMPORT_CHUNK = 1024 * 1024;

interface UploadDoc {
  _id: string;
  v: 2;
  sessionId: string;
  blockCount: number;
  blockSize: number;
  carveSize: number;
  chunkSize: number;
  chunksPerBlock: number;
  createdAt: Date;
  updatedAt: Date;
  blocksReceived: number;
  bytesReceived: number;
  b?: Record<string, number>;
}

/** SHA-256 of an upload's blocks 0..next-1, fed as this process stores them in order. */
interface RunningHash {
  hash: Hash;
  next: number;
  head: Buffer | null;
}

const NO_MARKERS = { projection: { b: 0 } } as const;

export interface GridFsBlobsOptions {
  db: Db;
  bucket: string;
  logger: Logger;
  /** The clock of "last block stored" (tests move it). */
  now?: () => Date;
}

export class GridFsBlobs implements BlobStore {
  readonly kind = "gridfs";
  private readonly uploads: Collection<UploadDoc>;
  private readonly chunks: Collection<ChunkDoc>;
  private readonly files: Collection<FileDoc>;
  private readonly logger: Logger;
  /**
   * One agent sends its blocks in order; with one replica every block comes here, so a completion made here can
   * use the hash fed on the way instead of reading the whole carve back. Blocks spread over replicas, out of order
   * or forgotten under pressure: the chunks are read back.
   */
  private readonly runningHashes = new LruMap<string, RunningHash>(1_000);
  private readonly completionSlots = new ByteBudget(CONCURRENT_COMPLETIONS);
  private closed = false;

  private constructor(private readonly options: GridFsBlobsOptions) {
    const b = options.bucket;
    this.uploads = options.db.collection<UploadDoc>(`${b}.sessions`);
    this.chunks = options.db.collection<ChunkDoc>(`${b}.chunks`);
    this.files = options.db.collection<FileDoc>(`${b}.files`);
    this.logger = options.logger;
  }

  /** Creates every index the store relies on (the driver's lazy index creation swallows errors). */
  static async create(options: GridFsBlobsOptions): Promise<GridFsBlobs> {
    const store = new GridFsBlobs(options);
    await store.uploads.createIndexes([{ key: { sessionId: 1 }, name: "sessionId_unique", unique: true }]);
    // The GridFS specification's own indexes, so any GridFS tool finds what it expects.
    await store.chunks.createIndexes([{ key: { files_id: 1, n: 1 }, name: "files_id_1_n_1", unique: true }]);
    await store.files.createIndexes([{ key: { filename: 1, uploadDate: 1 }, name: "filename_1_uploadDate_1" }]);
    return store;
  }

  private assertOpen(): void {
    if (this.closed) throw new AppError("STORAGE_UNAVAILABLE", "store is closed");
  }

  async begin(session: Session): Promise<void> {
    this.assertOpen();
    if (!isSafeId(session.carveId) || !isSafeId(session.sessionId)) throw new AppError("INVALID_START", "unsafe identifier");
    const k = chunksPerBlock(session.blockSize);
    if (k === null) throw new AppError("INVALID_START", `block_size ${session.blockSize} cannot be split into GridFS chunks`);
    if (session.blockCount > MAX_GRIDFS_BLOCKS) {
      throw new AppError("INVALID_START", `block_count ${session.blockCount} > ${MAX_GRIDFS_BLOCKS} (use a larger --carver_block_size)`);
    }
    const doc: UploadDoc = {
      _id: session.carveId,
      v: 2,
      sessionId: session.sessionId,
      blockCount: session.blockCount,
      blockSize: session.blockSize,
      carveSize: session.carveSize,
      chunkSize: session.blockSize / k,
      chunksPerBlock: k,
      createdAt: session.createdAt,
      updatedAt: session.createdAt,
      blocksReceived: 0,
      bytesReceived: 0,
      b: {},
    };
    try {
      await this.uploads.insertOne(doc);
    } catch (err) {
      if (!isDuplicateKey(err)) throw wrap(err, `begin upload of ${session.carveId}`);
      const existing = await this.uploads.findOne({ _id: session.carveId }, NO_MARKERS);
      if (existing && existing.sessionId !== session.sessionId) throw new AppError("CARVE_ID_CONFLICT", "a stale upload holds this carve id");
    }
  }

  async putBlock(session: Session, blockId: number, data: Buffer): Promise<BlockWrite> {
    this.assertOpen();
    if (!Number.isInteger(blockId) || blockId < 0 || blockId >= session.blockCount) throw new AppError("BLOCK_OUT_OF_RANGE");
    if (data.length !== expectedBlockLength(session, blockId)) throw new AppError("BLOCK_LENGTH_MISMATCH");
    const k = chunksPerBlock(session.blockSize);
    if (k === null) throw new AppError("INVALID_BLOCK", "block size not storable");
    const chunkSize = session.blockSize / k;
    const inserted: string[] = [];
    try {
      crashPoint("block.before-write");
      // 1. The bytes: chunk documents, idempotent by key; a re-send must be byte-identical.
      for (let i = 0; i * chunkSize < data.length; i++) {
        const piece = data.subarray(i * chunkSize, Math.min((i + 1) * chunkSize, data.length));
        const n = blockId * k + i;
        const _id = chunkId(session.sessionId, n);
        try {
          await this.chunks.insertOne({ _id, files_id: session.sessionId, n, data: new Binary(piece) });
          inserted.push(_id);
        } catch (err) {
          if (!isDuplicateKey(err)) throw err;
          const stored = await this.chunks.findOne({ _id });
          if (!stored || !bytesOf(stored.data).equals(piece)) throw new AppError("BLOCK_CONFLICT");
        }
      }
      crashPoint("block.after-bytes");
      this.advanceRunningHash(session, blockId, data);
      // 2. The marker and the counters, in one conditional update: counted once, by whoever gets there.
      const marker = `b.r${blockId}`;
      const marked = await this.uploads.findOneAndUpdate(
        { _id: session.carveId, sessionId: session.sessionId, [marker]: { $exists: false } },
        { $set: { [marker]: 1, updatedAt: (this.options.now ?? (() => new Date()))() }, $inc: { blocksReceived: 1, bytesReceived: data.length } },
        { returnDocument: "after", projection: { b: 0 } },
      );
      if (marked) {
        crashPoint("block.after-journal");
        return { duplicate: false, allStored: marked.blocksReceived >= marked.blockCount, published: false };
      }
      const current = await this.uploads.findOne({ _id: session.carveId, sessionId: session.sessionId }, NO_MARKERS);
      if (current) return { duplicate: true, allStored: current.blocksReceived >= current.blockCount, published: false };
      if (await this.files.findOne({ _id: session.sessionId }, { projection: { _id: 1 } })) {
        return { duplicate: true, allStored: true, published: true };
      }
      // Deleted meanwhile: take back what this call wrote, nothing else owns it.
      if (inserted.length > 0) await this.chunks.deleteMany({ _id: { $in: inserted } });
      throw new AppError("UNKNOWN_SESSION");
    } catch (err) {
      throw wrap(err, `store block ${blockId} of ${session.carveId}`);
    }
  }

  private advanceRunningHash(session: Session, blockId: number, data: Buffer): void {
    let running = this.runningHashes.get(session.sessionId);
    if (!running) {
      if (blockId !== 0) return;
      running = { hash: createHash("sha256"), next: 0, head: null };
      this.runningHashes.set(session.sessionId, running);
    }
    if (blockId !== running.next) return; // a re-send (already in) or a gap (not here, or not yet)
    if (blockId === 0) running.head = Buffer.from(data.subarray(0, 4));
    running.hash.update(data);
    running.next++;
  }

  async progress(session: Session, missingLimit: number): Promise<UploadProgress | null> {
    this.assertOpen();
    let doc: UploadDoc | null;
    try {
      doc = await this.uploads.findOne({ _id: session.carveId, sessionId: session.sessionId }, missingLimit > 0 ? {} : NO_MARKERS);
    } catch (err) {
      throw wrap(err, `read progress of ${session.carveId}`);
    }
    if (!doc) return null;
    const marks = doc.b ?? {};
    const missing: number[] = [];
    for (let i = 0; i < doc.blockCount && missing.length < missingLimit; i++) if (marks[`r${i}`] === undefined) missing.push(i);
    return { blocksReceived: doc.blocksReceived, bytesReceived: doc.bytesReceived, lastBlockAt: doc.updatedAt, missing };
  }

  async complete(session: Session, heartbeat?: () => Promise<void>): Promise<ArchiveFacts> {
    this.assertOpen();
    const release = await this.completionSlots.acquire(1);
    try {
      const published = await this.files.findOne({ _id: session.sessionId });
      if (published) {
        // Published before (a crash after the files document, before the catalog heard of it).
        await this.uploads.deleteOne({ _id: session.carveId, sessionId: session.sessionId });
        return GridFsBlobs.factsOf(published);
      }
      const doc = await this.uploads.findOne({ _id: session.carveId, sessionId: session.sessionId }, NO_MARKERS);
      if (!doc) throw new AppError("UNKNOWN_SESSION");
      if (doc.blocksReceived < doc.blockCount) {
        throw new AppError("STORAGE_UNAVAILABLE", `${doc.blockCount - doc.blocksReceived} blocks of ${session.carveId} are missing`);
      }
      const { sha256, head } = await this.hashUpload(session, doc.chunkSize, heartbeat);
      crashPoint("complete.after-hash");
      const compression = detectCompression(head);
      await this.insertFileDoc(session, doc.chunkSize, { sha256, compression, size: session.carveSize }, "agent");
      crashPoint("complete.after-publish");
      await this.uploads.deleteOne({ _id: session.carveId, sessionId: session.sessionId });
      this.runningHashes.delete(session.sessionId);
      return { sha256, compression, size: session.carveSize };
    } catch (err) {
      throw wrap(err, `complete ${session.carveId}`);
    } finally {
      release();
    }
  }

  /** The running hash when it covers every block, else the stored chunks read back in order. */
  private async hashUpload(session: Session, chunkSize: number, heartbeat?: () => Promise<void>): Promise<{ sha256: string; head: Buffer }> {
    const running = this.runningHashes.get(session.sessionId);
    if (running && running.next === session.blockCount && running.head) {
      // copy(): a failed completion is retried, and must find the running hash still open.
      return { sha256: running.hash.copy().digest("hex"), head: running.head };
    }
    const hash = createHash("sha256");
    let head = Buffer.alloc(0);
    const totalChunks = Math.ceil(session.carveSize / chunkSize);
    const perBatch = Math.max(1, Math.floor(HASH_BATCH_BYTES / chunkSize));
    for (let first = 0; first < totalChunks; first += perBatch) {
      const last = Math.min(first + perBatch, totalChunks) - 1;
      const batch = await fetchChunks(this.chunks, session.sessionId, first, last);
      for (let n = first; n <= last; n++) {
        const bytes = checkedChunk(batch, n, session.sessionId, chunkSize, session.carveSize);
        if (n === 0) head = Buffer.from(bytes.subarray(0, 4));
        hash.update(bytes);
      }
      await heartbeat?.();
    }
    return { sha256: hash.digest("hex"), head };
  }

  private static factsOf(file: FileDoc): ArchiveFacts {
    const m = file.metadata;
    if (typeof m.sha256 !== "string" || (m.compression !== "zstd" && m.compression !== "none")) {
      throw new AppError("STORAGE_UNAVAILABLE", `the GridFS file ${file._id} has no sha256/compression metadata`);
    }
    return { sha256: m.sha256, compression: m.compression, size: file.length };
  }

  /** The GridFS files document that makes the stored chunks an ordinary GridFS file. Idempotent. */
  private async insertFileDoc(session: Session, chunkSize: number, facts: ArchiveFacts, origin: "agent" | "import"): Promise<void> {
    const file: FileDoc = {
      _id: session.sessionId,
      length: facts.size,
      chunkSize,
      uploadDate: new Date(),
      filename: `${session.carveId}${archiveExtension(facts.compression)}`,
      metadata: {
        origin,
        carve_id: session.carveId,
        request_id: session.requestId,
        session_id: session.sessionId,
        // GridFS tools show metadata: the node key only as the digest the catalog keeps.
        node_key_sha256: session.nodeKeySha256,
        agent_address: session.agent.address,
        agent_user_agent: session.agent.userAgent,
        certificate_subject: session.agent.certificate?.subjectDn ?? null,
        certificate_sha256: session.agent.certificate?.fingerprintSha256 ?? null,
        sha256: facts.sha256,
        compression: facts.compression,
        block_size: session.blockSize,
        block_count: session.blockCount,
        created_at: session.createdAt,
      },
    };
    try {
      await this.files.insertOne(file);
    } catch (err) {
      if (!isDuplicateKey(err)) throw err; // inserted by an earlier attempt that died before finishing
    }
  }

  async importArchive(
    target: { carveId: string; sessionId: string },
    data: AsyncIterable<Buffer>,
    limits: ImportLimits,
    heartbeat?: () => Promise<void>,
  ): Promise<ArchiveFacts> {
    this.assertOpen();
    if (!isSafeId(target.carveId) || !isSafeId(target.sessionId)) throw new AppError("INVALID_START", "unsafe identifier");
    const { sessionId } = target;
    try {
      const hash = createHash("sha256");
      let head = Buffer.alloc(0);
      let size = 0;
      let n = 0;
      let pending: Buffer[] = [];
      let pendingBytes = 0;
      const flush = async (final: boolean): Promise<void> => {
        while (pendingBytes >= IMPORT_CHUNK || (final && pendingBytes > 0)) {
          const all = Buffer.concat(pending, pendingBytes);
          const piece = all.subarray(0, Math.min(IMPORT_CHUNK, all.length));
          const rest = all.subarray(piece.length);
          await this.chunks.insertOne({ _id: chunkId(sessionId, n), files_id: sessionId, n, data: new Binary(piece) });
          crashPoint("import.mid-stream");
          n++;
          pending = rest.length > 0 ? [rest] : [];
          pendingBytes = rest.length;
        }
      };
      try {
        for await (const chunk of data) {
          size += chunk.length;
          if (size > limits.maxBytes) throw new AppError("IMPORT_TOO_LARGE");
          hash.update(chunk);
          if (head.length < 4) head = Buffer.concat([head, chunk.subarray(0, 4 - head.length)]);
          pending.push(chunk);
          pendingBytes += chunk.length;
          if (pendingBytes >= IMPORT_CHUNK) {
            await flush(false);
            await heartbeat?.();
          }
        }
      } catch (err) {
        if (err instanceof AppError) throw err;
        if ((err as { name?: string }).name?.startsWith("Mongo")) throw err;
        throw new AppError("IMPORT_ABORTED", undefined, { cause: err });
      }
      if (size === 0) throw new AppError("IMPORT_EMPTY");
      const sha256 = hash.digest("hex");
      if (limits.expectedSha256 && limits.expectedSha256.toLowerCase() !== sha256) throw new AppError("IMPORT_HASH_MISMATCH", `got ${sha256}`);
      await flush(true);
      const facts: ArchiveFacts = { sha256, compression: detectCompression(head), size };
      crashPoint("import.before-publish");
      const session: Session = {
        carveId: target.carveId,
        sessionId,
        requestId: "import",
        nodeKeySha256: null,
        blockCount: n,
        blockSize: IMPORT_CHUNK,
        carveSize: size,
        agent: { address: null, userAgent: null, certificate: null },
        createdAt: new Date(),
      };
      await this.insertFileDoc(session, IMPORT_CHUNK, facts, "import");
      return facts;
    } catch (err) {
      await this.chunks.deleteMany({ files_id: sessionId }).catch(() => undefined);
      await this.files.deleteOne({ _id: sessionId }).catch(() => undefined);
      throw wrap(err, "import archive");
    }
  }

  async read(ref: ArchiveRef, range?: ByteRange): Promise<BlobReader> {
    this.assertOpen();
    let file: FileDoc | null;
    try {
      file = await this.files.findOne({ _id: ref.sessionId });
    } catch (err) {
      throw wrap(err, `read the files document of ${ref.carveId}`);
    }
    if (!file) throw new AppError("CARVE_NOT_FOUND");
    return { stream: await openChunkStream(this.chunks, file, range) };
  }

  async delete(target: { carveId: string; sessionId: string }): Promise<number> {
    this.assertOpen();
    try {
      const file = await this.files.findOne({ _id: target.sessionId }, { projection: { length: 1 } });
      const upload = file ? null : await this.uploads.findOne({ _id: target.carveId, sessionId: target.sessionId }, NO_MARKERS);
      await this.files.deleteOne({ _id: target.sessionId });
      await this.chunks.deleteMany({ files_id: target.sessionId });
      crashPoint("delete.after-bytes");
      await this.uploads.deleteOne({ _id: target.carveId, sessionId: target.sessionId });
      // A completion racing the delete may have inserted the files document meanwhile.
      await this.files.deleteOne({ _id: target.sessionId });
      this.runningHashes.delete(target.sessionId);
      return file?.length ?? upload?.bytesReceived ?? 0;
    } catch (err) {
      throw wrap(err, `delete ${target.carveId}`);
    }
  }

  /** MongoDB manages its own storage; its free space is not visible to a client. */
  freeBytes(): Promise<number | null> {
    this.assertOpen();
    return Promise.resolve(null);
  }

  async health(): Promise<StoreHealth> {
    const detail: Record<string, string | number | boolean | null> = { bucket: this.options.bucket };
    try {
      this.assertOpen();
      const started = Date.now();
      const abort = new AbortController();
      try {
        await Promise.race([
          this.options.db.command({ ping: 1 }),
          sleep(3_000, undefined, { signal: abort.signal }).then(
            () => {
              throw new Error("ping timed out");
            },
            () => undefined, // aborted: the ping answered first
          ),
        ]);
      } finally {
        abort.abort();
      }
      detail.pingMs = Date.now() - started;
      return { ok: true, backend: this.kind, detail };
    } catch (err) {
      detail.error = err instanceof Error ? err.name : "unknown";
      return { ok: false, backend: this.kind, detail };
    }
  }

  /** The connection belongs to the deployment (shared with the catalog); only this store's use ends. */
  close(): Promise<void> {
    this.closed = true;
    this.logger.debug({ bucket: this.options.bucket }, "gridfs blobs closed");
    return Promise.resolve();
  }
}


