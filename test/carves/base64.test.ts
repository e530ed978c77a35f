import { randomBytes } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { decodeBase64InPlace, decodeBlockData } from "../../src/carves/base64.js";
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

describe("decodeBase64InPlace", () => {
  it("decodes into the same memory, for every tail length, and agrees with Node's decoder", () => {
    for (const n of [0, 1, 2, 3, 4, 5, 6, 1000, 8192, 1024 * 1024 + 1]) {
      const bytes = randomBytes(n);
      const text = Buffer.from(bytes.toString("base64"), "latin1");
      const out = decodeBase64InPlace(text, n);
      expect(out.equals(bytes)).toBe(true);
      expect(out.buffer).toBe(text.buffer);
      expect(out.byteOffset).toBe(text.byteOffset);
    }
  });

  it("decodes a view in the middle of a larger buffer without touching what lies around it", () => {
    const bytes = randomBytes(300);
    const body = Buffer.from(`{"data":"${bytes.toString("base64")}"}`, "latin1");
    const copy = Buffer.from(body);
    const start = body.indexOf(':"') + 2;
    const out = decodeBase64InPlace(body.subarray(start, body.length - 2), 300);
    expect(out.equals(bytes)).toBe(true);
    expect(body.subarray(0, start).equals(copy.subarray(0, start))).toBe(true);
    expect(body.subarray(body.length - 2).equals(copy.subarray(copy.length - 2))).toBe(true);
  });

  it.each([
    ["a space inside", "YWJj ZA=", 5, "INVALID_BASE64"],
    ["url-safe alphabet", "YW-_ZA==", 4, "INVALID_BASE64"],
    ["a byte >= 0x80", "YWJj\u00e9A=", 5, "INVALID_BASE64"],
    ["pad in the middle", "YQ==YQ==", 4, "INVALID_BASE64"],
    ["non-canonical trailing bits (one pad)", "YWJjZGV=", 5, "INVALID_BASE64"],
    ["non-canonical trailing bits (two pads)", "YWJjZB==", 4, "INVALID_BASE64"],
    ["an invalid byte in the last full group", "YWJjZGV*", 6, "INVALID_BASE64"],
    ["well-formed of another length", "YWJjZGVm", 5, "BLOCK_LENGTH_MISMATCH"],
    ["not base64 and of another length", "YW-_ZGVm", 5, "INVALID_BASE64"],
  ])("refuses %s", (_label, text, expected, code) => {
    expect(codeOf(() => decodeBase64InPlace(Buffer.from(text, "latin1"), expected))).toBe(code);
  });
});

describe("decodeBase64InPlace, property-based", () => {
  it("decodes whatever Node encodes, at any length and offset", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat(7), (bytes, offset) => {
        const text = Buffer.from(Buffer.from(bytes).toString("base64"), "latin1");
        const host = Buffer.alloc(offset + text.length);
        text.copy(host, offset);
        expect(decodeBase64InPlace(host.subarray(offset), bytes.length).equals(Buffer.from(bytes))).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });

  it("refuses any one character outside the alphabet, wherever it is", () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 1, maxLength: 200 }),
        fc.nat(),
        // "=" is left out: at the end it makes well-formed base64 of another length (BLOCK_LENGTH_MISMATCH,
        // covered by the examples above).
        fc.integer({ min: 0, max: 255 }).filter((c) => !/[A-Za-z0-9+/=]/.test(String.fromCharCode(c))),
        (bytes, at, bad) => {
          const text = Buffer.from(Buffer.from(bytes).toString("base64"), "latin1");
          const unpadded = text.length - (text.at(-1) === 0x3d ? (text.at(-2) === 0x3d ? 2 : 1) : 0);
          text[at % unpadded] = bad;
          expect(codeOf(() => decodeBase64InPlace(text, bytes.length))).toBe("INVALID_BASE64");
        },
      ),
      { numRuns: 2000 },
    );
  });

  it("refuses a foreign byte, a pad or a URL-safe byte in any 64 KiB slice of a large block, and decodes the rest", () => {
    // The decoder works on slices of the text (src/carves/base64.ts): every slice must be held to the rules.
    const block = randomBytes(300_000 + 2); // a padded tail, 6 slices
    const good = Buffer.from(block.toString("base64"), "latin1");
    expect(decodeBase64InPlace(Buffer.from(good), block.length).equals(block)).toBe(true);
    fc.assert(
      fc.property(fc.nat({ max: good.length - 3 }), fc.constantFrom(0x20, 0x0a, 0x2a, 0xe9, 0x3d, 0x2d, 0x5f, 0x00), (at, bad) => {
        const text = Buffer.from(good);
        text[at] = bad;
        expect(codeOf(() => decodeBase64InPlace(text, block.length))).toBe("INVALID_BASE64");
      }),
      { numRuns: 300 },
    );
  });
});
