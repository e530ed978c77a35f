import { createHash } from "node:crypto";

/**
 * Lists the members of a tar stream without extracting or buffering it: headers are parsed as they come,
 * each member's content only flows through a SHA-256. Reads what osquery writes (pax 'x' headers with
 * path/size/mtime overrides, ustar prefix+name, 5.5+ names `/tmp/osquery_carve_<guid>/<original path>`,
 * older base-name-only members) and what GNU tar writes (long names 'L'/'K', base-256 numbers).
 */

const BLOCK = 512;

export type TarMemberType = "file" | "directory" | "symlink" | "hardlink" | "other";

export interface TarMember {
  /** The member name as stored (after pax / GNU long-name overrides). */
  name: string;
  /**
   * The file's path on the host: for osquery 5.5+ names (`<tmp>/osquery_carve_<guid>/etc/hosts` ->
   * `/etc/hosts`). null when the archive does not record it (osquery before 5.5 stored the base name only).
   */
  path: string | null;
  type: TarMemberType;
  /** The raw tar typeflag ("0", "5", "2", ...). */
  typeflag: string;
  size: number;
  /** Permission bits in octal, e.g. "0644". */
  mode: string;
  uid: number;
  gid: number;
  uname: string | null;
  gname: string | null;
  /** Modification time, ISO 8601 (pax sub-second precision down to milliseconds). */
  mtime: string;
  linkTarget: string | null;
  /** SHA-256 (hex) of the member's content; null for anything but regular files. */
  sha256: string | null;
}

/** Why a listing stopped before the end of the archive. */
export type TruncatedReason = "max-members" | "max-bytes-examined" | "max-name-bytes" | "extended-header-too-large" | "too-many-pax-keys";

export interface ListingLimits {
  /** Members listed at most. */
  maxMembers: number;
  /** Bytes of tar stream (decompressed) read at most: a 135 KB zstd can expand to 4 GiB. Default 8 GiB. */
  maxBytesExamined?: number;
  /** Bytes of member names and link targets listed at most, all members together (bounds the reply). */
  maxNameBytes?: number;
}

export const DEFAULT_MAX_BYTES_EXAMINED = 8 * 1024 ** 3;
export const DEFAULT_MAX_NAME_BYTES = 16 * 1024 * 1024;

/** Largest pax / GNU long-name header read (PATH_MAX is 4096; one member's whole pax record set fits). */
export const MAX_EXTENDED_HEADER = 64 * 1024;
/** Distinct keys a global pax header set may hold (osquery writes none; 88k keys once cost minutes). */
export const MAX_GLOBAL_PAX_KEYS = 256;

export interface TarListing {
  members: TarMember[];
  /** The list stopped before the archive's end at a bound (`truncatedReason` says which); reading stopped too. */
  truncated: boolean;
  truncatedReason: TruncatedReason | null;
  /** The archive ended with its end-of-archive zero block (false: it just stopped at a member boundary). */
  endMarker: boolean;
}

/** Receives a member's content chunk by chunk; a returned promise is awaited before the next chunk. */
export type ContentSink = (chunk: Buffer) => void | Promise<void>;

/** A member as its headers describe it, before its content is read. */
export interface TarEntry extends Omit<TarMember, "sha256"> {
  /** Position among the members (extended headers not counted): the index in the files listing. */
  index: number;
  /** Bytes of content that follow the header (0 for directories). */
  dataSize: number;
}

/**
 * Called for each member in archive order. `readContent` passes its content to a sink (once at most);
 * content not read is skipped. Returning "stop" ends the walk after this member.
 */
export type TarVisitor = (entry: TarEntry, readContent: (sink: ContentSink) => Promise<void>) => Promise<"stop" | void>;

/** How a walk ended. */
export interface TarWalk {
  /** Members visited. */
  count: number;
  /** The walk stopped before the archive's end at a bound (`truncatedReason` says which). */
  truncated: boolean;
  truncatedReason: TruncatedReason | null;
  /** The archive ended with its end-of-archive zero block. */
  endMarker: boolean;
  /** The visitor asked to stop. */
  stopped: boolean;
}

export class TarFormatError extends Error {
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(message);
    this.name = "TarFormatError";
  }
}

/** Work done between two yields to the event loop: listing a hostile archive must not stall other requests. */
const SLICE_MS = 10;

/** Lets the event loop run other requests when this listing has had the thread for SLICE_MS. */
export class Slicer {
  private since = performance.now();
  async maybeYield(): Promise<void> {
    if (performance.now() - this.since < SLICE_MS) return;
    await new Promise<void>((resolve) => setImmediate(resolve));
    this.since = performance.now();
  }
}

/** Pulls exact byte counts out of an async iterable of chunks, holding at most one chunk. */
class ByteReader {
  private pending: Buffer = Buffer.alloc(0);
  private ended = false;
  offset = 0;

  constructor(
    private readonly it: AsyncIterator<Buffer | Uint8Array>,
    private readonly slicer: Slicer,
  ) {}

  private async more(): Promise<boolean> {
    if (this.ended) return false;
    await this.slicer.maybeYield();
    const next = await this.it.next();
    if (next.done) {
      this.ended = true;
      return false;
    }
    const v = next.value;
    const chunk = Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength);
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    return true;
  }

  /** Exactly n bytes; null at a clean end (no byte left); throws when the stream ends inside them. */
  async read(n: number): Promise<Buffer | null> {
    while (this.pending.length < n) {
      if (!(await this.more())) {
        if (this.pending.length === 0) return null;
        throw new TarFormatError("archive ends in the middle of a header", this.offset + this.pending.length);
      }
    }
    const out = this.pending.subarray(0, n);
    this.pending = this.pending.subarray(n);
    this.offset += n;
    return out;
  }

  /**
   * Passes the next n bytes to `sink` chunk by chunk, waiting for it when it returns a promise (a response
   * or a file being written: backpressure). @throws TarFormatError when the stream ends first.
   */
  async consume(n: number, sink?: ContentSink): Promise<void> {
    let left = n;
    while (left > 0) {
      if (this.pending.length === 0 && !(await this.more())) {
        throw new TarFormatError("archive ends in the middle of a member's content", this.offset);
      }
      const take = Math.min(left, this.pending.length);
      const chunk = this.pending.subarray(0, take);
      this.pending = this.pending.subarray(take);
      this.offset += take;
      left -= take;
      const wait = sink?.(chunk);
      if (wait) await wait;
    }
  }
}

function cString(field: Buffer): string {
  const nul = field.indexOf(0);
  return (nul === -1 ? field : field.subarray(0, nul)).toString("utf8");
}

/** An octal number field, or GNU base-256 when the high bit of the first byte is set. */
function numberField(field: Buffer, what: string, offset: number): number {
  const first = field[0] ?? 0;
  if (first & 0x80) {
    if (first === 0xff) throw new TarFormatError(`negative ${what} in tar header`, offset);
    let n = first & 0x7f;
    for (let i = 1; i < field.length; i++) n = n * 256 + (field[i] ?? 0);
    if (!Number.isSafeInteger(n)) throw new TarFormatError(`${what} too large in tar header`, offset);
    return n;
  }
  const text = field.toString("latin1").replace(/[\0 ]+$/, "").replace(/^ +/, "");
  if (text === "") return 0;
  if (!/^[0-7]+$/.test(text)) throw new TarFormatError(`bad ${what} field in tar header`, offset);
  return Number.parseInt(text, 8);
}

function checksumMatches(header: Buffer, offset: number): boolean {
  let stored: number;
  try {
    stored = numberField(header.subarray(148, 156), "checksum", offset);
  } catch {
    return false;
  }
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : (header[i] ?? 0);
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  return stored === unsigned || stored === signed;
}

/** "<length> <key>=<value>\n" records. */
function parsePax(data: Buffer, offset: number): Map<string, string> {
  const records = new Map<string, string>();
  let at = 0;
  while (at < data.length) {
    if (data[at] === 0) break; // NUL padding
    const space = data.indexOf(0x20, at);
    const lenText = space === -1 ? "" : data.subarray(at, space).toString("latin1");
    if (!/^\d{1,12}$/.test(lenText)) throw new TarFormatError("bad pax record", offset);
    const len = Number(lenText);
    const end = at + len;
    if (len <= lenText.length + 1 || end > data.length || data[end - 1] !== 0x0a) throw new TarFormatError("bad pax record", offset);
    const record = data.subarray(space + 1, end - 1).toString("utf8");
    const eq = record.indexOf("=");
    if (eq <= 0) throw new TarFormatError("bad pax record", offset);
    const key = record.slice(0, eq);
    const value = record.slice(eq + 1);
    // An empty value deletes the keyword (POSIX pax).
    if (value === "") records.delete(key);
    else records.set(key, value);
    at = end;
  }
  return records;
}

function paxNumber(v: string | undefined, key: string, offset: number): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d{1,16}$/.test(v)) throw new TarFormatError(`bad pax ${key}`, offset);
  return Number(v);
}

function paxTimeMs(v: string | undefined, key: string, offset: number): number | undefined {
  if (v === undefined) return undefined;
  if (!/^-?\d{1,16}(\.\d{0,9})?$/.test(v)) throw new TarFormatError(`bad pax ${key}`, offset);
  return Math.round(Number(v) * 1000);
}

const CARVE_DIR_PREFIX = "osquery_carve_";

/**
 * `[<dir>/]osquery_carve_<guid>/<rest>` -> `/<rest>`: the first such directory is osquery's temp copy of the
 * host's `/`. One pass over the name (a backtracking regex was quadratic on crafted names).
 */
export function originalPathOf(name: string): string | null {
  for (let at = name.indexOf(CARVE_DIR_PREFIX); at !== -1; at = name.indexOf(CARVE_DIR_PREFIX, at + 1)) {
    if (at > 0 && name[at - 1] !== "/") continue;
    const slash = name.indexOf("/", at + CARVE_DIR_PREFIX.length);
    if (slash === -1) return null; // no later occurrence can have a slash after it either
    if (slash === at + CARVE_DIR_PREFIX.length) continue; // empty guid
    let rest = slash;
    while (name[rest] === "/") rest++;
    if (rest < name.length) return `/${name.slice(rest)}`;
    return null;
  }
  return null;
}

/** `name` without its trailing slashes, in linear time (`/\/+$/` is quadratic on "////...x"). */
function stripTrailingSlashes(name: string): string {
  let end = name.length;
  while (end > 0 && name.charCodeAt(end - 1) === 0x2f) end--;
  return name.slice(0, end);
}

function memberType(typeflag: string, name: string): TarMemberType {
  switch (typeflag) {
    case "0":
    case "\0":
    case "7":
    case "":
      return name.endsWith("/") ? "directory" : "file";
    case "1":
      return "hardlink";
    case "2":
      return "symlink";
    case "5":
      return "directory";
    default:
      return "other";
  }
}

/**
 * Reads a tar stream member by member to its end-of-archive block (or its end), within `limits`: at a bound
 * the walk stops and says why (truncated + truncatedReason). Every reader of archives goes through here (the
 * files listing, single-file downloads, carvectl's extraction), so a member's index and name mean the same
 * thing to all of them. Linear in the bytes read; yields the event loop every few milliseconds.
 * @throws TarFormatError when the data is not a tar, or is damaged or truncated; whatever the visitor throws.
 */
export async function walkTar(source: AsyncIterable<Buffer | Uint8Array>, options: ListingLimits, visit: TarVisitor): Promise<TarWalk> {
  const limits = {
    maxMembers: options.maxMembers,
    maxBytesExamined: options.maxBytesExamined ?? DEFAULT_MAX_BYTES_EXAMINED,
    maxNameBytes: options.maxNameBytes ?? DEFAULT_MAX_NAME_BYTES,
  };
  const it = source[Symbol.asyncIterator]();
  const slicer = new Slicer();
  const reader = new ByteReader(it, slicer);
  const globalPax = new Map<string, string>();
  let localPax: Map<string, string> | null = null;
  let longName: string | null = null;
  let longLink: string | null = null;
  let headers = 0;
  let nameBytes = 0;
  let count = 0;
  const end = (endMarker: boolean): TarWalk => ({ count, truncated: false, truncatedReason: null, endMarker, stopped: false });
  const stop = (reason: TruncatedReason): TarWalk => ({ count, truncated: true, truncatedReason: reason, endMarker: false, stopped: false });
  // Local pax records override global ones; looked up in both instead of merging a copy per member.
  const paxGet = (key: string): string | undefined => localPax?.get(key) ?? globalPax.get(key);
  try {
    for (;;) {
      await slicer.maybeYield();
      const at = reader.offset;
      if (at >= limits.maxBytesExamined) return stop("max-bytes-examined");
      const header = await reader.read(BLOCK);
      if (header === null) {
        if (headers === 0) throw new TarFormatError("empty file: not a tar archive", 0);
        if (localPax || longName !== null || longLink !== null) throw new TarFormatError("archive ends after an extended header", at);
        return end(false);
      }
      // End of archive. (osquery's carve of nothing is just two zero blocks: a valid, empty archive.)
      if (header.every((b) => b === 0)) return end(true);
      if (!checksumMatches(header, at)) {
        throw new TarFormatError(headers === 0 ? "not a tar archive" : `damaged tar header at byte ${at}`, at);
      }
      headers++;
      const typeflag = String.fromCharCode(header[156] ?? 0);
      let size = numberField(header.subarray(124, 136), "size", at);

      if (typeflag === "x" || typeflag === "g" || typeflag === "L" || typeflag === "K") {
        if (size > MAX_EXTENDED_HEADER) return stop("extended-header-too-large");
        const data = size === 0 ? Buffer.alloc(0) : await reader.read(size);
        if (data === null) throw new TarFormatError("archive ends in an extended header", at);
        await reader.consume((BLOCK - (size % BLOCK)) % BLOCK);
        if (typeflag === "x") localPax = parsePax(data, at);
        else if (typeflag === "g") {
          for (const [k, v] of parsePax(data, at)) globalPax.set(k, v);
          if (globalPax.size > MAX_GLOBAL_PAX_KEYS) return stop("too-many-pax-keys");
        } else if (typeflag === "L") longName = cString(data);
        else longLink = cString(data);
        continue;
      }

      const magic = header.subarray(257, 263).toString("latin1");
      const posixUstar = magic === "ustar\0";
      const baseName = cString(header.subarray(0, 100));
      const prefix = posixUstar ? cString(header.subarray(345, 500)) : "";
      let name = paxGet("path") ?? longName ?? (prefix !== "" ? `${prefix}/${baseName}` : baseName);
      const linkTarget = paxGet("linkpath") ?? longLink ?? cString(header.subarray(157, 257));
      longName = null;
      longLink = null;
      size = paxNumber(paxGet("size"), "size", at) ?? size;
      const mode = numberField(header.subarray(100, 108), "mode", at);
      const uid = paxNumber(paxGet("uid"), "uid", at) ?? numberField(header.subarray(108, 116), "uid", at);
      const gid = paxNumber(paxGet("gid"), "gid", at) ?? numberField(header.subarray(116, 124), "gid", at);
      const mtimeMs = paxTimeMs(paxGet("mtime"), "mtime", at) ?? numberField(header.subarray(136, 148), "mtime", at) * 1000;
      const uname = paxGet("uname") ?? (magic.startsWith("ustar") ? cString(header.subarray(265, 297)) : "");
      const gname = paxGet("gname") ?? (magic.startsWith("ustar") ? cString(header.subarray(297, 329)) : "");
      localPax = null;
      const type = memberType(typeflag, name);
      if (type === "directory") name = stripTrailingSlashes(name) + "/";
      nameBytes += name.length + (type === "symlink" || type === "hardlink" ? linkTarget.length : 0);
      if (nameBytes > limits.maxNameBytes) return stop("max-name-bytes");

      // As GNU tar does: content follows for every type but directories (links and devices have size 0).
      const dataSize = typeflag === "5" ? 0 : size;
      if (reader.offset + dataSize > limits.maxBytesExamined) return stop("max-bytes-examined");
      const mtime = new Date(mtimeMs);
      const entry: TarEntry = {
        index: count,
        name,
        path: originalPathOf(name),
        type,
        typeflag: typeflag === "\0" ? "0" : typeflag,
        size: type === "file" || type === "other" ? size : 0,
        dataSize,
        mode: (mode & 0o7777).toString(8).padStart(4, "0"),
        uid,
        gid,
        uname: uname === "" ? null : uname,
        gname: gname === "" ? null : gname,
        mtime: Number.isNaN(mtime.getTime()) ? new Date(0).toISOString() : mtime.toISOString(),
        linkTarget: type === "symlink" || type === "hardlink" ? linkTarget : null,
      };
      let read = false;
      const decision = await visit(entry, async (sink) => {
        if (read) throw new Error("a member's content can be read once");
        read = true;
        await reader.consume(dataSize, sink);
      });
      if (!read) await reader.consume(dataSize);
      await reader.consume((BLOCK - (dataSize % BLOCK)) % BLOCK);
      count++;
      if (decision === "stop") return { ...end(false), stopped: true };
      if (count >= limits.maxMembers) {
        // Is there anything after this member? Peek at one header block.
        const next = await reader.read(BLOCK);
        const more = next !== null && !next.every((b) => b === 0);
        return { count, truncated: more, truncatedReason: more ? "max-members" : null, endMarker: !more && next !== null, stopped: false };
      }
    }
  } finally {
    // Stop the source (closes the archive's file or download stream) whether we finished early or failed.
    await it.return?.();
  }
}

/**
 * Lists a tar stream's members without extracting or buffering it, each regular file with the SHA-256 of its
 * content, within `limits` (see walkTar).
 * @throws TarFormatError when the data is not a tar, or is damaged or truncated.
 */
export async function listTar(source: AsyncIterable<Buffer | Uint8Array>, options: ListingLimits): Promise<TarListing> {
  const members: TarMember[] = [];
  const walk = await walkTar(source, options, async ({ index: _index, dataSize: _dataSize, ...member }, readContent) => {
    let sha256: string | null = null;
    if (member.type === "file") {
      const hash = createHash("sha256");
      await readContent((chunk) => {
        hash.update(chunk);
      });
      sha256 = hash.digest("hex");
    }
    members.push({ ...member, sha256 });
  });
  return { members, truncated: walk.truncated, truncatedReason: walk.truncatedReason, endMarker: walk.endMarker };
}
