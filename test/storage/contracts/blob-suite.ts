/**
 * The BlobStore conformance suite (src/storage/contracts.ts). Every blob store runs all of it: a case that does
 * not hold for one implementation is a bug in it, never a reason to skip.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { Readable } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AppError, type ErrorCode } from "../../../src/errors.js";
import type { BlobStore } from "../../../src/storage/contracts.js";
import type { Session } from "../../../src/storage/model.js";

export interface BlobHarness {
  /** Opens a store over this harness's storage; a second open after close() sees the same data. */
  open(): Promise<BlobStore>;
  /** Removes the storage. */
  destroy(): Promise<void>;
  /** Names of whatever the backend still holds (files, documents, objects); [] when empty. */
  leftovers(): Promise<string[]>;
}

const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
  return Buffer.concat(chunks);
}

/** Byte equality without a per-element deep compare (vitest's toEqual walks a Buffer byte by byte). */
function expectBytes(actual: Buffer, expected: Buffer): void {
  expect(actual.length).toBe(expected.length);
  expect(sha256(actual)).toBe(sha256(expected));
}

async function expectCode(promise: Promise<unknown>, code: ErrorCode): Promise<void> {
  const err = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err, `expected ${code}`).toBeInstanceOf(AppError);
  expect((err as AppError).code).toBe(code);
}

interface Upload {
  session: Session;
  bytes: Buffer;
  blocks: Buffer[];
}

function makeUpload(size: number, blockSize: number, bytes?: Buffer): Upload {
  const data = bytes ?? randomBytes(size);
  const blocks: Buffer[] = [];
  for (let off = 0; off < data.length; off += blockSize) blocks.push(data.subarray(off, Math.min(off + blockSize, data.length)));
  return {
    bytes: data,
    blocks,
    session: {
      carveId: randomUUID(),
      sessionId: randomBytes(16).toString("hex"),
      requestId: randomUUID(),
      nodeKeySha256: sha256(Buffer.from("node")),
      blockCount: blocks.length,
      blockSize,
      carveSize: data.length,
      agent: { address: "127.0.0.1", userAgent: "osquery/5.23.0", certificate: null },
      createdAt: new Date(Date.now() - 1000),
    },
  };
}

async function* chunksOf(data: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let off = 0; off < data.length; off += size) {
    await Promise.resolve();
    yield data.subarray(off, Math.min(off + size, data.length));
  }
}

const refOf = (u: Upload, compression: "none" | "zstd" = "none") => ({
  carveId: u.session.carveId,
  sessionId: u.session.sessionId,
  compression,
  size: u.session.carveSize,
});

export function blobStoreConformance(name: string, makeHarness: () => Promise<BlobHarness>): void {
  describe(`BlobStore conformance: ${name}`, () => {
    let harness: BlobHarness;
    let blobs: BlobStore;

    beforeEach(async () => {
      harness = await makeHarness();
      blobs = await harness.open();
    });
    afterEach(async () => {
      await blobs.close();
      await harness.destroy();
    });

    async function storeAll(u: Upload, order?: number[]): Promise<number> {
      await blobs.begin(u.session);
      let allStoredSeen = 0;
      for (const id of order ?? u.blocks.map((_, i) => i)) {
        const w = await blobs.putBlock(u.session, id, u.blocks[id] as Buffer);
        if (w.allStored) allStoredSeen++;
      }
      return allStoredSeen;
    }

    it("stores blocks in any order, tracks progress and publishes the archive byte-exact", async () => {
      const u = makeUpload(10 * 1024 + 17, 1024);
      await blobs.begin(u.session);
      const order = [3, 0, 10, 1, 2, 9, 4, 5, 8, 6, 7];
      for (const [i, id] of order.entries()) {
        const w = await blobs.putBlock(u.session, id, u.blocks[id] as Buffer);
        expect(w).toEqual({ duplicate: false, allStored: i === order.length - 1, published: false });
        if (i === 4) {
          const p = await blobs.progress(u.session, 3);
          expect(p?.blocksReceived).toBe(5);
          expect(p?.bytesReceived).toBe(5 * 1024 + (order.slice(0, 5).includes(10) ? 17 - 1024 : 0));
          expect(p?.missing).toEqual([4, 5, 6]);
          expect(p!.lastBlockAt.getTime()).toBeGreaterThanOrEqual(u.session.createdAt.getTime());
        }
      }
      const facts = await blobs.complete(u.session);
      expect(facts).toEqual({ sha256: sha256(u.bytes), compression: "none", size: u.bytes.length });
      expect(await blobs.progress(u.session, 10)).toBeNull();
      expectBytes(await readAll((await blobs.read(refOf(u))).stream), u.bytes);
    });

    it("reports full progress before completion and counts a last full block right", async () => {
      const u = makeUpload(4096, 1024);
      expect(await storeAll(u)).toBe(1);
      const p = await blobs.progress(u.session, 10);
      expect(p).toMatchObject({ blocksReceived: 4, bytesReceived: 4096, missing: [] });
    });

    it("detects zstd by its magic number", async () => {
      const bytes = Buffer.concat([ZSTD_MAGIC, randomBytes(3000)]);
      const u = makeUpload(bytes.length, 1024, bytes);
      await storeAll(u);
      const facts = await blobs.complete(u.session);
      expect(facts.compression).toBe("zstd");
      expectBytes(await readAll((await blobs.read(refOf(u, "zstd"))).stream), bytes);
    });

    it("acknowledges an identical re-send as a duplicate and refuses a different one, before and after publication", async () => {
      const u = makeUpload(3000, 1024);
      await blobs.begin(u.session);
      await blobs.putBlock(u.session, 0, u.blocks[0] as Buffer);
      expect(await blobs.putBlock(u.session, 0, Buffer.from(u.blocks[0] as Buffer))).toEqual({ duplicate: true, allStored: false, published: false });
      await expectCode(blobs.putBlock(u.session, 0, randomBytes(1024)), "BLOCK_CONFLICT");
      await blobs.putBlock(u.session, 1, u.blocks[1] as Buffer);
      await blobs.putBlock(u.session, 2, u.blocks[2] as Buffer);
      await blobs.complete(u.session);
      expect(await blobs.putBlock(u.session, 2, Buffer.from(u.blocks[2] as Buffer))).toEqual({ duplicate: true, allStored: true, published: true });
      await expectCode(blobs.putBlock(u.session, 1, randomBytes(1024)), "BLOCK_CONFLICT");
      expectBytes(await readAll((await blobs.read(refOf(u))).stream), u.bytes);
    });

    it("refuses out-of-range ids and wrong lengths without storing anything", async () => {
      const u = makeUpload(3000, 1024);
      await blobs.begin(u.session);
      await expectCode(blobs.putBlock(u.session, 3, randomBytes(1024)), "BLOCK_OUT_OF_RANGE");
      await expectCode(blobs.putBlock(u.session, -1, randomBytes(1024)), "BLOCK_OUT_OF_RANGE");
      await expectCode(blobs.putBlock(u.session, 0, randomBytes(1000)), "BLOCK_LENGTH_MISMATCH");
      await expectCode(blobs.putBlock(u.session, 2, randomBytes(1024)), "BLOCK_LENGTH_MISMATCH");
      expect(await blobs.progress(u.session, 10)).toMatchObject({ blocksReceived: 0, bytesReceived: 0, missing: [0, 1, 2] });
    });

    it("raises UNKNOWN_SESSION for an upload never begun", async () => {
      const u = makeUpload(2048, 1024);
      await expectCode(blobs.putBlock(u.session, 0, u.blocks[0] as Buffer), "UNKNOWN_SESSION");
      expect(await blobs.progress(u.session, 10)).toBeNull();
    });

    it("never publishes an upload with a gap", async () => {
      const u = makeUpload(4096, 1024);
      await blobs.begin(u.session);
      for (const id of [0, 1, 3]) await blobs.putBlock(u.session, id, u.blocks[id] as Buffer);
      await expectCode(blobs.complete(u.session), "STORAGE_UNAVAILABLE"); // as the contract says of a missing block
      await expectCode(blobs.read(refOf(u)), "CARVE_NOT_FOUND");
      await blobs.putBlock(u.session, 2, u.blocks[2] as Buffer);
      expect((await blobs.complete(u.session)).sha256).toBe(sha256(u.bytes));
    });

    it("completes idempotently: a second call returns the same facts", async () => {
      const u = makeUpload(5000, 1024);
      await storeAll(u);
      const first = await blobs.complete(u.session);
      expect(await blobs.complete(u.session)).toEqual(first);
    });

    it("stores concurrent distinct blocks and counts a block sent many times at once exactly once", async () => {
      const u = makeUpload(64 * 1024, 1024);
      await blobs.begin(u.session);
      const writes = await Promise.all([
        ...u.blocks.map((b, i) => blobs.putBlock(u.session, i, b)),
        ...Array.from({ length: 10 }, () => blobs.putBlock(u.session, 7, Buffer.from(u.blocks[7] as Buffer))),
      ]);
      expect(writes.filter((w) => !w.duplicate)).toHaveLength(64);
      expect(writes.some((w) => w.allStored)).toBe(true);
      expect((await blobs.complete(u.session)).sha256).toBe(sha256(u.bytes));
    });

    it("stores blocks larger than 8 MiB byte-exact", async () => {
      const u = makeUpload(2 * 9 * 1024 * 1024 - 5, 9 * 1024 * 1024);
      await storeAll(u, [1, 0]);
      expect((await blobs.complete(u.session)).sha256).toBe(sha256(u.bytes));
      expect(sha256(await readAll((await blobs.read(refOf(u))).stream))).toBe(sha256(u.bytes));
    });

    it("streams inclusive byte ranges", async () => {
      const u = makeUpload(300 * 1024 + 3, 64 * 1024);
      await storeAll(u);
      await blobs.complete(u.session);
      for (const [start, end] of [
        [0, 0],
        [65535, 65536],
        [1000, 250_000],
        [u.bytes.length - 1, u.bytes.length - 1],
      ] as const) {
        expectBytes(await readAll((await blobs.read(refOf(u), { start, end })).stream), u.bytes.subarray(start, end + 1));
      }
    });

    it("keeps uploads apart", async () => {
      const a = makeUpload(3000, 1024);
      const b = makeUpload(3000, 1024);
      await blobs.begin(a.session);
      await blobs.begin(b.session);
      for (let i = 0; i < 3; i++) {
        await blobs.putBlock(a.session, i, a.blocks[i] as Buffer);
        await blobs.putBlock(b.session, i, b.blocks[i] as Buffer);
      }
      await blobs.complete(a.session);
      await blobs.complete(b.session);
      expectBytes(await readAll((await blobs.read(refOf(a))).stream), a.bytes);
      expectBytes(await readAll((await blobs.read(refOf(b))).stream), b.bytes);
    });

    it("begins idempotently (a retried start) without losing stored blocks", async () => {
      const u = makeUpload(3000, 1024);
      await blobs.begin(u.session);
      await blobs.putBlock(u.session, 0, u.blocks[0] as Buffer);
      await blobs.begin(u.session);
      expect((await blobs.progress(u.session, 10))?.blocksReceived).toBe(1);
    });

    it("keeps a receiving upload across a restart and completes it byte-exact", async () => {
      const u = makeUpload(5000, 1024);
      await blobs.begin(u.session);
      for (const id of [0, 2, 4]) await blobs.putBlock(u.session, id, u.blocks[id] as Buffer);
      await blobs.close();
      blobs = await harness.open();
      expect(await blobs.progress(u.session, 10)).toMatchObject({ blocksReceived: 3, missing: [1, 3] });
      expect(await blobs.putBlock(u.session, 2, u.blocks[2] as Buffer)).toMatchObject({ duplicate: true });
      await blobs.putBlock(u.session, 1, u.blocks[1] as Buffer);
      expect((await blobs.putBlock(u.session, 3, u.blocks[3] as Buffer)).allStored).toBe(true);
      expect((await blobs.complete(u.session)).sha256).toBe(sha256(u.bytes));
      await blobs.close();
      blobs = await harness.open();
      expectBytes(await readAll((await blobs.read(refOf(u))).stream), u.bytes);
    });

    describe("imports", () => {
      const target = () => ({ carveId: randomUUID(), sessionId: randomBytes(16).toString("hex") });

      it("streams an archive in and publishes it with its facts", async () => {
        const bytes = randomBytes(3 * 1024 * 1024 + 11);
        const t = target();
        const facts = await blobs.importArchive(t, chunksOf(bytes, 100_000), { maxBytes: bytes.length, expectedSha256: sha256(bytes).toUpperCase() });
        expect(facts).toEqual({ sha256: sha256(bytes), compression: "none", size: bytes.length });
        expectBytes(await readAll((await blobs.read({ ...t, compression: "none", size: bytes.length })).stream), bytes);
      });

      it("keeps nothing when the archive is too large, empty, corrupt or cut off", async () => {
        const bytes = randomBytes(200_000);
        await expectCode(blobs.importArchive(target(), chunksOf(bytes, 10_000), { maxBytes: 150_000 }), "IMPORT_TOO_LARGE");
        await expectCode(blobs.importArchive(target(), chunksOf(Buffer.alloc(0), 1), { maxBytes: 10 }), "IMPORT_EMPTY");
        await expectCode(
          blobs.importArchive(target(), chunksOf(bytes, 10_000), { maxBytes: bytes.length, expectedSha256: "0".repeat(64) }),
          "IMPORT_HASH_MISMATCH",
        );
        async function* failing(): AsyncGenerator<Buffer> {
          yield await Promise.resolve(bytes.subarray(0, 1000));
          throw new Error("client went away");
        }
        await expectCode(blobs.importArchive(target(), failing(), { maxBytes: bytes.length }), "IMPORT_ABORTED");
        async function* refusing(): AsyncGenerator<Buffer> {
          yield await Promise.resolve(bytes.subarray(0, 1000));
          throw new AppError("IMPORT_MALFORMED");
        }
        await expectCode(blobs.importArchive(target(), refusing(), { maxBytes: bytes.length }), "IMPORT_MALFORMED");
        expect(await harness.leftovers()).toEqual([]);
      });

      it("reads a zstd import as zstd", async () => {
        const bytes = Buffer.concat([ZSTD_MAGIC, randomBytes(5000)]);
        expect((await blobs.importArchive(target(), Readable.from([bytes]), { maxBytes: 1e6 })).compression).toBe("zstd");
      });
    });

    describe("deletion", () => {
      it("removes a published archive and a receiving upload, idempotently, leaving nothing", async () => {
        const done = makeUpload(3000, 1024);
        await storeAll(done);
        await blobs.complete(done.session);
        const partial = makeUpload(3000, 1024);
        await blobs.begin(partial.session);
        await blobs.putBlock(partial.session, 1, partial.blocks[1] as Buffer);
        expect(await blobs.delete(done.session)).toBeGreaterThanOrEqual(0);
        await blobs.delete(partial.session);
        await blobs.delete(partial.session);
        await expectCode(blobs.read(refOf(done)), "CARVE_NOT_FOUND");
        await expectCode(blobs.putBlock(partial.session, 0, partial.blocks[0] as Buffer), "UNKNOWN_SESSION");
        await expectCode(blobs.putBlock(done.session, 0, done.blocks[0] as Buffer), "UNKNOWN_SESSION");
        expect(await blobs.progress(partial.session, 10)).toBeNull();
        expect(await harness.leftovers()).toEqual([]);
      });

      it("keeps other carves intact", async () => {
        const keep = makeUpload(3000, 1024);
        const drop = makeUpload(3000, 1024);
        await storeAll(keep);
        await storeAll(drop);
        await blobs.complete(keep.session);
        await blobs.complete(drop.session);
        await blobs.delete(drop.session);
        expectBytes(await readAll((await blobs.read(refOf(keep))).stream), keep.bytes);
      });
    });

    it("reports health and free space (a positive number, or null when the backend cannot tell)", async () => {
      expect((await blobs.health()).ok).toBe(true);
      const free = await blobs.freeBytes();
      expect(free === null || free > 0).toBe(true);
    });

    it("fails every call after close", async () => {
      const u = makeUpload(2048, 1024);
      await blobs.begin(u.session);
      await blobs.close();
      await expectCode(blobs.putBlock(u.session, 0, u.blocks[0] as Buffer), "STORAGE_UNAVAILABLE");
      await expectCode(blobs.begin(makeUpload(10, 10).session), "STORAGE_UNAVAILABLE");
      expect((await blobs.health()).ok).toBe(false);
      blobs = await harness.open();
    });
  });
}
