import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { decodeBlockData } from "../../src/carves/base64.js";
import { AppError } from "../../src/errors.js";

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    return err instanceof AppError ? err.code : String(err);
  }
}

describe("decodeBlockData", () => {
  it("decodes standard padded base64 of every tail length", () => {
    for (const n of [1, 2, 3, 4, 1000, 8192, 1024 * 1024]) {
      const bytes = randomBytes(n);
      expect(decodeBlockData(bytes.toString("base64"), n).equals(bytes)).toBe(true);
    }
  });

  it.each([
    ["a space inside", "YWJj ZA=", 5],
    ["a line break", "YWJj\nZA==", 4],
    ["a misplaced pad", "YW=jZA==", 4],
    ["pad in the middle", "YQ==YQ==", 4],
    ["url-safe alphabet", "YW-_ZA==", 4],
    ["a foreign character", "YW*jZA==", 4],
    ["non-ASCII", "YWJj\u00e9A==", 4],
    ["missing padding", "YWJjZA", 4],
    ["three pads", "YW===", 1],
    ["a character Node reads by its low byte", "\u0141AAA", 3],
    ["non-canonical trailing bits", "YWJjZB==", 4],
  ])("refuses %s as INVALID_BASE64", (_label, text, expected) => {
    expect(codeOf(() => decodeBlockData(text, expected))).toBe("INVALID_BASE64");
  });

  it("tells a well-formed block of the wrong size apart", () => {
    expect(codeOf(() => decodeBlockData(Buffer.alloc(10).toString("base64"), 11))).toBe("BLOCK_LENGTH_MISMATCH");
    expect(codeOf(() => decodeBlockData("", 1))).toBe("BLOCK_LENGTH_MISMATCH");
  });
});
