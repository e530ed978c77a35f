import { createHash } from "node:crypto";
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  UploadPartCopyCommand,
  type CompletedPart,
  type S3Client,
} from "@aws-sdk/client-s3";
import { detectCompression } from "../../carves/geometry.js";
import { AppError, isAppError } from "../../errors.js";
import { crashPoint } from "../../util/crash-point.js";
import type { ArchiveFacts, ImportLimits } from "../contracts.js";
import type { Compression } from "../model.js";
import { partSizeFor, type MultipartWriter, type ObjectParams } from "./multipart.js";
import { unavailable } from "./s3-errors.js";

/** What an import needs of the S3 blob store (an interface, so that the two modules do not import each other). */
export interface ImportHost {
  readonly s3: { client: S3Client; bucket: string };
  key(carveId: string, compression: Compression): string;
  writerFor(
    target: { carveId: string; sessionId: string },
    facts: { compression: Compression; sha256?: string },
    maxSize: number,
    onPart?: () => Promise<void>,
  ): MultipartWriter;
  objectParams(
    key: string,
    carveId: string,
    sessionId: string,
    facts: { compression: Compression; sha256?: string },
  ): ObjectParams;
  findArchive(carveId: string, sessionId: string): Promise<{ facts: ArchiveFacts } | null>;
}

/** CopyObject copies at most 5 GiB; larger objects are copied part by part on the server. */
const MAX_COPY_OBJECT = 5 * 1024 ** 3;
const COPY_PART_SIZE = 1024 ** 3;

/**
 * S3BlobStore.importArchive: the stream goes straight into one multipart upload (memory: two parts), hashed on
 * the way; nothing is kept unless the whole stream arrived within the limits. The object's metadata is fixed
 * when the upload is created, before the SHA-256 is known: with an expected SHA-256 it is written then (and a
 * mismatch aborts the upload), otherwise the finished object is copied onto itself on the server with it.
 * Until then it lacks the SHA-256 and counts as unfinished (findArchive), so a crash in between leaves nothing
 * that reads as published.
 */
export async function importToS3(
  store: ImportHost,
  target: { carveId: string; sessionId: string },
  data: AsyncIterable<Buffer>,
  limits: ImportLimits,
  heartbeat?: () => Promise<void>,
): Promise<ArchiveFacts> {
  const expected = limits.expectedSha256?.toLowerCase();
  const hash = createHash("sha256");
  const source = data[Symbol.asyncIterator]();
  let sourceDone = false;
  let writer: MultipartWriter | null = null;
  let completed: ObjectParams | null = null;
  let head: Buffer = Buffer.alloc(0);
  let compression: Compression = "none";
  let size = 0;

  const open = async (): Promise<MultipartWriter> => {
    compression = detectCompression(head);
    const w = store.writerFor(
      target,
      { compression, ...(expected ? { sha256: expected } : {}) },
      limits.maxBytes,
      heartbeat,
    );
    writer = w;
    await w.start();
    await w.write(head);
    head = Buffer.alloc(0);
    return w;
  };

  try {
    for (;;) {
      let next: IteratorResult<Buffer>;
      try {
        next = await source.next();
      } catch (err) {
        sourceDone = true;
        throw isAppError(err) ? err : new AppError("IMPORT_ABORTED", undefined, { cause: err });
      }
      if (next.done) {
        sourceDone = true;
        break;
      }
      const chunk = Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value);
      if (chunk.length === 0) continue;
      size += chunk.length;
      if (size > limits.maxBytes) throw new AppError("IMPORT_TOO_LARGE");
      hash.update(chunk);
      if (writer) {
        await (writer as MultipartWriter).write(chunk);
        continue;
      }
      // The key says .tar or .tar.zst: the upload is created once the first 4 bytes tell which.
      head = Buffer.concat([head, chunk]);
      if (head.length >= 4) {
        await open();
        crashPoint("import.mid-stream");
      }
    }
    if (size === 0) throw new AppError("IMPORT_EMPTY");
    const w: MultipartWriter = writer ?? (await open());
    const sha256 = hash.digest("hex");
    if (expected && sha256 !== expected) throw new AppError("IMPORT_HASH_MISMATCH");
    await heartbeat?.();
    crashPoint("import.before-publish");
    const facts: ArchiveFacts = { sha256, compression, size };
    await w.complete();
    const params = store.objectParams(
      store.key(target.carveId, facts.compression),
      target.carveId,
      target.sessionId,
      facts,
    );
    completed = params;
    if (!expected) await rewriteMetadata(store.s3.client, params, size);
    const confirmed = await store.findArchive(target.carveId, target.sessionId);
    if (!confirmed || confirmed.facts.sha256 !== sha256 || confirmed.facts.size !== size) {
      throw new Error(
        `imported object ${params.key} not confirmed (HEAD: ${JSON.stringify(confirmed?.facts ?? null)})`,
      );
    }
    return facts;
  } catch (err) {
    if (writer) await (writer as MultipartWriter).abort();
    if (!sourceDone) await source.return?.().catch(() => undefined);
    if (completed) {
      // The object exists but is not confirmed: remove it, nothing of a failed import is kept.
      const { bucket, key } = completed;
      await store.s3.client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key })).catch(() => undefined);
    }
    throw unavailable(err);
  }
}

/** Copies an object onto itself on the server with new metadata (S3 cannot change metadata otherwise). */
async function rewriteMetadata(client: S3Client, params: ObjectParams, size: number): Promise<void> {
  const { bucket, key, metadata, contentType, sse } = params;
  const copySource = `${bucket}/${encodeURIComponent(key).replace(/%2F/g, "/")}`;
  const encryption = sse
    ? { ServerSideEncryption: sse.mode, ...(sse.kmsKeyId ? { SSEKMSKeyId: sse.kmsKeyId } : {}) }
    : {};
  if (size <= MAX_COPY_OBJECT) {
    await client.send(
      new CopyObjectCommand({
        Bucket: bucket,
        Key: key,
        CopySource: copySource,
        MetadataDirective: "REPLACE",
        Metadata: metadata,
        ContentType: contentType,
        ...encryption,
      }),
    );
    return;
  }
  const created = await client.send(
    new CreateMultipartUploadCommand({
      Bucket: bucket,
      Key: key,
      Metadata: metadata,
      ContentType: contentType,
      ...encryption,
    }),
  );
  const uploadId = created.UploadId;
  if (!uploadId) throw new Error("CreateMultipartUpload returned no UploadId");
  try {
    const partSize = partSizeFor(COPY_PART_SIZE, size);
    const parts: CompletedPart[] = [];
    for (let start = 0, n = 1; start < size; start += partSize, n += 1) {
      const end = Math.min(start + partSize, size) - 1;
      const out = await client.send(
        new UploadPartCopyCommand({
          Bucket: bucket,
          Key: key,
          UploadId: uploadId,
          PartNumber: n,
          CopySource: copySource,
          CopySourceRange: `bytes=${start}-${end}`,
        }),
      );
      parts.push({ PartNumber: n, ETag: out.CopyPartResult?.ETag });
    }
    await client.send(
      new CompleteMultipartUploadCommand({
        Bucket: bucket,
        Key: key,
        UploadId: uploadId,
        MultipartUpload: { Parts: parts },
      }),
    );
  } catch (err) {
    await client
      .send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId }))
      .catch(() => undefined);
    throw err;
  }
}
