import { AppError } from "../errors.js";

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/**
 * Decodes osquery's block data: standard base64 with padding and no line breaks. Node's decoder silently
 * skips invalid characters, so the text is checked first; then the decoded length must be what the carve's
 * geometry says for this block.
 * @throws AppError INVALID_BASE64, BLOCK_LENGTH_MISMATCH
 */
export function decodeBlockData(text: string, expectedLength: number): Buffer {
  if (text.length % 4 !== 0 || !BASE64.test(text)) throw new AppError("INVALID_BASE64");
  const padding = text.endsWith("==") ? 2 : text.endsWith("=") ? 1 : 0;
  const decodedLength = (text.length / 4) * 3 - padding;
  if (decodedLength !== expectedLength) {
    throw new AppError("BLOCK_LENGTH_MISMATCH", `expected ${expectedLength} bytes, got ${decodedLength}`);
  }
  const data = Buffer.from(text, "base64");
  if (data.length !== expectedLength) throw new AppError("INVALID_BASE64");
  return data;
}
