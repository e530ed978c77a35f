/**
 * Pure facts about osquery's carve layout (docs: ../shared/docs/osquery-carver-protocol.md), shared by the
 * domain layer and every store. No I/O here.
 */

/** Identifiers that may become part of a file name or a database key: they never contain a path separator,
 * never start with a dot, and are short. osquery's carve_id and request_id are UUIDs; pre-4.7 request ids
 * are distributed query names, which fit too. */
export const SAFE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function isSafeId(value: string): boolean {
  return SAFE_ID.test(value);
}

export function blockCountFor(carveSize: number, blockSize: number): number {
  return Math.ceil(carveSize / blockSize);
}

/** Decoded length of block `blockId`: every block is full except the last. */
export function expectedBlockLength(
  geometry: { blockCount: number; blockSize: number; carveSize: number },
  blockId: number,
): number {
  if (blockId < geometry.blockCount - 1) return geometry.blockSize;
  return geometry.carveSize - (geometry.blockCount - 1) * geometry.blockSize;
}

export function blockOffset(geometry: { blockSize: number }, blockId: number): number {
  return blockId * geometry.blockSize;
}

/** zstd frame magic number, little-endian 0xFD2FB528 (RFC 8878 3.1.1). */
export const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

/** osquery does not announce compression: `--carver_compression` output is recognised by its first bytes. */
export function detectCompression(head: Buffer): "zstd" | "none" {
  return head.length >= 4 && head.subarray(0, 4).equals(ZSTD_MAGIC) ? "zstd" : "none";
}

/** File name extension of a stored archive. */
export function archiveExtension(compression: "zstd" | "none"): string {
  return compression === "zstd" ? ".tar.zst" : ".tar";
}
