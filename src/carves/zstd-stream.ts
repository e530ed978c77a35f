import { Decompress } from "fzstd";
import { ZSTD_MAGIC } from "./geometry.js";

/** zstd's own default limit for decoding without explicit permission (ZSTD_WINDOWLOG_LIMIT_DEFAULT = 27). */
export const MAX_WINDOW_BYTES = 128 * 1024 * 1024;

/**
 * Input is handed to the decoder in slices this small, and their output is yielded before the next slice is
 * decoded. A zstd RLE block turns 4 bytes into up to 128 KiB, so one slice yields at most ~16 MiB however
 * hostile the data: memory stays bounded and the consumer's backpressure holds.
 */
const SLICE = 512;

export class ZstdFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ZstdFormatError";
  }
}

/**
 * Window size a frame header announces, or null when the header is not complete yet (RFC 8878 3.1.1.1).
 * @throws ZstdFormatError for anything that is not a zstd frame.
 */
function announcedWindow(head: Buffer): number | null {
  if (head.length < 6) return null;
  if (!head.subarray(0, 4).equals(ZSTD_MAGIC)) throw new ZstdFormatError("not a zstd frame");
  const descriptor = head[4] ?? 0;
  const singleSegment = (descriptor >> 5) & 1;
  if (!singleSegment) {
    const wd = head[5] ?? 0;
    const base = 2 ** (10 + (wd >> 3));
    return base + (base / 8) * (wd & 7);
  }
  // Single segment: the window is the content size, which follows the (optional) dictionary id.
  const dictBytes = [0, 1, 2, 4][descriptor & 3] ?? 0;
  const sizeBytes = [1, 2, 4, 8][descriptor >> 6] ?? 1;
  const at = 5 + dictBytes;
  if (head.length < at + sizeBytes) return null;
  let size = 0;
  for (let i = sizeBytes - 1; i >= 0; i--) size = size * 256 + (head[at + i] ?? 0);
  return sizeBytes === 2 ? size + 256 : size;
}

/**
 * Decompresses a zstd stream (one or more frames; osquery writes one frame without a content size and
 * without a checksum) with the pure-JS fzstd decoder, pulling input only as fast as output is consumed.
 * Usable as a `stream.pipeline` stage.
 * @throws ZstdFormatError when the data is not zstd, is damaged or truncated, or its first frame asks for a
 *   window larger than MAX_WINDOW_BYTES.
 */
export async function* zstdDecompress(source: AsyncIterable<Buffer | Uint8Array>): AsyncGenerator<Buffer> {
  let out: Buffer[] = [];
  const decoder = new Decompress((chunk) => {
    if (chunk.length > 0) out.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
  });
  let head: Buffer | null = Buffer.alloc(0); // until the first frame's window is known
  const push = (slice: Uint8Array, final: boolean): void => {
    try {
      decoder.push(slice, final);
    } catch (err) {
      throw new ZstdFormatError(`damaged zstd data: ${(err as Error).message}`);
    }
  };
  for await (const input of source) {
    let chunk = Buffer.isBuffer(input) ? input : Buffer.from(input.buffer, input.byteOffset, input.byteLength);
    if (head !== null) {
      head = Buffer.concat([head, chunk]);
      const window = announcedWindow(head);
      if (window === null) continue;
      if (window > MAX_WINDOW_BYTES) throw new ZstdFormatError(`zstd window of ${window} bytes is over the ${MAX_WINDOW_BYTES} limit`);
      chunk = head;
      head = null;
    }
    for (let off = 0; off < chunk.length; off += SLICE) {
      push(chunk.subarray(off, Math.min(off + SLICE, chunk.length)), false);
      if (out.length > 0) {
        const ready = out;
        out = [];
        yield* ready;
      }
    }
  }
  if (head !== null) {
    if (head.length === 0) throw new ZstdFormatError("empty input is not a zstd stream");
    announcedWindow(head); // throws when the magic is wrong
    push(head, false);
  }
  push(new Uint8Array(0), true);
  yield* out;
}
