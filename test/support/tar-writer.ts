/**
 * Writes tar archives byte by byte, whatever their members claim: absolute names, `..`, links pointing
 * anywhere, device nodes, sizes that do not match the content. What GNU tar refuses to create, hostile
 * archives contain; the extraction and download tests need both.
 */
import { execFileSync } from "node:child_process";

export interface CraftedMember {
  name: string;
  /** "0" file (default), "1" hard link, "2" symlink, "3" char device, "4" block device, "5" dir, "6" fifo. */
  typeflag?: string;
  content?: Buffer | string;
  /** The header's size field; defaults to the content's length. */
  size?: number;
  linkTarget?: string;
  mode?: number;
  mtime?: number;
  /** Write the name in a pax header (needed past 100 bytes, or for non-ASCII names). */
  pax?: boolean;
}

const BLOCK = 512;

function octal(value: number, width: number): string {
  return `${value.toString(8).padStart(width - 1, "0")}\0`;
}

function header(fields: { name: string; mode: number; size: number; mtime: number; typeflag: string; linkname: string }): Buffer {
  const h = Buffer.alloc(BLOCK);
  h.write(fields.name.slice(0, 100), 0, "utf8");
  h.write(octal(fields.mode, 8), 100, "latin1");
  h.write(octal(0, 8), 108, "latin1");
  h.write(octal(0, 8), 116, "latin1");
  h.write(octal(fields.size, 12), 124, "latin1");
  h.write(octal(fields.mtime, 12), 136, "latin1");
  h.write("        ", 148, "latin1");
  h.write(fields.typeflag, 156, "latin1");
  h.write(fields.linkname.slice(0, 100), 157, "utf8");
  h.write("ustar\0", 257, "latin1");
  h.write("00", 263, "latin1");
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
  return h;
}

function padded(data: Buffer): Buffer[] {
  const pad = (BLOCK - (data.length % BLOCK)) % BLOCK;
  return pad === 0 ? [data] : [data, Buffer.alloc(pad)];
}

function paxRecords(records: Record<string, string>): Buffer {
  let out = "";
  for (const [k, v] of Object.entries(records)) {
    const body = ` ${k}=${v}\n`;
    let len = Buffer.byteLength(body) + 1;
    while (String(len).length + Buffer.byteLength(body) !== len) len = String(len).length + Buffer.byteLength(body);
    out += `${len}${body}`;
  }
  return Buffer.from(out, "utf8");
}

/** A tar archive of these members, ending with the two zero blocks. */
export function craftTar(members: CraftedMember[]): Buffer {
  const parts: Buffer[] = [];
  for (const m of members) {
    const content = typeof m.content === "string" ? Buffer.from(m.content) : (m.content ?? Buffer.alloc(0));
    const typeflag = m.typeflag ?? "0";
    const size = m.size ?? content.length;
    if (m.pax || Buffer.byteLength(m.name) > 100 || Buffer.byteLength(m.linkTarget ?? "") > 100) {
      const records = paxRecords({ path: m.name, ...(m.linkTarget !== undefined ? { linkpath: m.linkTarget } : {}) });
      parts.push(header({ name: "PaxHeader", mode: 0o644, size: records.length, mtime: 0, typeflag: "x", linkname: "" }), ...padded(records));
    }
    parts.push(header({ name: m.name, mode: m.mode ?? 0o644, size, mtime: m.mtime ?? 1_700_000_000, typeflag, linkname: m.linkTarget ?? "" }));
    if (content.length > 0) parts.push(...padded(content));
  }
  parts.push(Buffer.alloc(2 * BLOCK));
  return Buffer.concat(parts);
}

/** zstd -1 --no-check of `data`, as osquery compresses carves (the Debian zstd CLI). */
export function zstd(data: Buffer): Buffer {
  return execFileSync("zstd", ["-1", "--no-check", "-c", "-q"], { input: data, maxBuffer: 1 << 30 });
}
