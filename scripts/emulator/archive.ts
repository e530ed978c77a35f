/**
 * Builds a carve archive the way an osquery agent does before uploading it.
 *
 * What osquery does (osquery/carver/carver.cpp, osquery/filesystem/file_compression.cpp):
 * - every requested path that is an existing regular file is copied to
 *   `<tmp>/osquery_carve_<guid>/...`; paths that do not exist or are directories are skipped;
 * - the copies are collected in a `std::set<path>`, so members are sorted by path and de-duplicated;
 * - libarchive writes them as pax (restricted pax before 5.22, full pax from 5.22);
 *   5.5+: the member name is the full path of the temp copy (`/tmp/osquery_carve_<guid>/etc/hosts`),
 *   before 5.5: the file's base name (two sources with the same base name: the second copy fails
 *   and is left out);
 *   before 5.22 every member is mode 0644, uid/gid 0, mtime 0; from 5.22 the temp copy's stat is
 *   copied (mode, uid, gid, size, mtime) and pax 'x' records carry atime/ctime/mtime;
 * - no members at all: the archive is two zero blocks (1024 bytes), libarchive does not pad a
 *   regular file to its 10240-byte record size;
 * - `--carver_compression`: the finished tar is streamed through zstd level 1 (one frame, no
 *   content size, no checksum) into `carve_<guid>.tar.zst`, and that file is what gets uploaded.
 *
 * This module writes its own tar (ustar headers + pax 'x' headers) with node built-ins and streams
 * file contents, so multi-hundred-megabyte files never sit in memory.
 */
import { createHash } from "node:crypto";
import { spawn } from "node:child_process";
import { createReadStream, createWriteStream } from "node:fs";
import { stat } from "node:fs/promises";
import path from "node:path";
import { Readable, Transform } from "node:stream";
import type { TransformCallback } from "node:stream";
import { pipeline } from "node:stream/promises";

// The magic number of the zstd frames osquery's --carver_compression writes (tests recognise them by it).
export { ZSTD_MAGIC } from "../../src/carves/geometry.js";

export type ArchiveStyle = "modern" | "legacy";

export interface BuildCarveArchiveOptions {
  /** Files to carve. Missing paths and directories are skipped, as osquery does. */
  paths: string[];
  /** The carve GUID; part of the member names in the modern style. */
  carveId: string;
  /** Where to write the archive (the .tar, or the .tar.zst when compressing). */
  outFile: string;
  /** "modern" (5.5+): `/tmp/osquery_carve_<carveId>/<abs path>`; "legacy" (< 5.5): base name. Default "modern". */
  style?: ArchiveStyle;
  /** 5.22+: real stat metadata and pax 'x' records with atime/ctime/mtime. Default false. */
  paxTimes?: boolean;
  /** Pipe the tar through `zstd -1 --no-check` (the Debian CLI). Default false. */
  compression?: boolean;
  /** Directory the member names are rooted at in the modern style. Default "/tmp". */
  tempDir?: string;
}

export interface CarveArchiveMember {
  /** Member name as written in the tar. */
  name: string;
  /** Absolute path of the source file. */
  source: string;
  /** Bytes of content stored for the member. */
  size: number;
}

export interface CarveArchive {
  /** The file that would be uploaded. */
  path: string;
  /** Its size in bytes: the carve_size. */
  size: number;
  /** SHA-256 hex of the uploaded file (what osquery keeps in carves.sha256). */
  sha256: string;
  /** Members in archive order. */
  members: CarveArchiveMember[];
  /** Size of the uncompressed tar (equals size when not compressing). */
  tarSize: number;
}

const BLOCK = 512;
const ZERO_BLOCK = Buffer.alloc(BLOCK);
const MAX_OCTAL_11 = 0o77777777777; // size / mtime fields: 11 octal digits
const MAX_OCTAL_7 = 0o7777777; // mode / uid / gid fields: 7 octal digits
const READ_CHUNK = 1 << 20;

interface PlannedMember {
  name: string;
  source: string;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  mtimeNs: bigint;
  atimeNs: bigint;
  ctimeNs: bigint;
}

/** boost::filesystem::path ordering: element by element, not plain string order. */
function comparePaths(a: string, b: string): number {
  const ea = a.split("/");
  const eb = b.split("/");
  const n = Math.min(ea.length, eb.length);
  for (let i = 0; i < n; i++) {
    const x = ea[i] ?? "";
    const y = eb[i] ?? "";
    if (x !== y) return Buffer.compare(Buffer.from(x), Buffer.from(y));
  }
  return ea.length - eb.length;
}

function memberName(source: string, opts: BuildCarveArchiveOptions): string {
  if (opts.style === "legacy") return path.basename(source);
  const tempDir = (opts.tempDir ?? "/tmp").replace(/\/+$/, "");
  return `${tempDir}/osquery_carve_${opts.carveId}/${source.replace(/^\/+/, "")}`;
}

async function planMembers(opts: BuildCarveArchiveOptions): Promise<PlannedMember[]> {
  // osquery keeps the requested paths in a std::set: sorted, de-duplicated.
  const sources = [...new Set(opts.paths.map((p) => path.resolve(p)))].sort(comparePaths);
  const byName = new Map<string, PlannedMember>();
  for (const source of sources) {
    let st;
    try {
      st = await stat(source, { bigint: true });
    } catch {
      continue; // "File does not exist on disk or is subdirectory"
    }
    if (!st.isFile()) continue;
    const name = memberName(source, opts);
    if (byName.has(name)) continue; // legacy: the second copy with the same base name fails
    byName.set(name, {
      name,
      source,
      size: Number(st.size),
      mode: opts.paxTimes ? Number(st.mode & 0o7777n) : 0o644,
      uid: opts.paxTimes ? Number(st.uid) : 0,
      gid: opts.paxTimes ? Number(st.gid) : 0,
      mtimeNs: st.mtimeNs,
      atimeNs: st.atimeNs,
      ctimeNs: st.ctimeNs,
    });
  }
  // The archive is written from a std::set of the temp copies' paths.
  return [...byName.values()].sort((a, b) => comparePaths(a.name, b.name));
}

function writeString(buf: Buffer, offset: number, length: number, value: string | Buffer): void {
  const bytes = typeof value === "string" ? Buffer.from(value, "utf8") : value;
  bytes.copy(buf, offset, 0, Math.min(bytes.length, length));
}

/** `digits` octal digits followed by a NUL, as libarchive writes them. */
function writeOctal(buf: Buffer, offset: number, fieldSize: number, value: number): void {
  const digits = fieldSize - 1;
  writeString(buf, offset, digits, Math.max(0, Math.floor(value)).toString(8).padStart(digits, "0"));
  buf[offset + digits] = 0;
}

interface HeaderFields {
  name: Buffer;
  prefix: Buffer;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  type: string;
}

function ustarHeader(f: HeaderFields): Buffer {
  const h = Buffer.alloc(BLOCK);
  writeString(h, 0, 100, f.name);
  writeOctal(h, 100, 8, f.mode);
  writeOctal(h, 108, 8, f.uid);
  writeOctal(h, 116, 8, f.gid);
  writeOctal(h, 124, 12, f.size);
  writeOctal(h, 136, 12, f.mtime);
  h.fill(0x20, 148, 156); // checksum is computed over spaces
  writeString(h, 156, 1, f.type);
  writeString(h, 257, 6, "ustar\0");
  writeString(h, 263, 2, "00");
  writeString(h, 345, 155, f.prefix);
  let sum = 0;
  for (const b of h) sum += b;
  writeString(h, 148, 6, sum.toString(8).padStart(6, "0"));
  h[154] = 0;
  h[155] = 0x20;
  return h;
}

/** Splits a name into ustar prefix/name, or returns null when it cannot be stored in ustar fields. */
function splitUstarName(name: string): { name: Buffer; prefix: Buffer } | null {
  const bytes = Buffer.from(name, "utf8");
  if (!/^[\x20-\x7e]*$/.test(name)) return null; // non-ASCII names go in a pax 'path' record
  if (bytes.length <= 100) return { name: bytes, prefix: Buffer.alloc(0) };
  for (let i = bytes.length - 1; i > 0; i--) {
    if (bytes[i] !== 0x2f) continue;
    const prefix = bytes.subarray(0, i);
    const rest = bytes.subarray(i + 1);
    if (prefix.length > 155) continue;
    if (rest.length === 0 || rest.length > 100) return null;
    return { name: rest, prefix };
  }
  return null;
}

/** One pax record: "<len> <key>=<value>\n", where len counts the whole record. */
function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  const bodyLen = Buffer.byteLength(body, "utf8");
  let len = bodyLen + 1;
  while (String(len).length + bodyLen !== len) len = String(len).length + bodyLen;
  return `${len}${body}`;
}

/** libarchive style: seconds, then up to 9 fraction digits without trailing zeros. */
function paxTime(ns: bigint): string {
  const t = ns < 0n ? 0n : ns;
  const sec = t / 1_000_000_000n;
  const frac = t % 1_000_000_000n;
  if (frac === 0n) return sec.toString();
  return `${sec}.${frac.toString().padStart(9, "0").replace(/0+$/, "")}`;
}

function paxHeaderName(name: string): Buffer {
  const trimmed = name.replace(/\/+$/, "");
  const dir = path.posix.dirname(trimmed);
  const base = path.posix.basename(trimmed);
  const full = dir === "." ? `PaxHeader/${base}` : `${dir}/PaxHeader/${base}`;
  const bytes = Buffer.from(full, "utf8");
  if (bytes.length <= 100 && /^[\x20-\x7e]*$/.test(full)) return bytes;
  const ascii = Buffer.from(`PaxHeader/${base.replace(/[^\x20-\x7e]/g, "_")}`, "utf8");
  return ascii.subarray(0, 100);
}

/** The header block(s) of one member: optional pax 'x' header + data, then the ustar header. */
function memberHeader(m: PlannedMember, paxTimes: boolean): Buffer {
  const records: string[] = [];
  const split = splitUstarName(m.name);
  if (!split) records.push(paxRecord("path", m.name));
  const mtimeSec = Number(m.mtimeNs / 1_000_000_000n);
  if (m.size > MAX_OCTAL_11) records.push(paxRecord("size", String(m.size)));
  if (m.uid > MAX_OCTAL_7) records.push(paxRecord("uid", String(m.uid)));
  if (m.gid > MAX_OCTAL_7) records.push(paxRecord("gid", String(m.gid)));
  if (paxTimes) {
    records.push(paxRecord("atime", paxTime(m.atimeNs)));
    records.push(paxRecord("ctime", paxTime(m.ctimeNs)));
    records.push(paxRecord("mtime", paxTime(m.mtimeNs)));
  }
  const fallbackName = Buffer.from(m.name.replace(/[^\x20-\x7e]/g, "_"), "utf8");
  const main = ustarHeader({
    name: split ? split.name : fallbackName.subarray(Math.max(0, fallbackName.length - 100)),
    prefix: split ? split.prefix : Buffer.alloc(0),
    mode: m.mode,
    uid: m.uid > MAX_OCTAL_7 ? 0 : m.uid,
    gid: m.gid > MAX_OCTAL_7 ? 0 : m.gid,
    size: m.size > MAX_OCTAL_11 ? 0 : m.size,
    mtime: paxTimes ? Math.min(Math.max(0, mtimeSec), MAX_OCTAL_11) : 0,
    type: "0",
  });
  if (records.length === 0) return main;
  const data = Buffer.from(records.join(""), "utf8");
  const x = ustarHeader({
    name: paxHeaderName(m.name),
    prefix: Buffer.alloc(0),
    mode: m.mode,
    uid: m.uid > MAX_OCTAL_7 ? 0 : m.uid,
    gid: m.gid > MAX_OCTAL_7 ? 0 : m.gid,
    size: data.length,
    mtime: paxTimes ? Math.min(Math.max(0, mtimeSec), MAX_OCTAL_11) : 0,
    type: "x",
  });
  return Buffer.concat([x, data, Buffer.alloc(padding(data.length)), main]);
}

function padding(n: number): number {
  return (BLOCK - (n % BLOCK)) % BLOCK;
}

/** Yields the tar byte stream; file contents are read in 1 MiB chunks. */
async function* tarStream(members: PlannedMember[], paxTimes: boolean): AsyncGenerator<Buffer> {
  for (const m of members) {
    yield memberHeader(m, paxTimes);
    let written = 0;
    if (m.size > 0) {
      try {
        const rs = createReadStream(m.source, { start: 0, end: m.size - 1, highWaterMark: READ_CHUNK });
        for await (const chunk of rs as AsyncIterable<Buffer>) {
          const take = Math.min(chunk.length, m.size - written);
          if (take <= 0) break;
          yield take === chunk.length ? chunk : chunk.subarray(0, take);
          written += take;
        }
      } catch {
        // The file vanished or became unreadable mid-carve: the header is out, keep the tar valid.
      }
    }
    // A file that shrank while being read: fill up to the size announced in the header.
    while (written < m.size) {
      const n = Math.min(READ_CHUNK, m.size - written);
      yield Buffer.alloc(n);
      written += n;
    }
    const pad = padding(m.size);
    if (pad > 0) yield Buffer.alloc(pad);
  }
  yield ZERO_BLOCK;
  yield ZERO_BLOCK;
}

class HashTap extends Transform {
  readonly hash = createHash("sha256");
  bytes = 0;
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    cb(null, chunk);
  }
}

async function runZstd(source: Readable, outFile: string): Promise<{ sha256: string; size: number; tarSize: number }> {
  const child = spawn("zstd", ["-1", "--no-check", "-q", "-c"], { stdio: ["pipe", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (d: string) => {
    stderr += d;
  });
  const exited = new Promise<number>((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code) => resolve(code ?? -1));
  });
  const tarTap = new HashTap();
  const outTap = new HashTap();
  try {
    await Promise.all([
      pipeline(source, tarTap, child.stdin),
      pipeline(child.stdout, outTap, createWriteStream(outFile)),
    ]);
  } catch (err) {
    child.kill();
    await exited.catch(() => -1);
    throw new Error(`zstd compression failed: ${(err as Error).message} ${stderr}`.trim());
  }
  const code = await exited;
  if (code !== 0) throw new Error(`zstd exited with ${code}: ${stderr.trim()}`);
  return { sha256: outTap.hash.digest("hex"), size: outTap.bytes, tarSize: tarTap.bytes };
}

/** Writes the carve archive to `opts.outFile` and returns what the agent would upload. */
export async function buildCarveArchive(opts: BuildCarveArchiveOptions): Promise<CarveArchive> {
  const paxTimes = opts.paxTimes ?? false;
  const members = await planMembers(opts);
  const source = Readable.from(tarStream(members, paxTimes), { objectMode: false });
  let sha256: string;
  let size: number;
  let tarSize: number;
  if (opts.compression) {
    ({ sha256, size, tarSize } = await runZstd(source, opts.outFile));
  } else {
    const tap = new HashTap();
    await pipeline(source, tap, createWriteStream(opts.outFile));
    sha256 = tap.hash.digest("hex");
    size = tap.bytes;
    tarSize = tap.bytes;
  }
  return {
    path: opts.outFile,
    size,
    sha256,
    tarSize,
    members: members.map((m) => ({ name: m.name, source: m.source, size: m.size })),
  };
}

/** SHA-256 hex of a file, streamed. */
export async function sha256File(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file, { highWaterMark: READ_CHUNK }) as AsyncIterable<Buffer>) {
    hash.update(chunk);
  }
  return hash.digest("hex");
}
