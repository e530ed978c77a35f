/**
 * HTTP range requests (RFC 9110 section 14) for one representation of a known size: a single byte range is
 * served as 206; a multi-range request is served whole (200), which the RFC allows ("a server MAY ignore
 * the Range header field") and which every download tool handles; a syntactically invalid header or
 * another unit is ignored (200) as the RFC requires.
 */
export type RangeRequest =
  | { kind: "none" }
  | { kind: "range"; start: number; end: number }
  | { kind: "unsatisfiable" };

const SPEC = /^(\d{1,16})?-(\d{1,16})?$/;

/** @param size the representation's length in bytes */
export function parseRangeHeader(header: string | undefined, size: number): RangeRequest {
  if (header === undefined) return { kind: "none" };
  const eq = header.indexOf("=");
  if (eq === -1 || header.slice(0, eq).trim().toLowerCase() !== "bytes") return { kind: "none" };
  const specs = header
    .slice(eq + 1)
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  if (specs.length !== 1) return { kind: "none" };
  const m = SPEC.exec(specs[0] ?? "");
  if (!m) return { kind: "none" };
  const [, first, last] = m;
  if (first === undefined) {
    if (last === undefined) return { kind: "none" }; // "bytes=-"
    const suffix = Number(last);
    if (suffix === 0 || size === 0) return { kind: "unsatisfiable" };
    return { kind: "range", start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(first);
  if (last !== undefined && Number(last) < start) return { kind: "none" }; // invalid: ignored
  if (start >= size) return { kind: "unsatisfiable" };
  const end = last === undefined ? size - 1 : Math.min(Number(last), size - 1);
  return { kind: "range", start, end };
}

/**
 * Whether a Range may be honoured given If-Range: absent, the strong ETag itself, or the exact
 * Last-Modified date. Anything else (a weak or different ETag, another date) means "send everything".
 */
export function ifRangeAllows(ifRange: string | undefined, etag: string, lastModified: Date | null): boolean {
  if (ifRange === undefined) return true;
  const v = ifRange.trim();
  if (v.startsWith('"') || v.startsWith("W/")) return v === etag;
  const t = Date.parse(v);
  if (Number.isNaN(t) || lastModified === null) return false;
  return Math.floor(t / 1000) === Math.floor(lastModified.getTime() / 1000);
}
