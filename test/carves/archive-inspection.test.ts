/**
 * The streaming tar lister and zstd decoder on archives made by GNU tar and the zstd CLI (the tools osquery's
 * libarchive output is checked against), plus damaged and hostile inputs.
 */
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { listTar, originalPathOf, TarFormatError } from "../../src/carves/tar-listing.js";
import { zstdDecompress, ZstdFormatError } from "../../src/carves/zstd-stream.js";

let work: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "tar-list-"));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** Feeds a buffer in small, uneven chunks, as a network or disk stream might. */
function chunked(buf: Buffer, size = 777): AsyncIterable<Buffer> {
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) parts.push(buf.subarray(i, i + size));
  return Readable.from(parts);
}

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const c of it) out.push(c);
  return Buffer.concat(out);
}

async function tarOf(format: string, files: Record<string, string | Buffer>, extra: string[] = []): Promise<Buffer> {
  const dir = await mkdtemp(path.join(work, "src-"));
  for (const [name, content] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(dir, name)), { recursive: true });
    await writeFile(path.join(dir, name), content);
    await utimes(path.join(dir, name), 1_700_000_000.25, 1_700_000_000.25);
  }
  return execFileSync("tar", [`--format=${format}`, ...extra, "-cf", "-", "-C", dir, ...Object.keys(files)]);
}

describe("tar listing", () => {
  it("reads pax (long names as pax path, sub-second mtime), ustar (prefix) and gnu (long-name) archives alike", async () => {
    const long = `tmp/osquery_carve_abc/${"d".repeat(80)}/${"e".repeat(80)}/f.txt`;
    const big = randomBytes(70_000);
    for (const format of ["posix", "ustar", "gnu"]) {
      const tar = await tarOf(format, { [long]: "hi", "short.bin": big });
      const { members, endMarker, truncated } = await listTar(chunked(tar), { maxMembers: 100 });
      expect(endMarker && !truncated).toBe(true);
      expect(members.map((m) => m.name), format).toEqual([long, "short.bin"]);
      expect(members[0]).toMatchObject({ path: `/${"d".repeat(80)}/${"e".repeat(80)}/f.txt`, size: 2, type: "file" });
      expect(members[1]).toMatchObject({ path: null, size: big.length, sha256: createHash("sha256").update(big).digest("hex") });
      const mtime = Date.parse(members[1]?.mtime ?? "");
      expect(format === "posix" ? mtime : Math.floor(mtime / 1000) * 1000).toBe(format === "posix" ? 1_700_000_000_250 : 1_700_000_000_000);
    }
  });

  it("maps osquery temp names back to host paths", () => {
    expect(originalPathOf("/tmp/osquery_carve_1234/etc/hosts")).toBe("/etc/hosts");
    expect(originalPathOf("tmp/osquery_carve_1234/etc/hosts")).toBe("/etc/hosts");
    expect(originalPathOf("/var/tmp/osquery_carve_x/home/u/osquery_carve_y/z")).toBe("/home/u/osquery_carve_y/z");
    expect(originalPathOf("hosts")).toBeNull();
    expect(originalPathOf("/tmp/osquery_carve_1234/")).toBeNull();
  });

  it("applies pax global headers", async () => {
    // GNU tar writes keywords given with = (not :=) into a global ('g') header, applying to every member after it.
    const g = await tarOf("posix", { a: "1", b: "2" }, ["--pax-option=uname=from-global"]);
    expect(g.subarray(156, 157).toString()).toBe("g");
    const { members } = await listTar(chunked(g), { maxMembers: 10 });
    expect(members.map((m) => [m.name, m.uname])).toEqual([
      ["a", "from-global"],
      ["b", "from-global"],
    ]);
  });

  it("refuses what is not a tar, and damaged or truncated archives", async () => {
    // Content without "b\0", so the search below can only land in b's headers.
    const tar = await tarOf("posix", { a: "A".repeat(5000), b: "x" });
    await expect(listTar(chunked(randomBytes(4096)), { maxMembers: 10 })).rejects.toThrow(/not a tar archive/);
    await expect(listTar(chunked(Buffer.alloc(0)), { maxMembers: 10 })).rejects.toThrow(TarFormatError);
    await expect(listTar(chunked(tar.subarray(0, 3000)), { maxMembers: 10 })).rejects.toThrow(/ends in the middle/);
    const damaged = Buffer.from(tar);
    const second = damaged.indexOf(Buffer.from("b\0"), 1024); // name field of b's (pax) header
    expect(second % 512).toBeLessThan(100);
    damaged[second - (second % 512) + 100] = 0x39; // its mode field: the checksum no longer matches
    await expect(listTar(chunked(damaged), { maxMembers: 10 })).rejects.toThrow(/damaged tar header/);
    expect(await listTar(chunked(Buffer.alloc(1024)), { maxMembers: 10 })).toEqual({ members: [], truncated: false, truncatedReason: null, endMarker: true });
  });

  it("stops after maxMembers and says so", async () => {
    const tar = await tarOf("posix", { a: "1", b: "2", c: "3" });
    expect(await listTar(chunked(tar), { maxMembers: 2 })).toMatchObject({ truncated: true, members: [{ name: "a" }, { name: "b" }] });
    expect(await listTar(chunked(tar), { maxMembers: 3 })).toMatchObject({ truncated: false });
  });
});

describe("zstd stream", () => {
  it("decodes what zstd -1 --no-check writes from a pipe (no content size), in one frame or several", async () => {
    const data = Buffer.concat([randomBytes(200_000), Buffer.alloc(300_000, 7), randomBytes(10)]);
    const z = execFileSync("zstd", ["-1", "--no-check", "-q", "-c"], { input: data });
    expect((await collect(zstdDecompress(chunked(z, 1000)))).equals(data)).toBe(true);
    const two = Buffer.concat([z, execFileSync("zstd", ["-19", "-q", "-c"], { input: Buffer.from("tail") })]);
    expect((await collect(zstdDecompress(chunked(two, 3)))).equals(Buffer.concat([data, Buffer.from("tail")]))).toBe(true);
  });

  it("rejects non-zstd, truncated and over-large-window input", async () => {
    await expect(collect(zstdDecompress(chunked(randomBytes(100))))).rejects.toThrow(ZstdFormatError);
    await expect(collect(zstdDecompress(chunked(Buffer.alloc(0))))).rejects.toThrow(ZstdFormatError);
    const z = execFileSync("zstd", ["-1", "-q", "-c"], { input: randomBytes(300_000) });
    await expect(collect(zstdDecompress(chunked(z.subarray(0, z.length - 100))))).rejects.toThrow(ZstdFormatError);
    // Frame header announcing a 2 GiB window (window descriptor exponent 21).
    const hostile = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, (31 - 10) << 3, 0, 0, 0]);
    await expect(collect(zstdDecompress(chunked(hostile)))).rejects.toThrow(/window/);
  });

  it("yields output as it goes instead of decoding everything up front", async () => {
    const data = Buffer.alloc(64 * 1024 * 1024, 1); // compresses to almost nothing
    const z = execFileSync("zstd", ["-1", "-q", "-c"], { input: data });
    const it = zstdDecompress(chunked(z, 64 * 1024))[Symbol.asyncIterator]();
    const first = await it.next();
    expect(first.done).toBe(false);
    expect((first.value as Buffer).length).toBeLessThanOrEqual(16 * 1024 * 1024);
    await it.return?.(undefined);
  });
});
