import { createHash, randomUUID, type Hash } from "node:crypto";
import { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { Binary, MongoClient, type Collection, type Db, type Filter } from "mongodb";
import { AppError } from "../../errors.js";
import type { Logger } from "../../logger.js";
import {
  archiveExtension,
  detectCompression,
  expectedBlockLength,
  isSafeId,
} from "../../carves/geometry.js";
import { crashPoint } from "../../util/crash-point.js";
import { LruMap } from "../../util/lru.js";
import { ByteBudget } from "../../util/byte-budget.js";
import type {
  AgentInfo,
  ArchiveHandle,
  AuditEvent,
  AuditPage,
  AuditQuery,
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
import { decodeCursor, encodeAuditCursor, encodeCursor } from "../listing.js";
import { checkMongoServer } from "../mongo-server-check.js";

/*
 * MongoDB GridFS backend, shared by any number of service processes.
 *
 * Collections (database `database`, prefix `bucket`):
 *   <bucket>.sessions  one document per carve (_id = carve_id): geometry, agent, status, counters and one
 *                      marker field per stored block (b.r<block_id>). Marker and counters change in ONE
 *                      conditional update, so a block is counted exactly once whichever process stores it.
 *   <bucket>.chunks    GridFS chunks, written as blocks arrive: block i of a carve is chunk(s) n = i*k..,
 *                      with _id "<session_id>/<n>" and the unique {files_id, n} index: a re-sent block is
 *                      recognised by the duplicate key, then compared byte for byte.
 *   <bucket>.files     the GridFS file document, inserted once when the carve is complete (_id = session
 *                      id, filename <carve_id>.tar[.zst], metadata carve_id/request_id/sha256/...): from
 *                      then on the carve is an ordinary GridFS file (`mongofiles get_id`, any driver).
 *   <bucket>.audit     responder audit events.
 *
 * Nothing is held in memory between requests except immutable session facts: no upload stream, no
 * reassembly buffer. Completion is claimed with a conditional update (receiving -> completing) by exactly
 * one process, which refreshes its claim (heartbeat) after every batch it hashes; a claim not refreshed for
 * `staleCompletionMs` belongs to a dead process and is taken over, soon enough for the agent's own retries.
 *
 * Every chunk is at most MAX_CHUNK bytes (well under MongoDB's 16 MB document limit): a larger block is
 * split into k equal chunks, k dividing the block size, so block boundaries stay chunk boundaries.
 */

const MAX_CHUNK = 8 * 1024 * 1024;
/** Marker fields live in the session document; this keeps it far below 16 MB (~13 bytes a block). */
export const MAX_GRIDFS_BLOCKS = 500_000;
/** Bytes of chunks fetched per query while hashing a completed carve. */
const HASH_BATCH_BYTES = 4 * 1024 * 1024;
/** Bytes of chunks fetched per query while streaming a download (two such batches in memory at most). */
const READ_BATCH_BYTES = 1024 * 1024;
/** Completions hashing at once in this process: memory stays bounded when many carves end together. */
const CONCURRENT_FINALIZE = 2;

/** "importing": an import is streaming in (invisible; retention removes it if its process died). */
type SessionStatus = "receiving" | "completing" | "complete" | "deleting" | "importing";

/** Chunk size of imported archives (they have no osquery block geometry). */
const IMPORT_CHUNK = 1024 * 1024;

interface SessionDoc {
  _id: string;
  sessionId: string;
  requestId: string;
  nodeKey: string;
  blockCount: number;
  blockSize: number;
  carveSize: number;
  chunkSize: number;
  chunksPerBlock: number;
  agent: AgentInfo;
  createdAt: Date;
  updatedAt: Date;
  status: SessionStatus;
  completingSince?: Date | null;
  /** Random token of the process (call) holding the completion claim. */
  completer?: string | null;
  deletingSince?: Date | null;
  blocksReceived: number;
  bytesReceived: number;
  b?: Record<string, number>;
  sha256: string | null;
  compression: Compression | null;
  completedAt: Date | null;
  hold: LegalHold | null;
  origin?: "agent" | "import";
  imported?: ImportSource | null;
  verifications?: Verification[];
}

interface ChunkDoc {
  _id: string;
  files_id: string;
  n: number;
  data: Binary;
}

/** See GridFsCarveStore.runningHashes. */
interface RunningHash {
  hash: Hash;
  /** The next block to feed. */
  next: number;
  /** The first 4 bytes of block 0 (compression detection). */
  head: Buffer | null;
}

/** Bytes [start, end] of a file, in chunks firstN..lastN read perBatch at a time. */
interface ReadPlan {
  start: number;
  end: number;
  firstN: number;
  lastN: number;
  perBatch: number;
}

interface FileDoc {
  _id: string;
  length: number;
  chunkSize: number;
  uploadDate: Date;
  filename: string;
  metadata: Record<string, unknown>;
}

type AuditDoc = Omit<AuditEvent, "id"> & { _id: string };

const NO_MARKERS = { projection: { b: 0 } } as const;

export interface GridFsCarveStoreOptions {
  uri: string;
  database: string;
  bucket: string;
  logger: Logger;
  now?: () => Date;
  /** How long a request waits for another process's completion before answering "try again". */
  completionWaitMs?: number;
  /** A completion claim older than this is presumed dead (its process crashed) and taken over. */
  staleCompletionMs?: number;
  serverSelectionTimeoutMs?: number;
}

function isDuplicateKey(err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === 11000;
}

function bytesOf(bin: Binary): Buffer {
  const u8 = bin.buffer.subarray(0, bin.position);
  return Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}

function wrap(err: unknown, what: string): AppError {
  if (err instanceof AppError) return err;
  return new AppError("STORAGE_UNAVAILABLE", undefined, { cause: Object.assign(new Error(what), { cause: err }) });
}

/** Chunks per block: the smallest k dividing blockSize with blockSize / k <= MAX_CHUNK, or null. */
export function chunksPerBlock(blockSize: number): number | null {
  for (let k = Math.ceil(blockSize / MAX_CHUNK); k <= 4096; k++) {
    if (blockSize % k === 0) return k;
  }
  return null;
}

export class GridFsCarveStore implements CarveStore {
  readonly backend = "gridfs";
  private readonly sessions: Collection<SessionDoc>;
  private readonly chunks: Collection<ChunkDoc>;
  private readonly files: Collection<FileDoc>;
  private readonly audit: Collection<AuditDoc>;
  private readonly now: () => Date;
  private readonly completionWaitMs: number;
  private readonly staleCompletionMs: number;
  private readonly logger: Logger;
  /** Immutable session facts only; status always comes from the database. */
  private readonly sessionCache = new LruMap<string, Session>(10_000);
  /**
   * SHA-256 of each carve's blocks 0..next-1, fed as this process stores them in order (one agent sends its
   * blocks in order; with one replica, every block comes here). A completion this process makes uses it when
   * it covers every block, instead of reading the whole carve back from MongoDB; otherwise (blocks spread
   * over replicas, out of order, or forgotten under pressure) it reads the chunks back as before.
   */
  private readonly runningHashes = new LruMap<string, RunningHash>(1_000);
  private readonly finalizeSlots = new ByteBudget(CONCURRENT_FINALIZE);
  private closed = false;

  private constructor(
    private readonly client: MongoClient,
    private readonly db: Db,
    private readonly options: GridFsCarveStoreOptions,
  ) {
    const b = options.bucket;
    this.sessions = db.collection<SessionDoc>(`${b}.sessions`);
    this.chunks = db.collection<ChunkDoc>(`${b}.chunks`);
    this.files = db.collection<FileDoc>(`${b}.files`);
    this.audit = db.collection<AuditDoc>(`${b}.audit`);
    this.now = options.now ?? (() => new Date());
    // Both below osquery's 16 s request deadline, so a retried block takes over a dead claim in time.
    this.completionWaitMs = options.completionWaitMs ?? 12_000;
    this.staleCompletionMs = options.staleCompletionMs ?? 10_000;
    this.logger = options.logger;
  }

  /**
   * Connects and creates every index the store relies on (the driver's lazy index creation swallows
   * errors, so it is not relied upon).
   * @throws Error when MongoDB cannot be reached or an index cannot be created.
   */
  static async create(options: GridFsCarveStoreOptions): Promise<GridFsCarveStore> {
    const client = new MongoClient(options.uri, {
      serverSelectionTimeoutMS: options.serverSelectionTimeoutMs ?? 5_000,
      // Block requests must fail within osquery's 16 s deadline, so the agent retries instead of hanging.
      connectTimeoutMS: 5_000,
      appName: "osquery-carve-server",
    });
    try {
      await client.connect();
      await checkMongoServer(client.db("admin"), options.logger);
      const store = new GridFsCarveStore(client, client.db(options.database), options);
      await store.ensureIndexes();
      return store;
    } catch (err) {
      await client.close().catch(() => undefined);
      throw err;
    }
  }

  private async ensureIndexes(): Promise<void> {
    await this.sessions.createIndexes([
      { key: { sessionId: 1 }, name: "sessionId_unique", unique: true },
      { key: { status: 1, updatedAt: 1 }, name: "status_updatedAt" },
      { key: { createdAt: -1, _id: 1 }, name: "createdAt_desc" },
    ]);
    // The GridFS specification's own indexes, so any GridFS tool finds what it expects.
    await this.chunks.createIndexes([{ key: { files_id: 1, n: 1 }, name: "files_id_1_n_1", unique: true }]);
    await this.files.createIndexes([{ key: { filename: 1, uploadDate: 1 }, name: "filename_1_uploadDate_1" }]);
    await this.audit.createIndexes([
      { key: { at: -1, _id: -1 }, name: "at_desc" },
      { key: { carveId: 1, at: -1 }, name: "carveId_at" },
    ]);
  }

  private assertOpen(): void {
    if (this.closed) throw new AppError("STORAGE_UNAVAILABLE", "store is closed");
  }

  private static sessionOf(doc: SessionDoc): Session {
    return {
      sessionId: doc.sessionId,
      carveId: doc._id,
      requestId: doc.requestId,
      nodeKey: doc.nodeKey,
      blockCount: doc.blockCount,
      blockSize: doc.blockSize,
      carveSize: doc.carveSize,
      agent: copyAgent(doc.agent),
      createdAt: doc.createdAt,
    };
  }

  private static recordOf(doc: SessionDoc): CarveRecord {
    const complete = doc.status === "complete";
    return {
      ...GridFsCarveStore.sessionOf(doc),
      status: complete ? "complete" : "receiving",
      updatedAt: doc.updatedAt,
      completedAt: doc.completedAt ?? null,
      blocksReceived: doc.blocksReceived,
      bytesReceived: doc.bytesReceived,
      sha256: doc.sha256 ?? null,
      compression: doc.compression ?? null,
      hold: doc.hold ? { by: doc.hold.by, reason: doc.hold.reason, at: doc.hold.at } : null,
      origin: doc.origin ?? "agent",
      imported: doc.imported ?? null,
      verifications: (doc.verifications ?? []).map((v) => ({ ...v })),
    };
  }

  private static chunkId(sessionId: string, n: number): string {
    return `${sessionId}/${n}`;
  }

  // ---------------------------------------------------------------- sessions

  async createSession(spec: SessionSpec, sessionId: string): Promise<CreateSessionResult> {
    this.assertOpen();
    if (!isSafeId(spec.carveId) || !isSafeId(sessionId)) throw new AppError("INVALID_START", "unsafe identifier");
    const k = chunksPerBlock(spec.blockSize);
    if (k === null) {
      throw new AppError("INVALID_START", `block_size ${spec.blockSize} cannot be split into GridFS chunks`);
    }
    if (spec.blockCount > MAX_GRIDFS_BLOCKS) {
      throw new AppError(
        "INVALID_START",
        `block_count ${spec.blockCount} > ${MAX_GRIDFS_BLOCKS} (use a larger --carver_block_size)`,
      );
    }
    const now = this.now();
    const doc: SessionDoc = {
      _id: spec.carveId,
      sessionId,
      requestId: spec.requestId,
      nodeKey: spec.nodeKey,
      blockCount: spec.blockCount,
      blockSize: spec.blockSize,
      carveSize: spec.carveSize,
      chunkSize: spec.blockSize / k,
      chunksPerBlock: k,
      agent: copyAgent(spec.agent),
      createdAt: now,
      updatedAt: now,
      status: "receiving",
      completingSince: null,
      deletingSince: null,
      blocksReceived: 0,
      bytesReceived: 0,
      b: {},
      sha256: null,
      compression: null,
      completedAt: null,
      hold: null,
    };
    try {
      await this.sessions.insertOne(doc);
      const session = GridFsCarveStore.sessionOf(doc);
      this.sessionCache.set(sessionId, session);
      return { session, created: true };
    } catch (err) {
      if (!isDuplicateKey(err)) throw wrap(err, `create session for ${spec.carveId}`);
    }
    const existing = await this.sessions.findOne({ _id: spec.carveId }, NO_MARKERS).catch((e: unknown) => {
      throw wrap(e, "read session");
    });
    if (!existing) throw new AppError("STORAGE_UNAVAILABLE", "session vanished while starting");
    if (existing.status === "deleting") throw new AppError("CARVE_ID_CONFLICT", "the carve is being deleted");
    return { session: GridFsCarveStore.sessionOf(existing), created: false };
  }

  async findSession(sessionId: string): Promise<Session> {
    this.assertOpen();
    const cached = this.sessionCache.get(sessionId);
    if (cached) return cached;
    if (!isSafeId(sessionId)) throw new AppError("UNKNOWN_SESSION");
    let doc: SessionDoc | null;
    try {
      doc = await this.sessions.findOne({ sessionId }, NO_MARKERS);
    } catch (err) {
      throw wrap(err, "find session");
    }
    if (!doc || doc.status === "deleting") throw new AppError("UNKNOWN_SESSION");
    const session = GridFsCarveStore.sessionOf(doc);
    this.sessionCache.set(sessionId, session);
    return session;
  }

  // ---------------------------------------------------------------- blocks

  async putBlock(session: Session, blockId: number, data: Buffer): Promise<PutBlockResult> {
    this.assertOpen();
    if (!Number.isInteger(blockId) || blockId < 0 || blockId >= session.blockCount) {
      throw new AppError("BLOCK_OUT_OF_RANGE");
    }
    if (data.length !== expectedBlockLength(session, blockId)) throw new AppError("BLOCK_LENGTH_MISMATCH");
    const k = chunksPerBlock(session.blockSize);
    if (k === null) throw new AppError("INVALID_BLOCK", "block size not storable");
    const chunkSize = session.blockSize / k;
    try {
      crashPoint("block.before-write");
      // 1. The bytes: chunk documents, idempotent by key; a re-send must be byte-identical.
      for (let i = 0; i * chunkSize < data.length; i++) {
        const piece = data.subarray(i * chunkSize, Math.min((i + 1) * chunkSize, data.length));
        const n = blockId * k + i;
        const _id = GridFsCarveStore.chunkId(session.sessionId, n);
        try {
          await this.chunks.insertOne({ _id, files_id: session.sessionId, n, data: new Binary(piece) });
        } catch (err) {
          if (!isDuplicateKey(err)) throw err;
          const stored = await this.chunks.findOne({ _id });
          if (!stored || !bytesOf(stored.data).equals(piece)) throw new AppError("BLOCK_CONFLICT");
        }
      }
      crashPoint("block.after-bytes");
      // The stored bytes equal `data` now (written, or compared with what was there): feed the running hash.
      this.advanceRunningHash(session, blockId, data);
      // 2. The marker and the counters, in one conditional update: counted once, by whoever gets there.
      const marker = `b.r${blockId}`;
      const marked = await this.sessions.findOneAndUpdate(
        {
          _id: session.carveId,
          sessionId: session.sessionId,
          status: "receiving",
          [marker]: { $exists: false },
        },
        {
          $set: { [marker]: 1, updatedAt: this.now() },
          $inc: { blocksReceived: 1, bytesReceived: data.length },
        },
        { returnDocument: "after", projection: { b: 0 } },
      );
      if (marked) {
        crashPoint("block.after-journal");
        if (marked.blocksReceived < marked.blockCount) return { duplicate: false, complete: false, completedNow: false };
        const completedNow = await this.ensureComplete(session);
        return { duplicate: false, complete: true, completedNow };
      }
      const current = await this.sessions.findOne({ _id: session.carveId, sessionId: session.sessionId }, NO_MARKERS);
      if (!current || current.status === "deleting") throw new AppError("UNKNOWN_SESSION");
      if (current.status === "complete") return { duplicate: true, complete: true, completedNow: false };
      if (current.blocksReceived >= current.blockCount) {
        // Every block is marked but the completion is not done (in progress elsewhere, or its process died).
        const completedNow = await this.ensureComplete(session);
        return { duplicate: true, complete: true, completedNow };
      }
      return { duplicate: true, complete: false, completedNow: false };
    } catch (err) {
      if (err instanceof AppError) throw err;
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

  /**
   * Makes sure a carve whose every block is marked gets completed: claims the completion or waits for the
   * process that holds the claim; takes over a stale claim. Returns whether THIS call completed it.
   */
  private async ensureComplete(session: Session): Promise<boolean> {
    const deadline = Date.now() + this.completionWaitMs;
    const key = { _id: session.carveId, sessionId: session.sessionId };
    for (;;) {
      const token = randomUUID();
      const claim = await this.sessions.updateOne(
        { ...key, status: "receiving", blocksReceived: session.blockCount },
        { $set: { status: "completing", completingSince: this.now(), completer: token } },
      );
      if (claim.modifiedCount === 1) return this.finalizeClaimed(session, token);
      const current = await this.sessions.findOne(key, NO_MARKERS);
      if (!current || current.status === "deleting") throw new AppError("UNKNOWN_SESSION");
      if (current.status === "complete") return false;
      if (
        current.status === "completing" &&
        current.completingSince &&
        this.now().getTime() - current.completingSince.getTime() > this.staleCompletionMs
      ) {
        const takeover = await this.sessions.updateOne(
          { ...key, status: "completing", completer: current.completer ?? null, completingSince: current.completingSince },
          { $set: { completingSince: this.now(), completer: token } },
        );
        if (takeover.modifiedCount === 1) {
          this.logger.warn({ carveId: session.carveId }, "taking over a completion abandoned by another process");
          return this.finalizeClaimed(session, token);
        }
      }
      if (Date.now() > deadline) {
        throw new AppError("STORAGE_UNAVAILABLE", "completion in progress elsewhere, retry");
      }
      await sleep(25);
    }
  }

  private async finalizeClaimed(session: Session, token: string): Promise<true> {
    const release = await this.finalizeSlots.acquire(1);
    try {
      await this.finalize(session, token);
      return true;
    } catch (err) {
      // Give the claim back (if still ours) so the next block re-send, or another process, retries at once.
      await this.sessions
        .updateOne(
          { _id: session.carveId, sessionId: session.sessionId, status: "completing", completer: token },
          { $set: { status: "receiving", completingSince: null, completer: null } },
        )
        .catch(() => undefined);
      throw err;
    } finally {
      release();
    }
  }

  /**
   * Hashes the carve (the running hash when it covers every block, else the stored chunks read back in order),
   * writes the GridFS files document, marks the carve complete.
   */
  private async finalize(session: Session, token: string): Promise<void> {
    const k = chunksPerBlock(session.blockSize) ?? 1;
    const chunkSize = session.blockSize / k;
    const totalChunks = Math.ceil(session.carveSize / chunkSize);
    const perBatch = Math.max(1, Math.floor(HASH_BATCH_BYTES / chunkSize));
    const running = this.runningHashes.get(session.sessionId);
    const covered = running !== undefined && running.next === session.blockCount && running.head !== null;
    // copy(): a failed completion is retried, and must find the running hash still open.
    const hash = covered ? running.hash.copy() : createHash("sha256");
    let head = covered && running.head ? running.head : Buffer.alloc(0);
    for (let first = 0; !covered && first < totalChunks; first += perBatch) {
      const last = Math.min(first + perBatch, totalChunks) - 1;
      const batch = await this.fetchChunks(session.sessionId, first, last);
      for (let n = first; n <= last; n++) {
        const bytes = GridFsCarveStore.checkedChunk(batch, n, session.sessionId, chunkSize, session.carveSize);
        if (n === 0) head = Buffer.from(bytes.subarray(0, 4));
        hash.update(bytes);
      }
      // Heartbeat: the claim stays ours while we make progress; if another process took it over, stop.
      const beat = await this.sessions.updateOne(
        { _id: session.carveId, sessionId: session.sessionId, status: "completing", completer: token },
        { $set: { completingSince: this.now() } },
      );
      if (beat.matchedCount !== 1) throw new AppError("STORAGE_UNAVAILABLE", "completion claim lost");
    }
    const sha256 = hash.digest("hex");
    crashPoint("complete.after-hash");
    const compression = detectCompression(head);
    const completedAt = this.now();
    await this.insertFileDoc(session, { chunkSize, sha256, compression, completedAt });
    crashPoint("complete.after-publish");
    const done = await this.sessions.updateOne(
      { _id: session.carveId, sessionId: session.sessionId, status: "completing", completer: token },
      {
        $set: { status: "complete", sha256, compression, completedAt, completingSince: null, completer: null },
        $unset: { b: "" },
      },
    );
    if (done.matchedCount !== 1) throw new AppError("STORAGE_UNAVAILABLE", "completion claim lost");
    crashPoint("complete.after-record");
    this.runningHashes.delete(session.sessionId);
    this.logger.info(
      { carveId: session.carveId, sha256, compression, carveSize: session.carveSize, blockCount: session.blockCount },
      "carve complete",
    );
  }

  /** The GridFS files document that makes the stored chunks an ordinary GridFS file. Idempotent. */
  private async insertFileDoc(
    session: Session,
    done: { chunkSize: number; sha256: string; compression: Compression; completedAt: Date; origin?: string },
  ): Promise<void> {
    const { chunkSize, sha256, compression, completedAt } = done;
    const file: FileDoc = {
      _id: session.sessionId,
      length: session.carveSize,
      chunkSize,
      uploadDate: completedAt,
      filename: `${session.carveId}${archiveExtension(compression)}`,
      metadata: {
        origin: done.origin ?? "agent",
        carve_id: session.carveId,
        request_id: session.requestId,
        session_id: session.sessionId,
        // The node key is osquery's enrollment secret: GridFS tools show metadata, so only a digest here.
        node_key_sha256: session.nodeKey ? createHash("sha256").update(session.nodeKey).digest("hex") : null,
        agent_address: session.agent.address,
        agent_user_agent: session.agent.userAgent,
        certificate_subject: session.agent.certificate?.subjectDn ?? null,
        certificate_sha256: session.agent.certificate?.fingerprintSha256 ?? null,
        sha256,
        compression,
        block_size: session.blockSize,
        block_count: session.blockCount,
        created_at: session.createdAt,
        completed_at: completedAt,
      },
    };
    try {
      await this.files.insertOne(file);
    } catch (err) {
      // Inserted by an earlier completion of this carve that died before marking it complete.
      if (!isDuplicateKey(err)) throw err;
    }
  }

  // ---------------------------------------------------------------- reads

  private async liveDoc(carveId: string, withMarkers = false): Promise<SessionDoc> {
    this.assertOpen();
    if (!isSafeId(carveId)) throw new AppError("CARVE_NOT_FOUND");
    let doc: SessionDoc | null;
    try {
      doc = await this.sessions.findOne({ _id: carveId }, withMarkers ? {} : NO_MARKERS);
    } catch (err) {
      throw wrap(err, `read carve ${carveId}`);
    }
    if (!doc || doc.status === "deleting" || doc.status === "importing") throw new AppError("CARVE_NOT_FOUND");
    return doc;
  }

  async getCarve(carveId: string): Promise<CarveRecord> {
    return GridFsCarveStore.recordOf(await this.liveDoc(carveId));
  }

  async missingBlocks(carveId: string, limit: number): Promise<number[]> {
    const doc = await this.liveDoc(carveId, true);
    if (doc.status === "complete") return [];
    const marks = doc.b ?? {};
    const out: number[] = [];
    for (let i = 0; i < doc.blockCount && out.length < limit; i++) if (marks[`r${i}`] === undefined) out.push(i);
    return out;
  }

  async listCarves(query: ListQuery): Promise<ListPage> {
    this.assertOpen();
    const after = query.cursor ? decodeCursor(query.cursor) : null;
    const and: Array<Filter<SessionDoc>> = [];
    and.push(
      query.status === "complete"
        ? { status: "complete" }
        : query.status === "receiving"
          ? { status: { $in: ["receiving", "completing"] } }
          : { status: { $nin: ["deleting", "importing"] } },
    );
    if (query.nodeKey !== undefined) and.push({ nodeKey: query.nodeKey });
    if (query.since) and.push({ createdAt: { $gte: query.since } });
    if (query.until) and.push({ createdAt: { $lt: query.until } });
    if (after) {
      const t = new Date(after.t);
      and.push({ $or: [{ createdAt: { $lt: t } }, { createdAt: t, _id: { $gt: after.id } }] });
    }
    try {
      const docs = await this.sessions
        .find({ $and: and }, NO_MARKERS)
        .sort({ createdAt: -1, _id: 1 })
        .limit(query.limit + 1)
        .toArray();
      const page = docs.slice(0, query.limit).map((d) => GridFsCarveStore.recordOf(d));
      const last = page[page.length - 1];
      return { carves: page, nextCursor: docs.length > query.limit && last ? encodeCursor(last) : null };
    } catch (err) {
      throw wrap(err, "list carves");
    }
  }

  async openArchive(carveId: string, range?: ByteRange): Promise<ArchiveHandle> {
    const doc = await this.liveDoc(carveId);
    if (doc.status !== "complete") throw new AppError("CARVE_NOT_COMPLETE");
    let file: FileDoc | null;
    try {
      file = await this.files.findOne({ _id: doc.sessionId });
    } catch (err) {
      throw wrap(err, `read the files document of ${carveId}`);
    }
    if (!file) throw new AppError("STORAGE_UNAVAILABLE", `the GridFS file of ${carveId} is missing`);
    const record = GridFsCarveStore.recordOf(doc);
    const plan = GridFsCarveStore.readPlan(file, range);
    if (!plan) return { record, stream: Readable.from([]) }; // an empty archive
    // The first batch is read (and its first chunk checked) now: a storage failure is then a clean error
    // before any header is sent, not a connection cut after a 200.
    const first = await this.fetchChunks(file._id, plan.firstN, Math.min(plan.firstN + plan.perBatch - 1, plan.lastN));
    GridFsCarveStore.checkedChunk(first, plan.firstN, file._id, file.chunkSize, file.length);
    const stream = Readable.from(this.readChunks(file, plan, first), { objectMode: false, highWaterMark: 64 * 1024 });
    return { record, stream };
  }

  /** Which chunks hold a file's bytes (or `range`, inclusive), in batches of about READ_BATCH_BYTES; null if none. */
  private static readPlan(file: FileDoc, range?: ByteRange): ReadPlan | null {
    if (file.length === 0) return null;
    const start = range?.start ?? 0;
    const end = range?.end ?? file.length - 1;
    return {
      start,
      end,
      firstN: Math.floor(start / file.chunkSize),
      lastN: Math.floor(end / file.chunkSize),
      perBatch: Math.max(1, Math.floor(READ_BATCH_BYTES / file.chunkSize)),
    };
  }

  /** The bytes of chunk `n` of a file of `length` bytes, checked present and of the size its place requires. */
  private static checkedChunk(batch: Map<number, ChunkDoc>, n: number, fileId: string, chunkSize: number, length: number): Buffer {
    const totalChunks = Math.ceil(length / chunkSize);
    const expected = n < totalChunks - 1 ? chunkSize : length - (totalChunks - 1) * chunkSize;
    const doc = batch.get(n);
    if (!doc || doc.data.position !== expected) {
      throw new AppError("STORAGE_UNAVAILABLE", `chunk ${n} of ${fileId} is missing or has the wrong size`);
    }
    return bytesOf(doc.data);
  }

  /** Chunks from..to (inclusive) of a file, by _id, keyed by n (missing ones absent). */
  private async fetchChunks(fileId: string, from: number, to: number): Promise<Map<number, ChunkDoc>> {
    const ids: string[] = [];
    for (let n = from; n <= to; n++) ids.push(GridFsCarveStore.chunkId(fileId, n));
    try {
      const docs = await this.chunks.find({ _id: { $in: ids } }).toArray();
      return new Map(docs.map((d) => [d.n, d]));
    } catch (err) {
      throw wrap(err, `read chunks of ${fileId}`);
    }
  }

  /**
   * The bytes of a GridFS file along `plan`, batch by batch, the next batch fetched while the current one is
   * sent. The driver's own download stream runs one find over every chunk and leaves batch sizes to the
   * server: MongoDB caps a batch at 16 MiB, but a server that answers with every chunk at once
   * (mongo-java-server does) made the service hold the whole carve, ~560 MB of RSS for a 256 MiB carve. Here
   * memory is two batches whatever the server does. Every chunk is checked (present, right size) before its
   * bytes go out.
   */
  private async *readChunks(file: FileDoc, plan: ReadPlan, firstBatch: Map<number, ChunkDoc>): AsyncGenerator<Buffer> {
    const { chunkSize, length } = file;
    const { start, end, firstN, lastN, perBatch } = plan;
    let next: Promise<Map<number, ChunkDoc>> | null = Promise.resolve(firstBatch);
    try {
      for (let from = firstN; from <= lastN; from += perBatch) {
        const batch: Map<number, ChunkDoc> = await next!;
        const following = from + perBatch;
        next = following <= lastN ? this.fetchChunks(file._id, following, Math.min(following + perBatch - 1, lastN)) : null;
        // A rejected prefetch is awaited (and thrown) on the next turn; never left unhandled meanwhile.
        next?.catch(() => undefined);
        for (let n = from; n <= Math.min(following - 1, lastN); n++) {
          const bytes = GridFsCarveStore.checkedChunk(batch, n, file._id, chunkSize, length);
          const from0 = n === firstN ? start - n * chunkSize : 0;
          const to = n === lastN ? end - n * chunkSize + 1 : bytes.length;
          yield bytes.subarray(from0, to);
        }
      }
    } finally {
      next?.catch(() => undefined);
    }
  }

  // ---------------------------------------------------------------- deletion

  async deleteCarve(
    carveId: string,
    options: { onlyIfExpired?: ExpiryCriteria } = {},
  ): Promise<{ deleted: boolean; bytesFreed: number }> {
    this.assertOpen();
    if (!isSafeId(carveId)) throw new AppError("CARVE_NOT_FOUND");
    const criteria = options.onlyIfExpired;
    try {
      const doc = await this.sessions.findOne({ _id: carveId }, NO_MARKERS);
      if (!doc) throw new AppError("CARVE_NOT_FOUND");
      const now = this.now();
      if (doc.status === "deleting") {
        // Finish a deletion whose process died: claim it first, so concurrent finishers count it once.
        if (criteria && (doc.deletingSince ?? new Date(0)) >= criteria.staleDeleteBefore) {
          return { deleted: false, bytesFreed: 0 };
        }
        const claim = await this.sessions.updateOne(
          { _id: carveId, status: "deleting", deletingSince: doc.deletingSince ?? null },
          { $set: { deletingSince: now } },
        );
        if (claim.modifiedCount !== 1) return { deleted: false, bytesFreed: 0 };
        await this.removeCarveData(doc);
        return { deleted: true, bytesFreed: 0 };
      }
      if (doc.hold && !criteria) throw new AppError("CARVE_ON_HOLD");
      // Step 1, atomically with the (re-)check of expiry and hold: the carve becomes invisible to every
      // process. A block stored since the carve was selected moved updatedAt and keeps it alive.
      const filter: Filter<SessionDoc> = criteria
        ? {
            _id: carveId,
            hold: null,
            $or: [
              { status: "complete", completedAt: { $lt: criteria.completedBefore } },
              { status: { $in: ["receiving", "importing"] }, updatedAt: { $lt: criteria.idleBefore } },
            ],
          }
        : { _id: carveId, hold: null, status: { $in: ["receiving", "completing", "complete"] } };
      const before = await this.sessions.findOneAndUpdate(
        filter,
        { $set: { status: "deleting", deletingSince: now } },
        { returnDocument: "before", projection: { b: 0 } },
      );
      if (!before) {
        if (criteria) return { deleted: false, bytesFreed: 0 };
        const current = await this.sessions.findOne({ _id: carveId }, NO_MARKERS);
        if (current?.hold && current.status !== "deleting") throw new AppError("CARVE_ON_HOLD");
        throw new AppError("CARVE_NOT_FOUND");
      }
      crashPoint("delete.after-mark");
      await this.removeCarveData(before);
      const bytesFreed = before.status === "complete" ? before.carveSize : before.bytesReceived;
      this.logger.info({ carveId, bytesFreed }, "carve deleted");
      return { deleted: true, bytesFreed };
    } catch (err) {
      throw wrap(err, `delete ${carveId}`);
    }
  }

  /** Everything a carve owns, its session document last: an interrupted run is finished later. */
  private async removeCarveData(doc: SessionDoc): Promise<void> {
    this.sessionCache.delete(doc.sessionId);
    await this.files.deleteOne({ _id: doc.sessionId });
    await this.chunks.deleteMany({ files_id: doc.sessionId });
    crashPoint("delete.after-bytes");
    // A completion racing an explicit delete may have inserted the files document meanwhile.
    await this.files.deleteOne({ _id: doc.sessionId });
    await this.sessions.deleteOne({ _id: doc._id, status: "deleting" });
  }

  async findExpired(criteria: ExpiryCriteria, limit: number): Promise<ExpiryCandidate[]> {
    this.assertOpen();
    try {
      const docs = await this.sessions
        .find(
          {
            $or: [
              { status: "complete", completedAt: { $lt: criteria.completedBefore }, hold: null },
              { status: { $in: ["receiving", "importing"] }, updatedAt: { $lt: criteria.idleBefore }, hold: null },
              { status: "deleting", deletingSince: { $lt: criteria.staleDeleteBefore } },
            ],
          },
          NO_MARKERS,
        )
        .sort({ updatedAt: 1 })
        .limit(limit)
        .toArray();
      return docs.map((d) => ({
        carveId: d._id,
        reason: d.status === "deleting" ? "unfinished-delete" : d.status === "complete" ? "retention" : "abandoned",
        bytes: d.status === "complete" ? d.carveSize : d.status === "deleting" ? 0 : d.bytesReceived,
      }));
    } catch (err) {
      throw wrap(err, "find expired carves");
    }
  }

  async importCarve(spec: ImportSpec, data: AsyncIterable<Buffer>, limits: ImportLimits): Promise<CarveRecord> {
    this.assertOpen();
    if (!isSafeId(spec.carveId) || !isSafeId(spec.sessionId)) throw new AppError("INVALID_START", "unsafe identifier");
    const now = this.now();
    const doc: SessionDoc = {
      _id: spec.carveId,
      sessionId: spec.sessionId,
      requestId: "import",
      nodeKey: "",
      blockCount: 0,
      blockSize: IMPORT_CHUNK,
      carveSize: 0,
      chunkSize: IMPORT_CHUNK,
      chunksPerBlock: 1,
      agent: copyAgent(spec.agent),
      createdAt: now,
      updatedAt: now,
      status: "importing",
      completingSince: null,
      deletingSince: null,
      blocksReceived: 0,
      bytesReceived: 0,
      sha256: null,
      compression: null,
      completedAt: null,
      hold: null,
      origin: "import",
      imported: spec.source,
      verifications: [],
    };
    try {
      await this.sessions.insertOne(doc);
    } catch (err) {
      if (isDuplicateKey(err)) throw new AppError("CARVE_ID_CONFLICT");
      throw wrap(err, "claim import");
    }
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
          await this.chunks.insertOne({
            _id: GridFsCarveStore.chunkId(spec.sessionId, n),
            files_id: spec.sessionId,
            n,
            data: new Binary(piece),
          });
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
            // keeps the import visibly alive for retention (an import idle for hours is dead)
            await this.sessions.updateOne({ _id: spec.carveId }, { $set: { updatedAt: this.now() } });
          }
        }
      } catch (err) {
        if (err instanceof AppError) throw err;
        if ((err as { name?: string }).name?.startsWith("Mongo")) throw err;
        throw new AppError("IMPORT_ABORTED", undefined, { cause: err });
      }
      if (size === 0) throw new AppError("IMPORT_EMPTY");
      const sha256 = hash.digest("hex");
      if (limits.expectedSha256 && limits.expectedSha256.toLowerCase() !== sha256) {
        throw new AppError("IMPORT_HASH_MISMATCH", `got ${sha256}`);
      }
      await flush(true);
      const compression = detectCompression(head);
      const completedAt = this.now();
      const session: Session = {
        ...GridFsCarveStore.sessionOf(doc),
        carveSize: size,
        blockCount: n,
        blockSize: IMPORT_CHUNK,
      };
      crashPoint("import.before-publish");
      await this.insertFileDoc(session, { chunkSize: IMPORT_CHUNK, sha256, compression, completedAt, origin: "import" });
      await this.sessions.updateOne(
        { _id: spec.carveId, status: "importing" },
        {
          $set: {
            status: "complete",
            carveSize: size,
            blockCount: n,
            blocksReceived: n,
            bytesReceived: size,
            sha256,
            compression,
            completedAt,
            updatedAt: completedAt,
          },
        },
      );
      this.logger.info({ carveId: spec.carveId, sha256, compression, size }, "archive imported");
      return this.getCarve(spec.carveId);
    } catch (err) {
      await this.chunks.deleteMany({ files_id: spec.sessionId }).catch(() => undefined);
      await this.files.deleteOne({ _id: spec.sessionId }).catch(() => undefined);
      await this.sessions.deleteOne({ _id: spec.carveId, status: "importing" }).catch(() => undefined);
      if (err instanceof AppError) throw err;
      throw wrap(err, "import archive");
    }
  }

  async recordVerification(carveId: string, verification: Verification): Promise<CarveRecord> {
    this.assertOpen();
    if (!isSafeId(carveId)) throw new AppError("CARVE_NOT_FOUND");
    let doc: SessionDoc | null;
    try {
      doc = await this.sessions.findOneAndUpdate(
        { _id: carveId, status: { $nin: ["deleting", "importing"] } },
        { $push: { verifications: { $each: [{ ...verification }], $slice: -MAX_VERIFICATIONS_KEPT } } },
        { returnDocument: "after", projection: { b: 0 } },
      );
    } catch (err) {
      throw wrap(err, `record verification of ${carveId}`);
    }
    if (!doc) throw new AppError("CARVE_NOT_FOUND");
    return GridFsCarveStore.recordOf(doc);
  }

  async setHold(carveId: string, hold: LegalHold | null): Promise<CarveRecord> {
    this.assertOpen();
    if (!isSafeId(carveId)) throw new AppError("CARVE_NOT_FOUND");
    let doc: SessionDoc | null;
    try {
      doc = await this.sessions.findOneAndUpdate(
        { _id: carveId, status: { $nin: ["deleting", "importing"] } },
        { $set: { hold: hold ? { by: hold.by, reason: hold.reason, at: hold.at } : null } },
        { returnDocument: "after", projection: { b: 0 } },
      );
    } catch (err) {
      throw wrap(err, `set hold on ${carveId}`);
    }
    if (!doc) throw new AppError("CARVE_NOT_FOUND");
    return GridFsCarveStore.recordOf(doc);
  }

  // ---------------------------------------------------------------- audit

  async appendAudit(event: AuditEvent): Promise<void> {
    this.assertOpen();
    const { id, ...rest } = event;
    try {
      await this.audit.insertOne({ _id: id, ...rest });
    } catch (err) {
      throw wrap(err, "append audit event");
    }
  }

  async listAudit(query: AuditQuery): Promise<AuditPage> {
    this.assertOpen();
    const after = query.cursor ? decodeCursor(query.cursor) : null;
    const and: Array<Filter<AuditDoc>> = [{}];
    if (query.carveId !== undefined) and.push({ carveId: query.carveId });
    if (query.action !== undefined) and.push({ action: query.action });
    if (query.since) and.push({ at: { $gte: query.since } });
    if (query.until) and.push({ at: { $lt: query.until } });
    if (after) {
      const t = new Date(after.t);
      and.push({ $or: [{ at: { $lt: t } }, { at: t, _id: { $lt: after.id } }] });
    }
    try {
      const docs = await this.audit
        .find({ $and: and })
        .sort({ at: -1, _id: -1 })
        .limit(query.limit + 1)
        .toArray();
      const events: AuditEvent[] = docs.slice(0, query.limit).map(({ _id, ...rest }) => ({ id: _id, ...rest }));
      const last = events[events.length - 1];
      return { events, nextCursor: docs.length > query.limit && last ? encodeAuditCursor(last) : null };
    } catch (err) {
      throw wrap(err, "list audit events");
    }
  }

  // ---------------------------------------------------------------- lifecycle

  /** MongoDB manages its own storage; its free space is not visible to a client. */
  freeBytes(): Promise<number | null> {
    this.assertOpen();
    return Promise.resolve(null);
  }

  async health(): Promise<StoreHealth> {
    const detail: Record<string, string | number | boolean | null> = {
      database: this.options.database,
      bucket: this.options.bucket,
    };
    try {
      this.assertOpen();
      const started = Date.now();
      const abort = new AbortController();
      try {
        await Promise.race([
          this.db.command({ ping: 1 }),
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
      return { ok: true, backend: this.backend, detail };
    } catch (err) {
      detail.error = err instanceof Error ? err.name : "unknown";
      return { ok: false, backend: this.backend, detail };
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.client.close();
  }
}
