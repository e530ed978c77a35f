import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  ListMultipartUploadsCommand,
  UploadPartCommand,
  type CompletedPart,
  type S3Client,
  type ServerSideEncryption,
} from "@aws-sdk/client-s3";

/** S3 refuses parts under 5 MiB (except the last) and more than 10,000 parts per upload. */
export const MIN_PART_SIZE = 5 * 1024 * 1024;
export const MAX_PARTS = 10_000;
const MIB = 1024 * 1024;

/**
 * The part size for an object of at most `maxSize` bytes: the configured size, raised (to whole MiB) when
 * 10,000 parts of it would not hold the object. A 4 GiB carve fits in 8 MiB parts; a 1 TiB one needs ~105 MiB.
 */
export function partSizeFor(configured: number, maxSize: number): number {
  const needed = Math.ceil(Math.ceil(maxSize / MAX_PARTS) / MIB) * MIB;
  return Math.max(configured, needed, MIN_PART_SIZE);
}

export interface ObjectParams {
  bucket: string;
  key: string;
  metadata: Record<string, string>;
  contentType: string;
  sse?: { mode: ServerSideEncryption; kmsKeyId?: string } | undefined;
}

/**
 * One multipart upload fed sequentially. Memory: two part buffers (one filling while the other is sent), so a
 * completion holds 2 x partSize whatever the archive's size. Nothing becomes visible before `complete()`; on
 * any failure the caller calls `abort()`, which removes the uploaded parts.
 */
export class MultipartWriter {
  private uploadId: string | null = null;
  private readonly parts: CompletedPart[] = [];
  private buffers: [Buffer, Buffer];
  private filled = 0;
  private inFlight: Promise<void> | null = null;
  private failed: Error | null = null;
  private bytes = 0;

  constructor(
    private readonly client: S3Client,
    private readonly params: ObjectParams,
    private readonly partSize: number,
    /** Called after each part is sent (the completion's heartbeat); throwing abandons the upload. */
    private readonly onPart?: () => Promise<void>,
  ) {
    this.buffers = [Buffer.allocUnsafe(partSize), Buffer.allocUnsafe(partSize)];
  }

  get size(): number {
    return this.bytes;
  }

  async start(): Promise<void> {
    const { bucket, key, metadata, contentType, sse } = this.params;
    const out = await this.client.send(
      new CreateMultipartUploadCommand({
        Bucket: bucket,
        Key: key,
        Metadata: metadata,
        ContentType: contentType,
        ...(sse ? { ServerSideEncryption: sse.mode, ...(sse.kmsKeyId ? { SSEKMSKeyId: sse.kmsKeyId } : {}) } : {}),
      }),
    );
    if (!out.UploadId) throw new Error("CreateMultipartUpload returned no UploadId");
    this.uploadId = out.UploadId;
  }

  async write(chunk: Buffer): Promise<void> {
    let offset = 0;
    while (offset < chunk.length) {
      const current = this.buffers[0];
      const n = Math.min(chunk.length - offset, this.partSize - this.filled);
      chunk.copy(current, this.filled, offset, offset + n);
      this.filled += n;
      offset += n;
      this.bytes += n;
      if (this.filled === this.partSize) await this.flush();
    }
  }

  /** Sends the filled buffer as the next part once the previous part has been sent. */
  private async flush(): Promise<void> {
    await this.settle();
    const body = this.buffers[0].subarray(0, this.filled);
    this.buffers = [this.buffers[1], this.buffers[0]];
    this.filled = 0;
    const partNumber = this.parts.length + 1;
    if (partNumber > MAX_PARTS) throw new Error(`more than ${MAX_PARTS} parts of ${this.partSize} bytes`);
    const slot: CompletedPart = { PartNumber: partNumber };
    this.parts.push(slot);
    this.inFlight = this.client
      .send(
        new UploadPartCommand({
          Bucket: this.params.bucket,
          Key: this.params.key,
          UploadId: this.uploadId ?? undefined,
          PartNumber: partNumber,
          Body: body,
          ContentLength: body.length,
        }),
      )
      .then(async (out) => {
        if (!out.ETag) throw new Error(`UploadPart ${partNumber} returned no ETag`);
        slot.ETag = out.ETag;
        await this.onPart?.();
      })
      .catch((err: unknown) => {
        this.failed ??= err instanceof Error ? err : new Error("UploadPart failed", { cause: err });
      });
  }

  private async settle(): Promise<void> {
    if (this.inFlight) await this.inFlight;
    this.inFlight = null;
    if (this.failed) throw this.failed;
  }

  /** Sends what is left and makes the object visible, whole. */
  async complete(): Promise<void> {
    if (this.filled > 0 || this.parts.length === 0) await this.flush();
    await this.settle();
    await this.client.send(
      new CompleteMultipartUploadCommand({
        Bucket: this.params.bucket,
        Key: this.params.key,
        UploadId: this.uploadId ?? undefined,
        MultipartUpload: { Parts: this.parts },
      }),
    );
    this.uploadId = null;
  }

  /** Drops the upload and its parts; never throws (the caller is already failing). */
  async abort(): Promise<void> {
    const uploadId = this.uploadId;
    this.uploadId = null;
    if (this.inFlight) await this.inFlight;
    if (!uploadId) return;
    await this.client
      .send(new AbortMultipartUploadCommand({ Bucket: this.params.bucket, Key: this.params.key, UploadId: uploadId }))
      .catch(() => undefined);
  }
}

/**
 * Aborts every unfinished multipart upload of exactly `key`: parts left by a process that died in the middle of
 * a completion or an import cost storage until removed. The caller holds the carve's claim, so none of them can
 * still be in use.
 */
export async function abortUploadsOf(client: S3Client, bucket: string, key: string): Promise<number> {
  let aborted = 0;
  let keyMarker: string | undefined;
  let uploadIdMarker: string | undefined;
  for (;;) {
    const page = await client.send(
      new ListMultipartUploadsCommand({
        Bucket: bucket,
        Prefix: key,
        ...(keyMarker ? { KeyMarker: keyMarker } : {}),
        ...(uploadIdMarker ? { UploadIdMarker: uploadIdMarker } : {}),
      }),
    );
    for (const upload of page.Uploads ?? []) {
      if (upload.Key !== key || !upload.UploadId) continue;
      await client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: upload.UploadId }));
      aborted += 1;
    }
    if (!page.IsTruncated) return aborted;
    keyMarker = page.NextKeyMarker;
    uploadIdMarker = page.NextUploadIdMarker;
    if (!keyMarker && !uploadIdMarker) return aborted;
  }
}
