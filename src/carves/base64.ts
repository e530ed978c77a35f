import { AppError } from "../errors.js";

/**
 * Decodes osquery's block data: standard base64 with padding and no line breaks.
 *
 * Node's decoder is lenient: it skips whitespace, stops at a misplaced "=" and also accepts the URL-safe
 * alphabet. So the text is valid exactly when it has no "-" or "_" and decodes to the full length its size
 * announces (any skipped or stopping character makes the output shorter). This costs two memchr-like scans
 * and the decode itself; a regular expression over a 1.4 MB string was the service's hottest function.
 * @throws AppError INVALID_BASE64, BLOCK_LENGTH_MISMATCH (well-formed base64 of another length)
 */
export function decodeBlockData(text: string, expectedLength: number): Buffer {
  if (text.length % 4 !== 0 || text.includes("-") || text.includes("_")) throw new AppError("INVALID_BASE64");
  const padding = text.endsWith("==") ? 2 : text.endsWith("=") ? 1 : 0;
  const announced = (text.length / 4) * 3 - padding;
  if (announced !== expectedLength) {
    throw new AppError("BLOCK_LENGTH_MISMATCH", `expected ${expectedLength} bytes, got ${announced}`);
  }
  const data = Buffer.from(text, "base64");
  if (data.length !== expectedLength) throw new AppError("INVALID_BASE64");
  return data;
}
