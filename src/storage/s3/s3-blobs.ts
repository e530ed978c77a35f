import { createHash } from "node:crypto";
import type { Readable } from "node:stream";
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  type S3Client,
  type ServerSideEncryption,
} from "@aws-sdk/client-s3";
import { archiveExtension, blockOffset, expectedBlockLength, isSafeId } from "../../carves/geometry.js";
import { AppError, isAppError } from "../../errors.js";
import type { Logger } from "../../logger.js";
import { crashPoint } from "../../util/crash-point.js";
import type {
  ArchiveFacts,
  ArchiveRef,
  BlobReader,
  BlobStore,
  BlockWrite,
  ImportLimits,
  UploadProgress,
} from "../contracts.js";
import type { ByteRange, Compression, Session, StoreHealth } from "../model.js";
import { abortUploadsOf, MIN_PART_SIZE, MultipartWriter, partSizeFor, type ObjectParams } from "./multipart.js";
import { isNotFound, s3Code, s3Status, unavailable } from "./s3-errors.js";
import { importToS3 } from "./s3-import.js";
import { applyLegalHold, ObjectLockState, type LegalHoldOutcome } from "./object-lock.js";

export const DEFAULT_PART_SIZE = 8 * 1024 * 1024;

/** Server-side encryption asked of S3 for every object: SSE-S3 (AES256) or SSE-KMS with an optional key. */
export interface S3Encryption {
  mode: Extract<ServerSideEncryption, "AES256" | "aws:kms">;
  kmsKeyId?: string;
}

export interface S3BlobStoreOptions {
  client: S3Client;
  bucket: string;
  /** Prepended to every key ("carves/" gives carves/<carve_id>.tar.zst). */
  prefix?: string;
  /**
   * Where blocks wait until completion: blocks arrive in any order and size (from 8 KiB, at any replica), so
   * they cannot be multipart parts (5 MiB minimum, one uploader). The filesystem blobs for a single node; GridFS
   * blobs when the catalog is MongoDB, so every replica sees every block.
   */
  staging: BlobStore;
  sse?: S3Encryption | undefined;
  /** Multipart part size (default 8 MiB; raised when 10,000 parts would not hold an archive). */
  partSize?: number;
  /** Whether close() closes the staging too (default); false when its owner closes it (openS3Archives). */
  ownsStaging?: boolean;
  /** Shown in health details (never credentials). */
  endpoint?: string;
  logger?: Logger;
}

/** User metadata every object carries (S3 lower-cases the names; they come back as x-amz-meta-*). */
const META_SHA256 = "sha256";
const META_COMPRESSION = "compression";
const META_SESSION = "session-id";
const META_CARVE = "carve-id";

/** A published object as HEAD describes it. */
export interface FoundArchive {
  key: string;
  versionId: string | undefined;
  facts: ArchiveFacts;
}

/**
 * Carve archives as objects `<prefix><carve_id>.tar[.zst]` in one S3 bucket (AWS S3, MinIO, Ceph, SeaweedFS).
 * Blocks are staged in another BlobStore; completion streams the staged archive in order into one multipart
 * upload, checks its SHA-256 against the staging's and confirms the object with HEAD before the staging is
 * dropped, so a crash at any step leaves either the staging (completion runs again) or the object (completion
 * only finishes the cleanup). Never a half object: multipart objects appear whole at CompleteMultipartUpload.
 */
export class S3BlobStore implements BlobStore {
  readonly kind = "s3";
  readonly bucket: string;
  readonly prefix: string;
  private readonly client: S3Client;
  private readonly staging: BlobStore;
  private readonly ownsStaging: boolean;
  private readonly sse: S3Encryption | undefined;
  private readonly partSize: number;
  private readonly endpoint: string | null;
  private readonly logger: Logger | undefined;
  private closed = false;
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly objectLock: ObjectLockState;

  constructor(options: S3BlobStoreOptions) {
    this.client = options.client;
    this.bucket = options.bucket;
    this.prefix = options.prefix ?? "";
    this.staging = options.staging;
    this.ownsStaging = options.ownsStaging ?? true;
    this.sse = options.sse;
    this.partSize = options.partSize ?? DEFAULT_PART_SIZE;
    if (this.partSize < MIN_PART_SIZE) throw new Error(`S3 part size must be at least ${MIN_PART_SIZE} bytes`);
    this.endpoint = options.endpoint ?? null;
    this.logger = options.logger;
    this.objectLock = new ObjectLockState(this.client, this.bucket);
  }

  /** The object key of a carve's archive. */
  key(carveId: string, compression: Compression): string {
    return `${this.prefix}${carveId}${archiveExtension(compression)}`;
  }

  begin(session: Session): Promise<void> {
    return this.track(() => this.staging.begin(session));
  }

  putBlock(session: Session, blockId: number, data: Buffer): Promise<BlockWrite> {
    return this.track(async () => {
      try {
        return await this.staging.putBlock(session, blockId, data);
      } catch (err) {
        if (!isAppError(err) || err.code !== "UNKNOWN_SESSION") throw err;
        // No staging: published (and its staging dropped) or never begun. Only the object can tell.
        const found = await this.findArchive(session.carveId, session.sessionId);
        if (!found) throw err;
        return this.compareBlock(session, found, blockId, data);
      }
    });
  }

  progress(session: Session, missingLimit: number): Promise<UploadProgress | null> {
    return this.track(async () => {
      const progress = await this.staging.progress(session, missingLimit);
      if (progress || !(await this.stagedArchive(session))) return progress;
      // The staging completed its archive but the upload has not happened (it failed, or the process died):
      // every block is stored, so the carve must read as waiting for completion, never as idle or gone.
      return {
        blocksReceived: session.blockCount,
        bytesReceived: session.carveSize,
        lastBlockAt: session.createdAt,
        missing: [],
      };
    });
  }

  /** Whether the staging holds a completed archive of this session (not yet uploaded, or not yet dropped). */
  private async stagedArchive(session: Session): Promise<boolean> {
    for (const compression of ["none", "zstd"] as const) {
      try {
        const reader = await this.staging.read({ ...session, compression, size: session.carveSize });
        reader.stream.destroy();
        return true;
      } catch (err) {
        if (!isAppError(err) || err.code !== "CARVE_NOT_FOUND") throw err;
      }
    }
    return false;
  }

  complete(session: Session, heartbeat?: () => Promise<void>): Promise<ArchiveFacts> {
    return this.track(async () => {
      // An object already confirmed for this session wins: a crash after the upload leaves only the cleanup.
      const published = await this.findArchive(session.carveId, session.sessionId);
      if (published) {
        await this.staging.delete(session);
        return published.facts;
      }
      const facts = await this.staging.complete(session, heartbeat);
      const ref: ArchiveRef = { ...session, compression: facts.compression, size: facts.size };
      const key = this.key(session.carveId, facts.compression);
      await heartbeat?.();
      // Parts of an earlier attempt that died half-way are dead weight; the caller's claim excludes a live one.
      await abortUploadsOf(this.client, this.bucket, key).catch((err: unknown) => {
        throw unavailable(err);
      });
      const reader = await this.staging.read(ref);
      const writer = new MultipartWriter(
        this.client,
        this.objectParams(key, session.carveId, session.sessionId, facts),
        partSizeFor(this.partSize, facts.size),
        async () => {
          crashPoint("object.mid-upload");
          await heartbeat?.();
        },
      );
      try {
        await writer.start();
        const sha256 = await pump(reader.stream, writer);
        if (sha256 !== facts.sha256 || writer.size !== facts.size) {
          throw new AppError("STORAGE_UNAVAILABLE", undefined, {
            cause: new Error(
              `staged archive of ${session.carveId} read back as ${writer.size} bytes, sha256 ${sha256}; expected ${facts.size}, ${facts.sha256}`,
            ),
          });
        }
        await heartbeat?.();
        await writer.complete();
      } catch (err) {
        await writer.abort();
        throw unavailable(err);
      } finally {
        reader.stream.destroy();
      }
      const confirmed = await this.findArchive(session.carveId, session.sessionId);
      if (
        !confirmed ||
        confirmed.key !== key ||
        confirmed.facts.sha256 !== facts.sha256 ||
        confirmed.facts.size !== facts.size
      ) {
        throw new AppError("STORAGE_UNAVAILABLE", undefined, {
          cause: new Error(
            `object ${key} not confirmed after upload (HEAD: ${JSON.stringify(confirmed?.facts ?? null)})`,
          ),
        });
      }
      crashPoint("object.after-upload");
      await this.staging.delete(session);
      return facts;
    });
  }

  importArchive(
    target: { carveId: string; sessionId: string },
    data: AsyncIterable<Buffer>,
    limits: ImportLimits,
    heartbeat?: () => Promise<void>,
  ): Promise<ArchiveFacts> {
    return this.track(() => importToS3(this, target, data, limits, heartbeat));
  }

  /** Used by importToS3 (s3-import.ts): a multipart writer for one carve's object. */
  writerFor(
    target: { carveId: string; sessionId: string },
    facts: { compression: Compression; sha256?: string },
    maxSize: number,
    onPart?: () => Promise<void>,
  ): MultipartWriter {
    const key = this.key(target.carveId, facts.compression);
    return new MultipartWriter(
      this.client,
      this.objectParams(key, target.carveId, target.sessionId, facts),
      partSizeFor(this.partSize, maxSize),
      onPart,
    );
  }

  read(ref: ArchiveRef, range?: ByteRange): Promise<BlobReader> {
    return this.track(async () => {
      if (!isSafeId(ref.carveId)) throw new AppError("CARVE_NOT_FOUND");
      const key = this.key(ref.carveId, ref.compression);
      let body: Readable;
      try {
        const out = await this.client.send(
          new GetObjectCommand({
            Bucket: this.bucket,
            Key: key,
            ...(range ? { Range: `bytes=${range.start}-${range.end}` } : {}),
          }),
        );
        body = out.Body as Readable;
        if (out.Metadata?.[META_SESSION] !== ref.sessionId) {
          // Another carve that once had this id: not ours to serve.
          body.destroy();
          throw new AppError("CARVE_NOT_FOUND");
        }
      } catch (err) {
        if (isNotFound(err)) throw new AppError("CARVE_NOT_FOUND", undefined, { cause: err });
        if (s3Status(err) === 416) throw new AppError("RANGE_NOT_SATISFIABLE", undefined, { cause: err });
        throw unavailable(err);
      }
      return { stream: body };
    });
  }

  delete(target: { carveId: string; sessionId: string }): Promise<number> {
    return this.track(async () => {
      let freed = 0;
      try {
        // In a versioned bucket (Object Lock needs one) deleting a version frees its bytes, where a plain
        // delete would only add a delete marker; an older version of the same carve may then show up.
        for (let found = await this.findArchive(target.carveId, target.sessionId, true); found;) {
          await this.client.send(
            new DeleteObjectCommand({
              Bucket: this.bucket,
              Key: found.key,
              ...(found.versionId ? { VersionId: found.versionId } : {}),
            }),
          );
          freed += found.facts.size;
          const next = found.versionId ? await this.findArchive(target.carveId, target.sessionId, true) : null;
          found = next && next.versionId !== found.versionId ? next : null;
        }
        for (const c of ["none", "zstd"] as const)
          await abortUploadsOf(this.client, this.bucket, this.key(target.carveId, c));
      } catch (err) {
        throw unavailable(err);
      }
      return freed + (await this.staging.delete(target));
    });
  }

  /** Objects have no practical limit; what fills up is the staging, where blocks wait for completion. */
  freeBytes(): Promise<number | null> {
    return this.staging.freeBytes();
  }

  async health(): Promise<StoreHealth> {
    const detail: StoreHealth["detail"] = { bucket: this.bucket, prefix: this.prefix, endpoint: this.endpoint };
    if (this.closed) return { ok: false, backend: this.kind, detail: { ...detail, error: "closed" } };
    let ok = true;
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
    } catch (err) {
      ok = false;
      detail.error = s3Code(err) ?? "unreachable";
    }
    const staging = await this.staging.health().catch(() => ({ ok: false, backend: this.staging.kind, detail: {} }));
    detail.staging = staging.backend;
    detail.stagingOk = staging.ok;
    return { ok: ok && staging.ok, backend: this.kind, detail };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.inFlight]);
    if (this.ownsStaging) await this.staging.close();
    this.client.destroy();
  }

  /**
   * The object this session published, whichever compression it has (the key depends on it), or null. An
   * object under the carve's key that another session wrote (an earlier carve with that id) does not count,
   * nor one without its SHA-256 in the metadata (an import not yet finished), unless `unfinished` is asked.
   */
  async findArchive(carveId: string, sessionId: string, unfinished = false): Promise<FoundArchive | null> {
    // Ids become part of a key: the same rule as for file names elsewhere, so no key outside the prefix's pattern.
    if (!isSafeId(carveId)) return null;
    const heads = await Promise.all(
      (["zstd", "none"] as const).map(async (compression) => {
        const key = this.key(carveId, compression);
        try {
          const out = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
          const meta = out.Metadata ?? {};
          const sha256 = meta[META_SHA256] ?? "";
          if (meta[META_SESSION] !== sessionId || out.ContentLength === undefined) return null;
          if (!sha256 && !unfinished) return null;
          return { key, versionId: out.VersionId, facts: { sha256, compression, size: out.ContentLength } };
        } catch (err) {
          if (isNotFound(err)) return null;
          throw unavailable(err);
        }
      }),
    );
    return heads.find((h) => h !== null) ?? null;
  }

  /**
   * Optional second lock on a held carve: when the bucket was created with S3 Object Lock, the object's legal hold
   * is set (`on`) or lifted, so that nobody with bucket credentials, and no lifecycle rule, can delete it meanwhile.
   * The catalog's hold stays the one the service obeys; on a bucket without Object Lock this changes nothing and
   * answers "not-enabled". A carve not yet published answers "no-object": set it again after its completion.
   * Deleting a carve does not lift it: lift it first.
   */
  setLegalHold(target: { carveId: string; sessionId: string }, on: boolean): Promise<LegalHoldOutcome> {
    return this.track(() =>
      applyLegalHold(
        this.client,
        this.bucket,
        this.objectLock,
        () => this.findArchive(target.carveId, target.sessionId),
        on,
      ),
    );
  }

  /** The client and bucket, for imports (s3-import.ts). */
  get s3(): { client: S3Client; bucket: string } {
    return { client: this.client, bucket: this.bucket };
  }

  /** Compares a block sent after publication with the object's bytes at its offset (one ranged GET). */
  private async compareBlock(
    session: Session,
    found: FoundArchive,
    blockId: number,
    data: Buffer,
  ): Promise<BlockWrite> {
    if (!Number.isInteger(blockId) || blockId < 0 || blockId >= session.blockCount)
      throw new AppError("BLOCK_OUT_OF_RANGE");
    if (data.length !== expectedBlockLength(session, blockId)) throw new AppError("BLOCK_LENGTH_MISMATCH");
    const start = blockOffset(session, blockId);
    let same = true;
    if (data.length > 0) {
      const reader = await this.read(
        { ...session, compression: found.facts.compression, size: found.facts.size },
        { start, end: start + data.length - 1 },
      );
      let at = 0;
      try {
        for await (const chunk of reader.stream as AsyncIterable<Buffer>) {
          if (at + chunk.length > data.length || !chunk.equals(data.subarray(at, at + chunk.length))) {
            same = false;
            break;
          }
          at += chunk.length;
        }
      } catch (err) {
        throw unavailable(err);
      } finally {
        reader.stream.destroy();
      }
      same &&= at === data.length;
    }
    if (!same) throw new AppError("BLOCK_CONFLICT");
    return { duplicate: true, allStored: true, published: true };
  }

  /** Key, metadata, content type and encryption of a carve's object. */
  objectParams(
    key: string,
    carveId: string,
    sessionId: string,
    facts: { compression: Compression; sha256?: string },
  ): ObjectParams {
    return {
      bucket: this.bucket,
      key,
      metadata: {
        [META_CARVE]: carveId,
        [META_SESSION]: sessionId,
        [META_COMPRESSION]: facts.compression,
        // An import learns its SHA-256 only at the end: importToS3 sets it before completing.
        ...(facts.sha256 ? { [META_SHA256]: facts.sha256 } : {}),
      },
      contentType: facts.compression === "zstd" ? "application/zstd" : "application/x-tar",
      sse: this.sse,
    };
  }

  /** Refuses work after close and lets close wait for what runs. */
  private track<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new AppError("STORAGE_UNAVAILABLE", "blob store closed"));
    const p = fn();
    this.inFlight.add(p);
    const done = (): void => void this.inFlight.delete(p);
    p.then(done, done);
    return p;
  }
}

/** Streams `source` into the writer, hashing on the way; returns the SHA-256 (hex). */
async function pump(source: Readable, writer: MultipartWriter): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of source as AsyncIterable<Buffer>) {
    hash.update(chunk);
    await writer.write(chunk);
  }
  return hash.digest("hex");
}

/**
 * The legal-hold hook for callers that hold any BlobStore: a store with Object Lock support (S3BlobStore) sets
 * or lifts the object's hold, any other answers "not-s3". See S3BlobStore.setLegalHold.
 */
export function setObjectLegalHold(
  blobs: BlobStore,
  target: { carveId: string; sessionId: string },
  on: boolean,
): Promise<LegalHoldOutcome> {
  const lockable = blobs as BlobStore & { setLegalHold?: (t: typeof target, on: boolean) => Promise<LegalHoldOutcome> };
  return typeof lockable.setLegalHold === "function" ? lockable.setLegalHold(target, on) : Promise.resolve("not-s3");
}
