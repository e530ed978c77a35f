/**
 * Progress of uploads the filesystem store does not hold in memory (evicted beyond maxOpenUploads, or after a
 * restart): answered from the journal, then from a cache of it checked against the journal's stat. Every answer
 * must be exact: a block stored before the question is counted, whichever path answers.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { appendFile, mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { FilesystemBlobs, type FilesystemBlobsOptions } from "../../src/storage/filesystem/filesystem-blobs.js";
import type { Session } from "../../src/storage/model.js";

const BLOCK = 1000;

interface TestUpload {
  session: Session;
  blocks: Buffer[];
}

function upload(blockCount: number, lastBlockBytes = BLOCK): TestUpload {
  const blocks = Array.from({ length: blockCount }, (_, i) => randomBytes(i === blockCount - 1 ? lastBlockBytes : BLOCK));
  return {
    blocks,
    session: {
      carveId: randomUUID(),
      sessionId: randomBytes(16).toString("hex"),
      requestId: randomUUID(),
      nodeKeySha256: createHash("sha256").update("node").digest("hex"),
      blockCount,
      blockSize: BLOCK,
      carveSize: (blockCount - 1) * BLOCK + lastBlockBytes,
      agent: { address: "127.0.0.1", userAgent: "osquery/5.23.0", certificate: null },
      createdAt: new Date(Date.now() - 60_000),
    },
  };
}

/** A journal record as the store writes it (block id, check), appended by hand. */
function journalRecord(id: number): Buffer {
  const buf = Buffer.alloc(8);
  buf.writeUInt32LE(id, 0);
  buf.writeUInt32LE((id ^ 0xc4a7e5b1) >>> 0, 4);
  return buf;
}

describe("filesystem blobs: progress of uploads not in memory", () => {
  let dir: string;
  let blobs: FilesystemBlobs;
  const open = (options: Partial<FilesystemBlobsOptions> = {}): Promise<FilesystemBlobs> =>
    FilesystemBlobs.create({ dataDir: dir, logger: pino({ level: "silent" }), maxOpenUploads: 1, ...options });
  const detail = async (): Promise<{ activeUploads: unknown; cachedProgress: unknown }> => {
    const d = (await blobs.health()).detail;
    return { activeUploads: d.activeUploads, cachedProgress: d.cachedProgress };
  };
  const put = (u: TestUpload, id: number) => blobs.putBlock(u.session, id, u.blocks[id] as Buffer);
  const counts = async (u: TestUpload) => {
    const p = await blobs.progress(u.session, 0);
    return p && { blocks: p.blocksReceived, bytes: p.bytesReceived };
  };

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "carve-progress-"));
    blobs = await open();
  });
  afterEach(async () => {
    await blobs.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("counts every stored block, from the journal and from the cache, as blocks keep arriving", async () => {
    const a = upload(4, 300);
    const b = upload(4);
    await blobs.begin(a.session);
    await blobs.begin(b.session);
    await put(a, 0);
    await put(b, 0); // one upload in memory: a is dropped, its progress now comes from disk
    expect(await detail()).toEqual({ activeUploads: 1, cachedProgress: 0 });

    expect(await counts(a)).toEqual({ blocks: 1, bytes: 1000 });
    expect((await detail()).cachedProgress).toBe(1);
    expect(await counts(a)).toEqual({ blocks: 1, bytes: 1000 }); // the cached answer

    await put(a, 3); // a back in memory (its cache entry dropped), b out
    expect(await detail()).toEqual({ activeUploads: 1, cachedProgress: 0 });
    expect(await counts(a)).toEqual({ blocks: 2, bytes: 1300 });
    await put(b, 1); // a out again: the journal tells
    expect(await counts(a)).toEqual({ blocks: 2, bytes: 1300 });
    expect(await counts(b)).toEqual({ blocks: 2, bytes: 2000 });
    expect((await detail()).cachedProgress).toBe(1);

    // The journal grows while the cache holds an answer for it (the cache is not told): the stat tells.
    await appendFile(path.join(dir, "sessions", a.session.carveId, "journal"), journalRecord(2));
    expect(await counts(a)).toEqual({ blocks: 3, bytes: 2300 });
    expect(await blobs.progress(a.session, 10)).toMatchObject({ blocksReceived: 3, missing: [1] });
    const journalTime = (await stat(path.join(dir, "sessions", a.session.carveId, "journal"))).mtime;
    expect((await blobs.progress(a.session, 0))?.lastBlockAt).toEqual(journalTime);
  });

  it("stays exact across a restart, then as blocks arrive after it", async () => {
    const a = upload(3);
    const b = upload(3);
    await blobs.begin(a.session);
    await blobs.begin(b.session);
    await put(a, 1);
    await put(b, 0);
    expect(await counts(a)).toEqual({ blocks: 1, bytes: 1000 }); // cached
    await blobs.close();

    blobs = await open();
    expect(await detail()).toEqual({ activeUploads: 0, cachedProgress: 0 });
    expect(await counts(a)).toEqual({ blocks: 1, bytes: 1000 });
    expect(await counts(b)).toEqual({ blocks: 1, bytes: 1000 });
    expect((await detail()).cachedProgress).toBe(2);
    await put(a, 0);
    expect(await counts(a)).toEqual({ blocks: 2, bytes: 2000 });
    await put(b, 2); // a out of memory
    expect(await counts(a)).toEqual({ blocks: 2, bytes: 2000 });
    expect(await blobs.progress(a.session, 5)).toMatchObject({ blocksReceived: 2, missing: [2] });
    await blobs.close();

    blobs = await open({ maxOpenUploads: 256 });
    expect(await counts(a)).toEqual({ blocks: 2, bytes: 2000 });
    expect(await counts(b)).toEqual({ blocks: 2, bytes: 2000 });
    expect((await put(a, 2)).allStored).toBe(true);
    expect(await counts(a)).toEqual({ blocks: 3, bytes: 3000 });
  });

  it("answers null once a cached upload is deleted or published", async () => {
    const a = upload(2);
    const b = upload(1);
    await blobs.begin(a.session);
    await blobs.begin(b.session);
    await put(a, 0);
    await put(a, 1);
    await put(b, 0); // a, every block stored, out of memory
    expect(await counts(a)).toEqual({ blocks: 2, bytes: 2000 });
    expect(await counts(b)).toEqual({ blocks: 1, bytes: 1000 });
    expect((await detail()).cachedProgress).toBe(1);

    await blobs.complete(a.session); // loads a (b out of memory) and publishes it
    expect(await blobs.progress(a.session, 0)).toBeNull();
    expect(await counts(b)).toEqual({ blocks: 1, bytes: 1000 });
    expect((await detail()).cachedProgress).toBe(1);
    await blobs.delete(b.session);
    expect(await blobs.progress(b.session, 0)).toBeNull();
    expect((await detail()).cachedProgress).toBe(0);
  });

  it("keeps at most maxCachedProgress answers, and answers the others from their journals", async () => {
    await blobs.close();
    blobs = await open({ maxCachedProgress: 2 });
    const uploads = [upload(3), upload(3), upload(3), upload(3)];
    for (const [i, u] of uploads.entries()) {
      await blobs.begin(u.session);
      for (let id = 0; id <= i % 3; id++) await put(u, id);
    }
    for (let round = 0; round < 2; round++) {
      for (const [i, u] of uploads.entries()) {
        expect(await counts(u)).toEqual({ blocks: (i % 3) + 1, bytes: ((i % 3) + 1) * 1000 });
        expect((await detail()).cachedProgress).toBeLessThanOrEqual(2);
      }
    }
    expect((await detail()).cachedProgress).toBe(2);
  });
});
