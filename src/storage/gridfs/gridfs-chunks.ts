import { Readable } from "node:stream";
import { Binary, type Collection } from "mongodb";
import { AppError } from "../../errors.js";
import type { ByteRange } from "../model.js";

/** Every chunk is at most this many bytes (well under MongoDB's 16 MB document limit). */
export const MAX_CHUNK = 8 * 1024 * 1024;
/** Bytes of chunks fetched per query while streaming a download (two such batches in memory at most). */
const READ_BATCH_BYTES = 1024 * 1024;

export interface ChunkDoc {
  _id: string;
  files_id: string;
  n: number;
  data: Binary;
}

export interface FileDoc {
  _id: string;
  length: number;
  chunkSize: number;
  uploadDate: Date;
  filename: string;
  metadata: Record<string, unknown>;
}

export function isDuplicateKey(err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === 11000;
}

export function wrap(err: unknown, what: string): AppError {
  if (err instanceof AppError) return err;
  return new AppError("STORAGE_UNAVAILABLE", undefined, { cause: Object.assign(new Error(what), { cause: err }) });
}

export function bytesOf(bin: Binary): Buffer {
  const u8 = bin.buffer.subarray(0, bin.position);
  return Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}

export function chunkId(fileId: string, n: number): string {
  return `${fileId}/${n}`;
}

/**
 * Chunks per block: the smallest k dividing blockSize with blockSize / k <= MAX_CHUNK, or null. Block
 * boundaries then stay chunk boundaries, so a block is found (and compared) by key.
 */
export function chunksPerBlock(blockSize: number): number | null {
  for (let k = Math.ceil(blockSize / MAX_CHUNK); k <= 4096; k++) {
    if (blockSize % k === 0) return k;
  }
  return null;
}

/** The bytes of chunk `n` of a file of `length` bytes, checked present and of the size its place requires. */
export function checkedChunk(batch: Map<number, ChunkDoc>, n: number, fileId: string, chunkSize: number, length: number): Buffer {
  const totalChunks = Math.ceil(length / chunkSize);
  const expected = n < totalChunks - 1 ? chunkSize : length - (totalChunks - 1) * chunkSize;
  const doc = batch.get(n);
  if (!doc || doc.data.position !== expected) {
    throw new AppError("STORAGE_UNAVAILABLE", `chunk ${n} of ${fileId} is missing or has the wrong size`);
  }
  return bytesOf(doc.data);
}

/** Chunks from..to (inclusive) of a file, by _id, keyed by n (missing ones absent). */
export async function fetchChunks(chunks: Collection<ChunkDoc>, fileId: string, from: number, to: number): Promise<Map<number, ChunkDoc>> {
  const ids: string[] = [];
  for (let n = from; n <= to; n++) ids.push(chunkId(fileId, n));
  try {
    const docs = await chunks.find({ _id: { $in: ids } }).toArray();
    return new Map(docs.map((d) => [d.n, d]));
  } catch (err) {
    throw wrap(err, `read chunks of ${fileId}`);
  }
}

/**
 * A GridFS file's bytes (or an inclusive range), batch by batch, the next batch fetched while the current one
 * is sent. The driver's own download stream runs one find over every chunk and leaves batch sizes to the
 * server: a server that answers with every chunk at once (mongo-java-server does) made the service hold the
 * whole carve. Here memory is two batches whatever the server does, and every chunk is checked (present,
 * right size) before its bytes go out. The first batch is read now, so a storage failure is a clean error
 * before any header is sent, not a connection cut after a 200.
 */
export async function openChunkStream(chunks: Collection<ChunkDoc>, file: FileDoc, range?: ByteRange): Promise<Readable> {
  if (file.length === 0) return Readable.from([]);
  const { chunkSize, length } = file;
  const start = range?.start ?? 0;
  const end = range?.end ?? length - 1;
  const firstN = Math.floor(start / chunkSize);
  const lastN = Math.floor(end / chunkSize);
  const perBatch = Math.max(1, Math.floor(READ_BATCH_BYTES / chunkSize));
  const first = await fetchChunks(chunks, file._id, firstN, Math.min(firstN + perBatch - 1, lastN));
  checkedChunk(first, firstN, file._id, chunkSize, length);
  async function* read(): AsyncGenerator<Buffer> {
    let next: Promise<Map<number, ChunkDoc>> | null = Promise.resolve(first);
    try {
      for (let from = firstN; from <= lastN; from += perBatch) {
        const batch: Map<number, ChunkDoc> = await next!;
        const following = from + perBatch;
        next = following <= lastN ? fetchChunks(chunks, file._id, following, Math.min(following + perBatch - 1, lastN)) : null;
        // A rejected prefetch is awaited (and thrown) on the next turn; never left unhandled meanwhile.
        next?.catch(() => undefined);
        for (let n = from; n <= Math.min(following - 1, lastN); n++) {
          const bytes = checkedChunk(batch, n, file._id, chunkSize, length);
          const from0 = n === firstN ? start - n * chunkSize : 0;
          const to = n === lastN ? end - n * chunkSize + 1 : bytes.length;
          yield bytes.subarray(from0, to);
        }
      }
    } finally {
      next?.catch(() => undefined);
    }
  }
  return Readable.from(read(), { objectMode: false, highWaterMark: 64 * 1024 });
}
