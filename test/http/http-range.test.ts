import { describe, expect, it } from "vitest";
import { ifRangeAllows, parseRangeHeader } from "../../src/http/http-range.js";

describe("HTTP Range parsing", () => {
  it("resolves single byte ranges against the size", () => {
    expect(parseRangeHeader(undefined, 100)).toEqual({ kind: "none" });
    expect(parseRangeHeader("bytes=0-0", 100)).toEqual({ kind: "range", start: 0, end: 0 });
    expect(parseRangeHeader("bytes=99-99", 100)).toEqual({ kind: "range", start: 99, end: 99 });
    expect(parseRangeHeader("bytes=10-", 100)).toEqual({ kind: "range", start: 10, end: 99 });
    expect(parseRangeHeader("bytes=-10", 100)).toEqual({ kind: "range", start: 90, end: 99 });
    expect(parseRangeHeader("bytes=-1000", 100)).toEqual({ kind: "range", start: 0, end: 99 });
    expect(parseRangeHeader("bytes=50-5000", 100)).toEqual({ kind: "range", start: 50, end: 99 });
    expect(parseRangeHeader("Bytes = 1-2 ", 100)).toEqual({ kind: "range", start: 1, end: 2 });
  });

  it("flags unsatisfiable ranges and ignores invalid, multiple or foreign ones", () => {
    expect(parseRangeHeader("bytes=100-", 100)).toEqual({ kind: "unsatisfiable" });
    expect(parseRangeHeader("bytes=100-200", 100)).toEqual({ kind: "unsatisfiable" });
    expect(parseRangeHeader("bytes=-0", 100)).toEqual({ kind: "unsatisfiable" });
    expect(parseRangeHeader("bytes=0-", 0)).toEqual({ kind: "unsatisfiable" });
    for (const h of ["bytes=5-1", "bytes=-", "bytes=a-b", "items=0-1", "bytes=0-1,3-4", "bytes", "bytes=1.5-2", "bytes=99999999999999999-"]) {
      expect(parseRangeHeader(h, 100), h).toEqual({ kind: "none" });
    }
  });

  it("honours If-Range only for the same strong ETag or the exact Last-Modified", () => {
    const lm = new Date("2024-05-01T10:00:00.700Z");
    expect(ifRangeAllows(undefined, '"abc"', lm)).toBe(true);
    expect(ifRangeAllows('"abc"', '"abc"', lm)).toBe(true);
    expect(ifRangeAllows('W/"abc"', '"abc"', lm)).toBe(false);
    expect(ifRangeAllows('"abd"', '"abc"', lm)).toBe(false);
    expect(ifRangeAllows(lm.toUTCString(), '"abc"', lm)).toBe(true);
    expect(ifRangeAllows("Wed, 01 May 2024 10:00:01 GMT", '"abc"', lm)).toBe(false);
    expect(ifRangeAllows("garbage", '"abc"', lm)).toBe(false);
  });
});
