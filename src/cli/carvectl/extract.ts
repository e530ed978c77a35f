import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { link, lstat, mkdir, open, realpath, symlink } from "node:fs/promises";
import path from "node:path";
import { originalPathOf, walkTar, type TarEntry } from "../../carves/tar-listing.js";
import { zstdDecompress } from "../../carves/zstd-stream.js";

/**
 * Extraction that never writes outside DIR, whatever the archive says. Each member is placed at a path made
 * of plain names below DIR, or refused with the reason:
 *  - osquery's names (`/tmp/osquery_carve_<guid>/etc/hosts`) are placed at their host path (DIR/etc/hosts);
 *    any other absolute name is refused, and so is any name with a `..` component or a NUL;
 *  - nothing is written through a symlink, nor over anything that exists (O_EXCL, O_NOFOLLOW; every parent
 *    directory is checked with lstat and created as a real directory);
 *  - a symlink is created only when its target is relative without `..` (it can point only at or below its
 *    own directory); a hard link only to a regular file this extraction wrote;
 *  - devices, FIFOs and other special members are refused; so is a file larger than the per-file cap, and
 *    reading stops at the total cap (a zstd bomb costs bounded time and memory: the walker reads in slices);
 *  - modes lose setuid, setgid, sticky and group/other write bits.
 * A DIR that other users can write to defeats these checks (they could swap a directory for a symlink
 * between check and use): extract into a directory of your own.
 */

export interface ExtractLimits {
  /** A regular file larger than this is refused (its content skipped). */
  maxFileSize: number;
  /** Reading stops after this many bytes of tar (decompressed): bounds what a zstd bomb costs. */
  maxTotalSize: number;
}

export interface Extracted {
  /** Path below DIR. */
  path: string;
  member: string;
  type: "file" | "directory" | "symlink" | "hardlink";
  size: number;
}

export interface Refusal {
  member: string;
  reason: string;
}

export interface ExtractResult {
  extracted: Extracted[];
  refused: Refusal[];
  /** Reading stopped at the total cap (or another walk bound) before the archive's end. */
  stoppedAt: string | null;
  /** SHA-256 of the archive bytes received, when all of them were (null when reading stopped early). */
  sha256: string | null;
  /** Member arguments that matched nothing. */
  unmatched: string[];
}

class Refused extends Error {}

/** The path below DIR for a member name, or why there is none. "" is DIR itself. */
export function destinationOf(name: string): string | Refused {
  if (name.includes("\0")) return new Refused("NUL in its name");
  const host = originalPathOf(name);
  let candidate: string;
  if (host !== null) candidate = host;
  else if (name.startsWith("/")) return new Refused("absolute name");
  else candidate = name;
  const parts = candidate.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.includes("..")) return new Refused("'..' in its name");
  return parts.join("/");
}

/** An archive source whose early stop (walker or decompressor done) leaves the rest to be read and hashed. */
function hashedSource(body: AsyncIterable<Uint8Array>): { source: AsyncIterable<Buffer>; drain: (max: number) => Promise<string | null> } {
  const it = body[Symbol.asyncIterator]();
  const hash = createHash("sha256");
  let ended = false;
  const next = async (): Promise<IteratorResult<Buffer>> => {
    if (ended) return { done: true, value: undefined };
    const r = await it.next();
    if (r.done) {
      ended = true;
      return { done: true, value: undefined };
    }
    hash.update(r.value);
    return { done: false, value: Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength) };
  };
  const source: AsyncIterable<Buffer> = {
    [Symbol.asyncIterator]: () => ({ next, return: () => Promise.resolve({ done: true, value: undefined }) }),
  };
  const drain = async (max: number): Promise<string | null> => {
    let extra = 0;
    while (!ended) {
      const r = await next();
      if (!r.done) extra += r.value.length;
      if (extra > max) {
        await it.return?.();
        return null;
      }
    }
    return hash.digest("hex");
  };
  return { source, drain };
}

/** Does a member argument select this member? Its name, its host path, or its place below DIR (or a parent). */
function selects(args: string[], entry: TarEntry, rel: string): string[] {
  return args.filter((a) => {
    if (a === entry.name || a === entry.path) return true;
    const d = a.replace(/^\/+|\/+$/g, "");
    return d !== "" && (rel === d || rel.startsWith(`${d}/`));
  });
}

/** Extracts a tar or zstd-compressed tar stream below `dest` (created if missing). */
export async function extractTar(
  body: AsyncIterable<Uint8Array>,
  compression: "zstd" | "none" | null,
  dest: string,
  members: string[],
  limits: ExtractLimits,
): Promise<ExtractResult> {
  await mkdir(dest, { recursive: true });
  const root = await realpath(dest);
  const extracted: Extracted[] = [];
  const refused: Refusal[] = [];
  const matched = new Set<string>();
  /** Regular files this run wrote: the only hard link targets. */
  const written = new Set<string>();

  /** Makes every directory of `rel` (relative to root) a real directory, creating missing ones. */
  const ensureDirs = async (rel: string): Promise<void> => {
    let at = root;
    for (const part of rel === "" ? [] : rel.split("/")) {
      at = path.join(at, part);
      let st;
      try {
        st = await lstat(at);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
        await mkdir(at, { mode: 0o755 });
        continue;
      }
      if (st.isSymbolicLink()) throw new Refused(`its path goes through a symlink (${path.relative(root, at)})`);
      if (!st.isDirectory()) throw new Refused(`its path goes through a file (${path.relative(root, at)})`);
    }
  };

  const writeFile = async (entry: TarEntry, rel: string, readContent: (sink: (c: Buffer) => Promise<void>) => Promise<void>): Promise<void> => {
    if (entry.size > limits.maxFileSize) throw new Refused(`${entry.size} bytes, over the --max-file-size cap of ${limits.maxFileSize}`);
    await ensureDirs(path.posix.dirname(rel) === "." ? "" : path.posix.dirname(rel));
    const target = path.join(root, rel);
    let fh;
    try {
      fh = await open(target, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "EEXIST") throw new Refused("exists in DIR already (not overwritten)");
      if (code === "ELOOP") throw new Refused("a symlink is in its place");
      throw err;
    }
    try {
      await readContent(async (chunk) => {
        await fh.write(chunk);
      });
      const mtime = new Date(entry.mtime);
      if (!Number.isNaN(mtime.getTime())) await fh.utimes(mtime, mtime);
      await fh.chmod(Number.parseInt(entry.mode, 8) & 0o755);
    } finally {
      await fh.close();
    }
    written.add(rel);
  };

  const place = async (entry: TarEntry, rel: string, readContent: (sink: (c: Buffer) => Promise<void>) => Promise<void>): Promise<Extracted | null> => {
    const base = { path: rel, member: entry.name };
    if (rel === "" && entry.type !== "directory") throw new Refused("empty name");
    switch (entry.type) {
      case "directory":
        await ensureDirs(rel);
        return rel === "" ? null : { ...base, type: "directory", size: 0 };
      case "file":
        await writeFile(entry, rel, readContent);
        return { ...base, type: "file", size: entry.size };
      case "symlink": {
        const to = entry.linkTarget ?? "";
        if (to === "" || to.startsWith("/")) throw new Refused(`symlink to an absolute path (${to})`);
        if (to.split("/").includes("..")) throw new Refused(`symlink climbing with '..' (${to}): only links below their own directory are made`);
        await ensureDirs(path.posix.dirname(rel) === "." ? "" : path.posix.dirname(rel));
        try {
          await symlink(to, path.join(root, rel));
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "EEXIST") throw new Refused("exists in DIR already (not overwritten)");
          throw err;
        }
        return { ...base, type: "symlink", size: 0 };
      }
      case "hardlink": {
        const to = destinationOf(entry.linkTarget ?? "");
        if (to instanceof Refused) throw new Refused(`hard link to ${entry.linkTarget ?? ""}: ${to.message}`);
        if (!written.has(to)) throw new Refused(`hard link to ${entry.linkTarget ?? ""}, not a file this extraction wrote`);
        await ensureDirs(path.posix.dirname(rel) === "." ? "" : path.posix.dirname(rel));
        try {
          await link(path.join(root, to), path.join(root, rel));
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "EEXIST") throw new Refused("exists in DIR already (not overwritten)");
          throw err;
        }
        return { ...base, type: "hardlink", size: 0 };
      }
      default: {
        const kinds: Record<string, string> = { "3": "character device", "4": "block device", "6": "FIFO" };
        throw new Refused(`${kinds[entry.typeflag] ?? `special member (type ${JSON.stringify(entry.typeflag)})`}: not created`);
      }
    }
  };

  const { source, drain } = hashedSource(body);
  const tar = compression === "zstd" ? zstdDecompress(source) : source;
  const walk = await walkTar(tar, { maxMembers: Number.MAX_SAFE_INTEGER, maxBytesExamined: limits.maxTotalSize }, async (entry, readContent) => {
    const rel = destinationOf(entry.name);
    if (members.length > 0) {
      const hits = selects(members, entry, rel instanceof Refused ? "\0" : rel);
      if (hits.length === 0) return;
      for (const h of hits) matched.add(h);
    }
    if (rel instanceof Refused) {
      refused.push({ member: entry.name, reason: rel.message });
      return;
    }
    try {
      const done = await place(entry, rel, readContent);
      if (done) extracted.push(done);
    } catch (err) {
      if (!(err instanceof Refused)) throw err;
      refused.push({ member: entry.name, reason: err.message });
    }
  });
  const stoppedAt = walk.truncated ? (walk.truncatedReason === "max-bytes-examined" ? `the --max-total-size cap of ${limits.maxTotalSize} bytes` : (walk.truncatedReason ?? "a bound")) : null;
  const sha256 = stoppedAt === null ? await drain(64 * 1024 * 1024) : null;
  return { extracted, refused, stoppedAt, sha256, unmatched: members.filter((m) => !matched.has(m)) };
}
