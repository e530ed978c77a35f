import { createHash, randomBytes } from "node:crypto";
import { AppError } from "../errors.js";
import type { Logger } from "../logger.js";
import type { BlobStore, CarveCatalog, CatalogEntry } from "../storage/contracts.js";
import type { AgentInfo, CertificateIdentity, PutBlockResult, Session } from "../storage/model.js";
import { copyAgent } from "../storage/model.js";
import { decodeBase64InPlace, decodeBlockData } from "../carves/base64.js";
import { blockCountFor, expectedBlockLength, isSafeId } from "../carves/geometry.js";
import { LruMap } from "../util/lru.js";
import type { Completer } from "./completion.js";
import type { CarveReadsService } from "./records.js";
import { sessionOf } from "./records.js";

/** A validated start request, in our naming (osquery's snake_case stops at the HTTP boundary). */
export interface StartCommand {
  blockCount: number;
  blockSize: number;
  carveSize: number;
  carveId: string;
  requestId: string;
  /** osquery's node key as sent: hashed here, never stored or logged. */
  nodeKey: string;
  agent: AgentInfo;
}

export interface BlockCommand {
  blockId: number;
  sessionId: string;
  requestId: string;
  /**
   * base64 text as sent by the agent: a string, or its bytes, which are then decoded in place (overwritten)
   * and handed to the store. The caller may reuse those bytes once block() has settled.
   */
  data: string | Buffer;
  /** The verified client certificate this block came with, if any. */
  certificate: CertificateIdentity | null;
}

export interface CarveLimits {
  maxBlockSize: number;
  maxCarveSize: number;
  /** A new carve is refused unless this much storage stays free after it (when the store can tell). */
  minFreeBytes?: number;
  /** Carves being received at once (active in the last `activeWithinMs`), in all and per agent. */
  maxReceiving?: number;
  maxReceivingPerAgent?: number;
  activeWithinMs?: number;
  /**
   * A carve that received no block within this long of its start stops counting towards the caps (osquery
   * sends its first block right after the start): starts that never send a block cannot lock agents out.
   */
  firstBlockWithinMs?: number;
}

/**
 * Who an agent is, for per-agent limits: its verified certificate, else its address. Never the node key: without
 * a certificate it is whatever the client sends, and distinct keys would each get their own cap.
 */
export function agentKeyOf(agent: AgentInfo): string {
  if (agent.certificate) return `cert:${agent.certificate.fingerprintSha256}`;
  return `addr:${agent.address ?? "unknown"}`;
}

export interface StartOutcome {
  session: Session;
  /** false when this was a retried start of a carve that already has a session */
  created: boolean;
}

export interface BlockOutcome extends PutBlockResult {
  session: Session;
}

export function newSessionId(): string {
  return randomBytes(16).toString("hex");
}

/** SHA-256 (hex) of a node key; null for none. The only form in which a node key is kept. */
export function nodeKeyDigest(nodeKey: string): string | null {
  return nodeKey === "" ? null : createHash("sha256").update(nodeKey, "utf8").digest("hex");
}

/** Immutable session facts by session id, so the block path reads the catalog once per session and process. */
export class SessionCache extends LruMap<string, Session> {
  constructor() {
    super(10_000);
  }
}

/**
 * The carve protocol rules (osquery-carver-protocol.md): geometry, idempotent starts, block validation, and
 * completion once every block is stored. Blocks go to the blob store only; the catalog is read once per
 * session (then cached) and written at the start and at completion.
 */
export class IngestService {
  constructor(
    private readonly deps: {
      catalog: CarveCatalog;
      blobs: BlobStore;
      reads: CarveReadsService;
      completer: Completer;
      sessions: SessionCache;
      now: () => Date;
      limits: CarveLimits;
      logger: Logger;
      /** Refuse blocks whose client certificate differs from the start's. */
      requireSameCertificate?: boolean;
      sessionIds?: () => string;
    },
  ) {}

  /**
   * Opens a session, or returns the existing one when an agent (5.22+) retries the same start.
   * @throws AppError INVALID_START, BLOCK_SIZE_TOO_LARGE, CARVE_TOO_LARGE, CARVE_ID_CONFLICT, INSUFFICIENT_STORAGE,
   *   STORAGE_UNAVAILABLE
   */
  async start(cmd: StartCommand): Promise<StartOutcome> {
    const { limits } = this.deps;
    if (cmd.blockSize > limits.maxBlockSize) {
      throw new AppError("BLOCK_SIZE_TOO_LARGE", `block_size ${cmd.blockSize} > ${limits.maxBlockSize}`);
    }
    if (cmd.carveSize > limits.maxCarveSize) {
      throw new AppError("CARVE_TOO_LARGE", `carve_size ${cmd.carveSize} > ${limits.maxCarveSize}`);
    }
    const expectedCount = blockCountFor(cmd.carveSize, cmd.blockSize);
    if (cmd.blockCount !== expectedCount) {
      throw new AppError(
        "INVALID_START",
        `block_count ${cmd.blockCount} != ceil(carve_size / block_size) = ${expectedCount}`,
      );
    }
    await this.checkLimits(cmd);
    const nodeKeySha256 = nodeKeyDigest(cmd.nodeKey);
    const { session, created } = await this.createSession(cmd, nodeKeySha256);
    if (!created) {
      const sameCarve =
        session.requestId === cmd.requestId &&
        session.blockCount === cmd.blockCount &&
        session.blockSize === cmd.blockSize &&
        session.carveSize === cmd.carveSize &&
        session.nodeKeySha256 === nodeKeySha256;
      if (!sameCarve) {
        this.deps.logger.warn(
          { carveId: cmd.carveId, requestId: cmd.requestId, existingRequestId: session.requestId },
          "start refused: carve_id already belongs to another carve",
        );
        throw new AppError("CARVE_ID_CONFLICT");
      }
      this.deps.logger.info({ carveId: cmd.carveId, sessionId: session.sessionId }, "retried start: same session");
      return { session, created: false };
    }
    this.deps.logger.info(
      {
        carveId: session.carveId,
        requestId: session.requestId,
        sessionId: session.sessionId,
        carveSize: session.carveSize,
        blockSize: session.blockSize,
        blockCount: session.blockCount,
        agentAddress: session.agent.address,
      },
      "carve session started",
    );
    return { session, created: true };
  }

  /**
   * Opens the catalog entry and the staging, or returns the carve's existing session. Every step is idempotent,
   * so a retried start repairs a start that crashed half-way.
   */
  async createSession(cmd: StartCommand, nodeKeySha256: string | null): Promise<{ session: Session; created: boolean }> {
    const sessionId = (this.deps.sessionIds ?? newSessionId)();
    if (!isSafeId(cmd.carveId) || !isSafeId(sessionId)) throw new AppError("INVALID_START", "unsafe identifier");
    const now = this.deps.now();
    const entry: CatalogEntry = {
      carveId: cmd.carveId,
      sessionId,
      requestId: cmd.requestId,
      nodeKeySha256,
      blockCount: cmd.blockCount,
      blockSize: cmd.blockSize,
      carveSize: cmd.carveSize,
      agent: copyAgent(cmd.agent),
      createdAt: now,
      state: "receiving",
      stateSince: now,
      claim: null,
      completedAt: null,
      sha256: null,
      compression: null,
      hold: null,
      origin: "agent",
      imported: null,
      verifications: [],
    };
    const { entry: winner, created } = await this.deps.catalog.create(entry);
    if (winner.state === "deleting" || winner.state === "importing") {
      throw new AppError("CARVE_ID_CONFLICT", winner.state === "deleting" ? "the carve is being deleted" : undefined);
    }
    const session = sessionOf(winner);
    if (created || winner.state === "receiving") {
      try {
        await this.deps.blobs.begin(session);
      } catch (err) {
        if (created) await this.deps.catalog.remove(session.carveId, { sessionId: session.sessionId, states: ["receiving"] }).catch(() => undefined);
        throw err;
      }
    }
    this.deps.sessions.set(session.sessionId, session);
    return { session, created };
  }

  /** The session of a visible carve. @throws AppError UNKNOWN_SESSION */
  async findSession(sessionId: string): Promise<Session> {
    const cached = this.deps.sessions.get(sessionId);
    if (cached) return cached;
    if (!isSafeId(sessionId)) throw new AppError("UNKNOWN_SESSION");
    const entry = await this.deps.catalog.getBySession(sessionId);
    if (!entry || entry.state === "deleting" || entry.state === "importing") throw new AppError("UNKNOWN_SESSION");
    const session = sessionOf(entry);
    this.deps.sessions.set(sessionId, session);
    return session;
  }

  /**
   * The free-storage reserve and the carve caps. The catalog's upper bounds (every carve being received, active or
   * not, at its declared size) clear almost every start in one indexed read; only a start they do not clear pays
   * for the exact checks, which ask the blob store about each carve being received.
   * @throws AppError INSUFFICIENT_STORAGE, TOO_MANY_CARVES, TOO_MANY_CARVES_FOR_AGENT
   */
  private async checkLimits(cmd: StartCommand): Promise<void> {
    const { limits } = this.deps;
    const minFree = limits.minFreeBytes ?? 0;
    const maxAll = limits.maxReceiving ?? 0;
    const maxAgent = limits.maxReceivingPerAgent ?? 0;
    if (minFree <= 0 && maxAll <= 0 && maxAgent <= 0) return;
    const [load, free] = await Promise.all([
      this.deps.catalog.receivingLoad(cmd.agent),
      minFree > 0 ? this.deps.blobs.freeBytes() : Promise.resolve(null),
    ]);
    // Carves in progress will still write what they declared: that space is reserved, or three starts that
    // each fit alone would all be accepted and fail half-way on a full disk.
    if (free !== null && free - load.declaredBytes - cmd.carveSize < minFree) {
      const reserved = await this.reservedBytes(cmd.carveId);
      if (free - reserved - cmd.carveSize < minFree) {
        this.deps.logger.warn(
          { carveId: cmd.carveId, carveSize: cmd.carveSize, freeBytes: free, reservedBytes: reserved },
          "start refused: storage almost full",
        );
        throw new AppError("INSUFFICIENT_STORAGE", `${cmd.carveSize} bytes would leave less than the configured minimum free`);
      }
    }
    if ((maxAll > 0 && load.carves >= maxAll) || (maxAgent > 0 && load.fromAgent >= maxAgent)) await this.checkCapacity(cmd);
  }

  /**
   * Bytes still to come for carves being received (declared size minus bytes received), except `carveId`'s own
   * (a retried start). Carves idle past `activeWithinMs` are abandoned and reserve nothing.
   */
  private async reservedBytes(carveId: string): Promise<number> {
    const since = this.deps.now().getTime() - (this.deps.limits.activeWithinMs ?? Number.POSITIVE_INFINITY);
    let reserved = 0;
    let cursor: string | undefined;
    for (let pages = 0; pages < 20; pages++) {
      const page = await this.deps.reads.list({ status: "receiving", limit: 1000, ...(cursor ? { cursor } : {}) });
      for (const c of page.carves) {
        if (c.carveId !== carveId && c.updatedAt.getTime() >= since) reserved += Math.max(0, c.carveSize - c.bytesReceived);
      }
      if (page.nextCursor === null) break;
      cursor = page.nextCursor;
    }
    return reserved;
  }

  /**
   * Limits that protect the server: carves being received at once, in all and per agent. Carves idle for
   * longer than `activeWithinMs` (abandoned, awaiting retention) do not count; a retried start of a carve
   * that is already receiving is never refused. Approximate under concurrent starts (a soft limit).
   * @throws AppError TOO_MANY_CARVES, TOO_MANY_CARVES_FOR_AGENT
   */
  private async checkCapacity(cmd: StartCommand): Promise<void> {
    const { maxReceiving, maxReceivingPerAgent, activeWithinMs } = this.deps.limits;
    if (!maxReceiving && !maxReceivingPerAgent) return;
    const cap = Math.max(maxReceiving ?? 0, maxReceivingPerAgent ?? 0);
    const page = await this.deps.reads.list({ status: "receiving", limit: Math.max(cap, 1) * 4 + 1 });
    // The service's clock, as for the times it compares against (starts, last blocks), not the wall clock.
    const now = this.deps.now().getTime();
    const since = now - (activeWithinMs ?? Number.POSITIVE_INFINITY);
    const unstartedBefore = now - (this.deps.limits.firstBlockWithinMs ?? Number.POSITIVE_INFINITY);
    if (page.carves.some((c) => c.carveId === cmd.carveId)) return; // a retried start: let the store answer it
    const active = page.carves.filter(
      (c) => c.updatedAt.getTime() >= since && !(c.blocksReceived === 0 && c.createdAt.getTime() < unstartedBefore),
    );
    const me = agentKeyOf(cmd.agent);
    const mine = active.filter((c) => agentKeyOf(c.agent) === me).length;
    if (maxReceivingPerAgent && mine >= maxReceivingPerAgent) {
      this.deps.logger.warn({ carveId: cmd.carveId, receiving: mine }, "start refused: per-agent carve limit");
      throw new AppError("TOO_MANY_CARVES_FOR_AGENT", `${mine} carves already being received from this agent`);
    }
    if (maxReceiving && active.length >= maxReceiving) {
      this.deps.logger.warn({ carveId: cmd.carveId, receiving: active.length }, "start refused: carve limit");
      throw new AppError("TOO_MANY_CARVES", `${active.length} carves already being received`);
    }
  }

  /**
   * Validates and stores one block.
   * @throws AppError UNKNOWN_SESSION, REQUEST_ID_MISMATCH, CERTIFICATE_MISMATCH, BLOCK_OUT_OF_RANGE, INVALID_BASE64,
   *   BLOCK_LENGTH_MISMATCH, BLOCK_CONFLICT, STORAGE_UNAVAILABLE
   */
  async block(cmd: BlockCommand): Promise<BlockOutcome> {
    const session = this.deps.sessions.get(cmd.sessionId) ?? (await this.findSession(cmd.sessionId));
    if (cmd.requestId !== session.requestId) throw new AppError("REQUEST_ID_MISMATCH");
    if (this.deps.requireSameCertificate) {
      const started = session.agent.certificate?.fingerprintSha256 ?? null;
      const now = cmd.certificate?.fingerprintSha256 ?? null;
      if (started !== now) {
        this.deps.logger.warn(
          { carveId: session.carveId, startedBy: session.agent.certificate?.subjectDn ?? null, blockFrom: cmd.certificate?.subjectDn ?? null },
          "block refused: client certificate differs from the session's",
        );
        throw new AppError("CERTIFICATE_MISMATCH");
      }
    }
    if (cmd.blockId >= session.blockCount) {
      throw new AppError("BLOCK_OUT_OF_RANGE", `block_id ${cmd.blockId} >= block_count ${session.blockCount}`);
    }
    const expected = expectedBlockLength(session, cmd.blockId);
    const data = typeof cmd.data === "string" ? decodeBlockData(cmd.data, expected) : decodeBase64InPlace(cmd.data, expected);
    const stored = await this.storeBlock(session, cmd.blockId, data);
    return { duplicate: stored.duplicate, complete: stored.complete, completedNow: stored.completedNow, session };
  }

  /**
   * Stores a decoded block and, once every block is stored, completes the carve (or sees it completed).
   * @throws AppError BLOCK_OUT_OF_RANGE, BLOCK_LENGTH_MISMATCH, BLOCK_CONFLICT, UNKNOWN_SESSION, STORAGE_UNAVAILABLE
   */
  async storeBlock(session: Session, blockId: number, data: Buffer): Promise<PutBlockResult> {
    const write = await this.deps.blobs.putBlock(session, blockId, data);
    if (!write.allStored) return { duplicate: write.duplicate, complete: false, completedNow: false };
    const completedNow = await this.deps.completer.ensureComplete(session);
    return { duplicate: write.duplicate, complete: true, completedNow };
  }
}
