import { AppError } from "../errors.js";

/**
 * Decodes osquery's block data: standard base64 with padding and no line breaks.
 *
 * Node's decoder is lenient: it skips whitespace, stops at a misplaced "=", accepts the URL-safe alphabet
 * and reads only the low byte of a character (U+0141 decodes as "A"). So the text is valid exactly when
 * re-encoding the decoded bytes gives it back: one decode, one encode and a compare, native and linear (a
 * regular expression over a 1.4 MB string was the service's hottest function). Osquery's encoder is
 * canonical, so this refuses nothing it sends.
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
  if (data.length !== expectedLength || data.toString("base64") !== text) throw new AppError("INVALID_BASE64");
  return data;
}
