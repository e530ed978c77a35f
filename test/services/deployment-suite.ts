/**
 * The whole-deployment suite: every rule that spans catalog, blob store and audit log, through the services
 * (test/services/services-as-store.ts). Every deployment runs all of it: a case that does not hold for one
 * is a bug in that backend, never a reason to skip (see docs/house-style.md).
 */
import { randomBytes, randomUUID } from "node:crypto";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AppError, type ErrorCode } from "../../src/errors.js";
import type { DeploymentStore as CarveStore } from "./services-as-store.js";
import { makeCarve, readAll, sha256, shuffled, type TestCarve } from "../support/carve-data.js";

export interface StoreHarness {
  /** Opens a store over this harness's storage; a second open after close() sees the same data. */
  open(options?: { now?: () => Date }): Promise<CarveStore>;
  /** Removes the storage. */
  destroy(): Promise<void>;
  /** Leaves `carveId` as a crash right after the first step of a delete would (marked, nothing removed). */
  interruptDelete(carveId: string, at: Date): Promise<void>;
  /** Names of whatever the backend still holds for any carve (files, documents); [] when empty. */
  leftovers(): Promise<string[]>;
}

async function expectCode(promise: Promise<unknown>, code: ErrorCode): Promise<void> {
  const err = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err, `expected ${code}`).toBeInstanceOf(AppError);
  expect((err as AppError).code).toBe(code);
}

async function upload(store: CarveStore, carve: TestCarve, order?: number[]): Promise<number> {
  const { session } = await store.createSession(carve.spec, randomUUID().replaceAll("-", ""));
  let completions = 0;
  for (const id of order ?? carve.blocks.map((_, i) => i)) {
    const r = await store.putBlock(session, id, carve.blocks[id] as Buffer);
    if (r.completedNow) completions++;
  }
  return completions;
}

async function archiveBytes(store: CarveStore, carveId: string): Promise<Buffer> {
  return readAll((await store.openArchive(carveId)).stream);
}

export function carveStoreConformance(name: string, makeHarness: () => Promise<StoreHarness>): void {
  describe(`deployment conformance: ${name}`, () => {
    let harness: StoreHarness;
    let store: CarveStore;

    beforeEach(async () => {
      harness = await makeHarness();
      store = await harness.open();
    });
    afterEach(async () => {
      await store.close();
      await harness.destroy();
    });

    describe("sessions", () => {
      it("creates a session and finds it by id", async () => {
        const carve = makeCarve({ size: 3000, blockSize: 1024 });
        const { session, created } = await store.createSession(carve.spec, "sess0001");
        expect(created).toBe(true);
        expect(session.sessionId).toBe("sess0001");
        expect(session.carveId).toBe(carve.spec.carveId);
        const found = await store.findSession("sess0001");
        expect(found).toMatchObject({
          carveId: carve.spec.carveId,
          requestId: carve.spec.requestId,
          nodeKeySha256: sha256(Buffer.from("node-key-1")),
          blockCount: 3,
          blockSize: 1024,
          carveSize: 3000,
          agent: {
            address: "127.0.0.1",
            userAgent: "osquery/5.23.0",
            certificate: { subjectDn: "CN=agent-1,O=Example", fingerprintSha256: "AB:CD:EF:01", source: "proxy" },
          },
        });
        const record = await store.getCarve(carve.spec.carveId);
        expect(record.status).toBe("receiving");
        expect(record.blocksReceived).toBe(0);
        expect(record.bytesReceived).toBe(0);
        expect(record.sha256).toBeNull();
      });

      it("returns the existing session, writing nothing, when the carve_id already has one", async () => {
        const carve = makeCarve({ size: 2048, blockSize: 1024 });
        await store.createSession(carve.spec, "first001");
        const again = await store.createSession({ ...carve.spec, requestId: "other-request" }, "second01");
        expect(again.created).toBe(false);
        expect(again.session.sessionId).toBe("first001");
        expect(again.session.requestId).toBe(carve.spec.requestId);
        await expectCode(store.findSession("second01"), "UNKNOWN_SESSION");
      });

      it("lets exactly one of many concurrent starts of one carve_id win", async () => {
        const carve = makeCarve({ size: 2048, blockSize: 1024 });
        const results = await Promise.all(
          Array.from({ length: 8 }, (_, i) => store.createSession(carve.spec, `race000${i}`)),
        );
        expect(results.filter((r) => r.created)).toHaveLength(1);
        expect(new Set(results.map((r) => r.session.sessionId)).size).toBe(1);
      });

      it("raises UNKNOWN_SESSION for an id it never issued", async () => {
        await expectCode(store.findSession("does-not-exist"), "UNKNOWN_SESSION");
        await expectCode(store.findSession("../../etc/passwd"), "UNKNOWN_SESSION");
      });

      it("refuses identifiers that could escape into paths or keys", async () => {
        const carve = makeCarve({ size: 1024, blockSize: 1024, carveId: "../escape" });
        await expectCode(store.createSession(carve.spec, "sess0002"), "INVALID_START");
        const ok = makeCarve({ size: 1024, blockSize: 1024 });
        await expectCode(store.createSession(ok.spec, "../sess"), "INVALID_START");
      });

      it("raises CARVE_NOT_FOUND for unknown and path-like carve ids", async () => {
        await expectCode(store.getCarve(randomUUID()), "CARVE_NOT_FOUND");
        await expectCode(store.getCarve("../meta/x"), "CARVE_NOT_FOUND");
        await expectCode(store.openArchive(randomUUID()), "CARVE_NOT_FOUND");
        await expectCode(store.missingBlocks(randomUUID(), 10), "CARVE_NOT_FOUND");
      });
    });

    describe("blocks and completion", () => {
      it("completes in order, once, with the right SHA-256 and bytes", async () => {
        const carve = makeCarve({ size: 10 * 1024 + 17, blockSize: 1024 });
        const { session } = await store.createSession(carve.spec, "inorder1");
        const results = [];
        for (let i = 0; i < carve.blocks.length; i++) {
          results.push(await store.putBlock(session, i, carve.blocks[i] as Buffer));
        }
        expect(results.slice(0, -1).every((r) => !r.complete && !r.completedNow && !r.duplicate)).toBe(true);
        expect(results.at(-1)).toEqual({ duplicate: false, complete: true, completedNow: true });
        const record = await store.getCarve(carve.spec.carveId);
        expect(record).toMatchObject({
          status: "complete",
          blocksReceived: 11,
          bytesReceived: carve.bytes.length,
          sha256: sha256(carve.bytes),
          compression: "none",
        });
        expect(record.completedAt).toBeInstanceOf(Date);
        expect((await archiveBytes(store, carve.spec.carveId)).equals(carve.bytes)).toBe(true);
      });

      it.each([
        ["reverse", (n: number) => Array.from({ length: n }, (_, i) => n - 1 - i)],
        ["shuffled", (n: number) => shuffled(Array.from({ length: n }, (_, i) => i), 7)],
        ["last first", (n: number) => [n - 1, ...Array.from({ length: n - 1 }, (_, i) => i)]],
      ])("accepts blocks in %s order and stores each at its offset", async (_label, order) => {
        const carve = makeCarve({ size: 40 * 512 + 3, blockSize: 512 });
        const completions = await upload(store, carve, order(carve.blocks.length));
        expect(completions).toBe(1);
        const record = await store.getCarve(carve.spec.carveId);
        expect(record.sha256).toBe(sha256(carve.bytes));
        expect((await archiveBytes(store, carve.spec.carveId)).equals(carve.bytes)).toBe(true);
      });

      it("handles a carve_size that is a multiple of block_size (last block full)", async () => {
        const carve = makeCarve({ size: 4096, blockSize: 1024 });
        expect(carve.blocks).toHaveLength(4);
        expect(await upload(store, carve)).toBe(1);
        expect((await store.getCarve(carve.spec.carveId)).sha256).toBe(sha256(carve.bytes));
      });

      it("handles a one-block carve (osquery's empty 1024-byte tar)", async () => {
        const carve = makeCarve({ size: 1024, blockSize: 8192, bytes: Buffer.alloc(1024) });
        expect(await upload(store, carve)).toBe(1);
        const record = await store.getCarve(carve.spec.carveId);
        expect(record.sha256).toBe(sha256(Buffer.alloc(1024)));
        expect(record.compression).toBe("none");
      });

      it("detects zstd by its magic number", async () => {
        const bytes = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), randomBytes(3000)]);
        const carve = makeCarve({ size: bytes.length, blockSize: 1000, bytes });
        await upload(store, carve);
        const record = await store.getCarve(carve.spec.carveId);
        expect(record.compression).toBe("zstd");
        expect((await archiveBytes(store, carve.spec.carveId)).equals(bytes)).toBe(true);
      });

      it("acknowledges an identical re-send as a duplicate and changes nothing", async () => {
        const carve = makeCarve({ size: 5000, blockSize: 1000 });
        const { session } = await store.createSession(carve.spec, "dup00001");
        await store.putBlock(session, 0, carve.blocks[0] as Buffer);
        await store.putBlock(session, 1, carve.blocks[1] as Buffer);
        const again = await store.putBlock(session, 1, Buffer.from(carve.blocks[1] as Buffer));
        expect(again).toEqual({ duplicate: true, complete: false, completedNow: false });
        const record = await store.getCarve(carve.spec.carveId);
        expect(record.blocksReceived).toBe(2);
        expect(record.bytesReceived).toBe(2000);
      });

      it("refuses a conflicting re-send and keeps the original bytes", async () => {
        const carve = makeCarve({ size: 5000, blockSize: 1000 });
        const { session } = await store.createSession(carve.spec, "conflict");
        await store.putBlock(session, 2, carve.blocks[2] as Buffer);
        const evil = Buffer.from(carve.blocks[2] as Buffer);
        evil[10] = (evil[10] as number) ^ 0xff;
        await expectCode(store.putBlock(session, 2, evil), "BLOCK_CONFLICT");
        for (const id of [0, 1, 3, 4]) await store.putBlock(session, id, carve.blocks[id] as Buffer);
        const record = await store.getCarve(carve.spec.carveId);
        expect(record.sha256).toBe(sha256(carve.bytes));
        expect((await archiveBytes(store, carve.spec.carveId)).equals(carve.bytes)).toBe(true);
      });

      it("answers duplicates after completion as success and still refuses conflicts", async () => {
        const carve = makeCarve({ size: 3000, blockSize: 1000 });
        await upload(store, carve);
        const session = await store.findSession((await store.getCarve(carve.spec.carveId)).sessionId);
        expect(await store.putBlock(session, 2, carve.blocks[2] as Buffer)).toEqual({
          duplicate: true,
          complete: true,
          completedNow: false,
        });
        await expectCode(store.putBlock(session, 0, Buffer.alloc(1000, 1)), "BLOCK_CONFLICT");
        expect((await archiveBytes(store, carve.spec.carveId)).equals(carve.bytes)).toBe(true);
      });

      it("never reports a carve with a gap as complete", async () => {
        const carve = makeCarve({ size: 10 * 100, blockSize: 100 });
        const { session } = await store.createSession(carve.spec, "gapped01");
        for (const id of [0, 1, 2, 4, 5, 6, 7, 9]) {
          const r = await store.putBlock(session, id, carve.blocks[id] as Buffer);
          expect(r.complete).toBe(false);
        }
        const record = await store.getCarve(carve.spec.carveId);
        expect(record.status).toBe("receiving");
        expect(record.blocksReceived).toBe(8);
        expect(record.bytesReceived).toBe(800);
        expect(await store.missingBlocks(carve.spec.carveId, 10)).toEqual([3, 8]);
        expect(await store.missingBlocks(carve.spec.carveId, 1)).toEqual([3]);
        await expectCode(store.openArchive(carve.spec.carveId), "CARVE_NOT_COMPLETE");
      });

      it("refuses block ids out of range and wrong lengths without storing anything", async () => {
        const carve = makeCarve({ size: 2500, blockSize: 1000 });
        const { session } = await store.createSession(carve.spec, "range001");
        await expectCode(store.putBlock(session, 3, Buffer.alloc(1000)), "BLOCK_OUT_OF_RANGE");
        await expectCode(store.putBlock(session, -1, Buffer.alloc(1000)), "BLOCK_OUT_OF_RANGE");
        await expectCode(store.putBlock(session, 0, Buffer.alloc(999)), "BLOCK_LENGTH_MISMATCH");
        await expectCode(store.putBlock(session, 2, Buffer.alloc(1000)), "BLOCK_LENGTH_MISMATCH");
        expect((await store.getCarve(carve.spec.carveId)).blocksReceived).toBe(0);
      });

      it("completes exactly once when every block arrives concurrently", async () => {
        const carve = makeCarve({ size: 64 * 256, blockSize: 256 });
        const { session } = await store.createSession(carve.spec, "concur01");
        const results = await Promise.all(
          carve.blocks.map((b, i) => store.putBlock(session, i, b)),
        );
        expect(results.filter((r) => r.completedNow)).toHaveLength(1);
        expect((await store.getCarve(carve.spec.carveId)).sha256).toBe(sha256(carve.bytes));
      });

      it("completes exactly once when the last block is sent many times at once", async () => {
        const carve = makeCarve({ size: 8 * 256, blockSize: 256 });
        const { session } = await store.createSession(carve.spec, "lastrace");
        for (let i = 0; i < 7; i++) await store.putBlock(session, i, carve.blocks[i] as Buffer);
        const results = await Promise.all(
          Array.from({ length: 6 }, () => store.putBlock(session, 7, Buffer.from(carve.blocks[7] as Buffer))),
        );
        expect(results.filter((r) => r.completedNow)).toHaveLength(1);
        expect(results.every((r) => r.complete)).toBe(true);
        expect(results.filter((r) => r.duplicate)).toHaveLength(5);
      });

      it("keeps carves apart", async () => {
        const a = makeCarve({ size: 3000, blockSize: 1000 });
        const b = makeCarve({ size: 3000, blockSize: 1000 });
        const sa = (await store.createSession(a.spec, "carve00a")).session;
        const sb = (await store.createSession(b.spec, "carve00b")).session;
        for (let i = 0; i < 3; i++) {
          await store.putBlock(sa, i, a.blocks[i] as Buffer);
          await store.putBlock(sb, i, b.blocks[i] as Buffer);
        }
        expect((await archiveBytes(store, a.spec.carveId)).equals(a.bytes)).toBe(true);
        expect((await archiveBytes(store, b.spec.carveId)).equals(b.bytes)).toBe(true);
      });
    });

    describe("reading", () => {
      it("streams an inclusive byte range", async () => {
        const carve = makeCarve({ size: 5000, blockSize: 1000 });
        await upload(store, carve);
        const part = await readAll((await store.openArchive(carve.spec.carveId, { start: 999, end: 2500 })).stream);
        expect(part.equals(carve.bytes.subarray(999, 2501))).toBe(true);
        const last = await readAll((await store.openArchive(carve.spec.carveId, { start: 4999, end: 4999 })).stream);
        expect(last.equals(carve.bytes.subarray(4999))).toBe(true);
      });

      it("lists newest first with filters and a cursor", async () => {
        await store.close();
        let t = Date.parse("2026-01-01T00:00:00Z");
        store = await harness.open({ now: () => new Date(t) });
        const carves: TestCarve[] = [];
        for (let i = 0; i < 5; i++) {
          t += 60_000;
          const c = makeCarve({ size: 1000, blockSize: 1000, nodeKey: i % 2 === 0 ? "even" : "odd" });
          carves.push(c);
          const { session } = await store.createSession(c.spec, `list000${i}`);
          if (i < 3) await store.putBlock(session, 0, c.blocks[0] as Buffer);
        }
        const all = await store.listCarves({ limit: 10 });
        expect(all.carves.map((c) => c.carveId)).toEqual(carves.map((c) => c.spec.carveId).reverse());
        expect(all.nextCursor).toBeNull();

        const complete = await store.listCarves({ limit: 10, status: "complete" });
        expect(complete.carves.map((c) => c.carveId)).toEqual(carves.slice(0, 3).map((c) => c.spec.carveId).reverse());
        const receiving = await store.listCarves({ limit: 10, status: "receiving" });
        expect(receiving.carves).toHaveLength(2);
        const even = await store.listCarves({ limit: 10, nodeSha256Prefix: sha256(Buffer.from("even")).slice(0, 12) });
        expect(even.carves).toHaveLength(3);

        const since = new Date(Date.parse("2026-01-01T00:02:00Z"));
        const until = new Date(Date.parse("2026-01-01T00:04:00Z"));
        const window = await store.listCarves({ limit: 10, since, until });
        expect(window.carves.map((c) => c.carveId)).toEqual([carves[2]!.spec.carveId, carves[1]!.spec.carveId]);

        const page1 = await store.listCarves({ limit: 2 });
        expect(page1.carves).toHaveLength(2);
        expect(page1.nextCursor).not.toBeNull();
        const page2 = await store.listCarves({ limit: 2, cursor: page1.nextCursor as string });
        const page3 = await store.listCarves({ limit: 2, cursor: page2.nextCursor as string });
        expect(page3.nextCursor).toBeNull();
        expect([...page1.carves, ...page2.carves, ...page3.carves].map((c) => c.carveId)).toEqual(
          all.carves.map((c) => c.carveId),
        );
        await expectCode(store.listCarves({ limit: 2, cursor: "not-a-cursor" }), "INVALID_QUERY");
      });

      it("reports its free space as a positive number, or null when the backend cannot tell", async () => {
        const free = await store.freeBytes();
        expect(free === null || (Number.isSafeInteger(free) && free > 0)).toBe(true);
      });

      it("reports healthy storage", async () => {
        const health = await store.health();
        expect(health.ok).toBe(true);
        expect(health.backend).toBe(store.backend);
      });
    });

    describe("deletion", () => {
      it("deletes a complete carve and everything it owns", async () => {
        const carve = makeCarve({ size: 3000, blockSize: 1000 });
        await upload(store, carve);
        const record = await store.getCarve(carve.spec.carveId);
        expect(await store.deleteCarve(carve.spec.carveId)).toEqual({ deleted: true, bytesFreed: 3000 });
        await expectCode(store.getCarve(carve.spec.carveId), "CARVE_NOT_FOUND");
        await expectCode(store.openArchive(carve.spec.carveId), "CARVE_NOT_FOUND");
        await expectCode(store.findSession(record.sessionId), "UNKNOWN_SESSION");
        await expectCode(store.deleteCarve(carve.spec.carveId), "CARVE_NOT_FOUND");
        expect((await store.listCarves({ limit: 10 })).carves).toHaveLength(0);
      });

      it("deletes a receiving carve: its session stops accepting blocks, and the carve_id can start again", async () => {
        const carve = makeCarve({ size: 3000, blockSize: 1000 });
        const { session } = await store.createSession(carve.spec, "delrecv1");
        await store.putBlock(session, 0, carve.blocks[0] as Buffer);
        expect(await store.deleteCarve(carve.spec.carveId)).toEqual({ deleted: true, bytesFreed: 1000 });
        await expectCode(store.putBlock(session, 1, carve.blocks[1] as Buffer), "UNKNOWN_SESSION");
        await expectCode(store.missingBlocks(carve.spec.carveId, 5), "CARVE_NOT_FOUND");
        const again = await store.createSession(carve.spec, "delrecv2");
        expect(again.created).toBe(true);
        expect(await upload(store, carve)).toBe(1);
        expect((await store.getCarve(carve.spec.carveId)).sha256).toBe(sha256(carve.bytes));
      });

      it("keeps other carves intact", async () => {
        const a = makeCarve({ size: 2000, blockSize: 1000 });
        const b = makeCarve({ size: 2000, blockSize: 1000 });
        await upload(store, a);
        await upload(store, b);
        await store.deleteCarve(a.spec.carveId);
        expect((await archiveBytes(store, b.spec.carveId)).equals(b.bytes)).toBe(true);
      });
    });

    describe("retention support", () => {
      const DAY = 86_400_000;
      let t: number;
      const criteria = (now: number, days = 30, idleMs = 6 * 3_600_000) => ({
        completedBefore: new Date(now - days * DAY),
        idleBefore: new Date(now - idleMs),
        staleDeleteBefore: new Date(now - 600_000),
      });

      beforeEach(async () => {
        await store.close();
        t = Date.parse("2026-05-01T00:00:00Z");
        store = await harness.open({ now: () => new Date(t) });
      });

      it("expires complete carves strictly after the retention period and abandoned ones after idling", async () => {
        const done = makeCarve({ size: 2000, blockSize: 1000 });
        await upload(store, done); // completed at t0
        const t0 = t;
        const idle = makeCarve({ size: 3000, blockSize: 1000 });
        const { session } = await store.createSession(idle.spec, "retidle1");
        await store.putBlock(session, 0, idle.blocks[0] as Buffer); // last activity at t0
        // exactly at the limits: nothing goes
        expect(await store.findExpired(criteria(t0 + 30 * DAY, 30, 30 * DAY), 10)).toEqual([]);
        // one millisecond past them: both go, oldest first, with their sizes
        const expired = await store.findExpired(criteria(t0 + 30 * DAY + 1, 30, 30 * DAY), 10);
        expect(expired).toHaveLength(2);
        expect(expired).toEqual(
          expect.arrayContaining([
            { carveId: done.spec.carveId, reason: "retention", bytes: 2000 },
            { carveId: idle.spec.carveId, reason: "abandoned", bytes: 1000 },
          ]),
        );
        expect(await store.findExpired(criteria(t0 + 30 * DAY + 1, 30, 30 * DAY), 1)).toHaveLength(1);
      });

      it("never expires a carve that received a block after it was selected", async () => {
        const carve = makeCarve({ size: 3000, blockSize: 1000 });
        const { session } = await store.createSession(carve.spec, "retlive1");
        await store.putBlock(session, 0, carve.blocks[0] as Buffer);
        t += 7 * 3_600_000;
        const c = criteria(t);
        expect((await store.findExpired(c, 10)).map((x) => x.carveId)).toEqual([carve.spec.carveId]);
        await store.putBlock(session, 1, carve.blocks[1] as Buffer); // the agent was alive after all
        expect(await store.deleteCarve(carve.spec.carveId, { onlyIfExpired: c })).toEqual({ deleted: false, bytesFreed: 0 });
        await store.putBlock(session, 2, carve.blocks[2] as Buffer);
        expect((await store.getCarve(carve.spec.carveId)).sha256).toBe(sha256(carve.bytes));
      });

      it("counts a carve deleted by concurrent retention runs once", async () => {
        const carve = makeCarve({ size: 2000, blockSize: 1000 });
        await upload(store, carve);
        t += 31 * DAY;
        const c = criteria(t);
        const results = await Promise.all(
          Array.from({ length: 4 }, () =>
            store.deleteCarve(carve.spec.carveId, { onlyIfExpired: c }).catch((err: unknown) => {
              // A loser may find the carve already gone; any other error is a failure of the store.
              if (err instanceof AppError && err.code === "CARVE_NOT_FOUND") return { deleted: false, bytesFreed: 0 };
              throw err;
            }),
          ),
        );
        expect(results.filter((r) => r.deleted)).toEqual([{ deleted: true, bytesFreed: 2000 }]);
        expect(await harness.leftovers()).toEqual([]);
      });

      it("exempts held carves from retention and from deletion until the hold is lifted", async () => {
        const carve = makeCarve({ size: 2000, blockSize: 1000 });
        await upload(store, carve);
        const hold = { by: "alice", reason: "case 42", at: new Date(t) };
        const record = await store.setHold(carve.spec.carveId, hold);
        expect(record.hold).toEqual(hold);
        expect((await store.getCarve(carve.spec.carveId)).hold).toEqual(hold);
        t += 365 * DAY;
        const c = criteria(t);
        expect(await store.findExpired(c, 10)).toEqual([]);
        expect(await store.deleteCarve(carve.spec.carveId, { onlyIfExpired: c })).toEqual({ deleted: false, bytesFreed: 0 });
        await expectCode(store.deleteCarve(carve.spec.carveId), "CARVE_ON_HOLD");
        expect((await store.setHold(carve.spec.carveId, null)).hold).toBeNull();
        expect((await store.findExpired(c, 10)).map((x) => x.carveId)).toEqual([carve.spec.carveId]);
        await expectCode(store.setHold(randomUUID(), hold), "CARVE_NOT_FOUND");
      });

      it("finishes a delete interrupted by a crash, and only once it is stale", async () => {
        const carve = makeCarve({ size: 2000, blockSize: 1000 });
        await upload(store, carve);
        await store.close(); // the process dies right after the first step of a delete...
        await harness.interruptDelete(carve.spec.carveId, new Date(t));
        store = await harness.open({ now: () => new Date(t) }); // ...and a new one starts
        await expectCode(store.getCarve(carve.spec.carveId), "CARVE_NOT_FOUND");
        expect((await store.listCarves({ limit: 10 })).carves).toEqual([]);
        expect(await store.findExpired(criteria(t), 10)).toEqual([]); // maybe still running elsewhere
        t += 3_600_000;
        const c = criteria(t);
        expect(await store.findExpired(c, 10)).toEqual([{ carveId: carve.spec.carveId, reason: "unfinished-delete", bytes: 0 }]);
        expect((await store.deleteCarve(carve.spec.carveId, { onlyIfExpired: c })).deleted).toBe(true);
        expect(await harness.leftovers()).toEqual([]);
        await expectCode(store.deleteCarve(carve.spec.carveId, { onlyIfExpired: c }), "CARVE_NOT_FOUND");
      });

      it("leaves nothing behind when carves are deleted", async () => {
        const a = makeCarve({ size: 3000, blockSize: 1000 });
        const b = makeCarve({ size: 3000, blockSize: 1000 });
        await upload(store, a);
        const { session } = await store.createSession(b.spec, "retleft1");
        await store.putBlock(session, 2, b.blocks[2] as Buffer);
        expect((await harness.leftovers()).length).toBeGreaterThan(0);
        await store.deleteCarve(a.spec.carveId);
        await store.deleteCarve(b.spec.carveId);
        expect(await harness.leftovers()).toEqual([]);
      });
    });

    describe("imports and verifications", () => {
      const source = {
        host: "ws-042",
        originalPath: "C:/Users/x/evil.exe",
        description: "EDR export",
        importedBy: { displayName: "alice", entityId: "ent-1" },
      };
      const spec = (carveId: string = randomUUID()) => ({
        carveId,
        sessionId: randomUUID().replaceAll("-", ""),
        source,
        agent: { address: "10.0.0.7", userAgent: "curl/8", certificate: null },
      });
      /** The bytes in uneven pieces, as a network delivers them; `fail` breaks the stream half-way. */
      async function* pieces(bytes: Buffer, fail?: Error): AsyncGenerator<Buffer> {
        let off = 0;
        let i = 0;
        while (off < bytes.length) {
          const n = [1, 7, 65536, 300_000, 1024 * 1024 + 3][i++ % 5] as number;
          yield bytes.subarray(off, off + n);
          off += n;
          await Promise.resolve(); // as a socket would: later chunks arrive on later turns
          if (fail !== undefined && off > bytes.length / 2) throw fail;
        }
      }

      it("streams an archive in and makes it a complete carve like any other", async () => {
        const bytes = randomBytes(3 * 1024 * 1024 + 11);
        const s = spec();
        const record = await store.importCarve(s, pieces(bytes), { maxBytes: 10 * 1024 * 1024, expectedSha256: sha256(bytes).toUpperCase() });
        expect(record).toMatchObject({
          carveId: s.carveId,
          status: "complete",
          origin: "import",
          imported: source,
          carveSize: bytes.length,
          bytesReceived: bytes.length,
          sha256: sha256(bytes),
          compression: "none",
          verifications: [],
          agent: { address: "10.0.0.7" },
        });
        expect((await archiveBytes(store, s.carveId)).equals(bytes)).toBe(true);
        expect((await store.listCarves({ limit: 10 })).carves.map((c) => c.carveId)).toContain(s.carveId);
        const zst = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), randomBytes(100)]);
        expect((await store.importCarve(spec(), pieces(zst), { maxBytes: 1000 })).compression).toBe("zstd");
      });

      it.each([
        ["over the size limit", { maxBytes: 1000 }, undefined, "IMPORT_TOO_LARGE"],
        ["with another sha256 than expected", { maxBytes: 1e9, expectedSha256: "0".repeat(64) }, undefined, "IMPORT_HASH_MISMATCH"],
        ["whose source breaks (client gone)", { maxBytes: 1e9 }, new Error("aborted"), "IMPORT_ABORTED"],
        ["whose source reports a multipart limit", { maxBytes: 1e9 }, new AppError("IMPORT_TOO_LARGE"), "IMPORT_TOO_LARGE"],
      ] as const)("keeps nothing of an import %s", async (_label, limits, fail, code) => {
        const bytes = randomBytes(2 * 1024 * 1024);
        const s = spec();
        await expectCode(store.importCarve(s, pieces(bytes, fail), limits), code);
        await expectCode(store.getCarve(s.carveId), "CARVE_NOT_FOUND");
        expect(await harness.leftovers()).toEqual([]);
      });

      it("refuses an empty import and a carve id already in use", async () => {
        await expectCode(store.importCarve(spec(), pieces(Buffer.alloc(0)), { maxBytes: 10 }), "IMPORT_EMPTY");
        const carve = makeCarve({ size: 1000, blockSize: 1000 });
        await upload(store, carve);
        await expectCode(store.importCarve(spec(carve.spec.carveId), pieces(randomBytes(10)), { maxBytes: 100 }), "CARVE_ID_CONFLICT");
        expect((await archiveBytes(store, carve.spec.carveId)).equals(carve.bytes)).toBe(true);
      });

      it("records verifications against the host's sha256", async () => {
        const carve = makeCarve({ size: 2000, blockSize: 1000 });
        await upload(store, carve);
        const at = new Date("2026-04-01T10:00:00Z");
        await store.recordVerification(carve.spec.carveId, { claimedSha256: sha256(carve.bytes), match: true, by: "alice", at });
        const record = await store.recordVerification(carve.spec.carveId, { claimedSha256: "ab".repeat(32), match: false, by: "bob", at });
        expect(record.verifications).toEqual([
          { claimedSha256: sha256(carve.bytes), match: true, by: "alice", at },
          { claimedSha256: "ab".repeat(32), match: false, by: "bob", at },
        ]);
        await store.close();
        store = await harness.open();
        expect((await store.getCarve(carve.spec.carveId)).verifications).toHaveLength(2);
        await expectCode(store.recordVerification(randomUUID(), { claimedSha256: "x", match: false, by: null, at }), "CARVE_NOT_FOUND");
      });
    });

    describe("audit trail", () => {
      const event = (i: number, at: Date, carveId: string | null) => ({
        id: `evt-${String(i).padStart(4, "0")}`,
        at,
        action: i % 2 === 0 ? "carve.download" : "carve.read",
        result: "allowed" as const,
        actor: { displayName: "token-alice", entityId: "ent-1", tokenFingerprint: "hmac:abc" },
        client: { address: "10.0.0.9", certificateSubject: null, requestId: `req-${i}` },
        carveId,
        detail: { bytesSent: i * 10, range: null },
      });

      it("stores events durably and lists them newest first with filters and a cursor", async () => {
        const base = Date.parse("2026-03-01T23:59:58Z");
        for (let i = 0; i < 6; i++) {
          await store.appendAudit(event(i, new Date(base + i * 1000), i < 4 ? "carve-a" : "carve-b"));
        }
        await store.close();
        store = await harness.open();
        const all = await store.listAudit({ limit: 10 });
        expect(all.events.map((e) => e.id)).toEqual(["evt-0005", "evt-0004", "evt-0003", "evt-0002", "evt-0001", "evt-0000"]);
        expect(all.events[0]).toEqual(event(5, new Date(base + 5000), "carve-b"));
        expect((await store.listAudit({ limit: 10, carveId: "carve-a" })).events).toHaveLength(4);
        expect((await store.listAudit({ limit: 10, action: "carve.read" })).events.map((e) => e.id)).toEqual([
          "evt-0005",
          "evt-0003",
          "evt-0001",
        ]);
        const window = await store.listAudit({
          limit: 10,
          since: new Date(base + 1000),
          until: new Date(base + 3000),
        });
        expect(window.events.map((e) => e.id)).toEqual(["evt-0002", "evt-0001"]);
        const p1 = await store.listAudit({ limit: 4 });
        const p2 = await store.listAudit({ limit: 4, cursor: p1.nextCursor as string });
        expect(p2.nextCursor).toBeNull();
        expect([...p1.events, ...p2.events].map((e) => e.id)).toEqual(all.events.map((e) => e.id));
      });
    });

    describe("durability", () => {
      it("keeps a receiving carve across a restart and completes it byte-exact", async () => {
        const carve = makeCarve({ size: 20 * 1000 + 1, blockSize: 1000 });
        const { session } = await store.createSession(carve.spec, "restart1");
        for (let i = 0; i < 12; i++) await store.putBlock(session, i, carve.blocks[i] as Buffer);
        await store.close();

        store = await harness.open();
        const found = await store.findSession("restart1");
        expect((await store.getCarve(carve.spec.carveId)).blocksReceived).toBe(12);
        // a block stored before the restart is still recognised as a duplicate
        expect((await store.putBlock(found, 11, carve.blocks[11] as Buffer)).duplicate).toBe(true);
        for (let i = 12; i < carve.blocks.length; i++) await store.putBlock(found, i, carve.blocks[i] as Buffer);
        const record = await store.getCarve(carve.spec.carveId);
        expect(record.status).toBe("complete");
        expect(record.sha256).toBe(sha256(carve.bytes));
        expect((await archiveBytes(store, carve.spec.carveId)).equals(carve.bytes)).toBe(true);
      });

      it("keeps a complete carve across a restart", async () => {
        const carve = makeCarve({ size: 3000, blockSize: 1000 });
        await upload(store, carve);
        await store.close();
        store = await harness.open();
        const record = await store.getCarve(carve.spec.carveId);
        expect(record.status).toBe("complete");
        expect(record.sha256).toBe(sha256(carve.bytes));
        expect((await archiveBytes(store, carve.spec.carveId)).equals(carve.bytes)).toBe(true);
        const session = await store.findSession(record.sessionId);
        expect((await store.putBlock(session, 0, carve.blocks[0] as Buffer)).duplicate).toBe(true);
      });

      it("fails every call after close", async () => {
        await store.close();
        await expectCode(store.getCarve(randomUUID()), "STORAGE_UNAVAILABLE");
        store = await harness.open();
      });
    });

    it("stores large blocks (4 MiB) byte-exact", async () => {
      const carve = makeCarve({ size: 9 * 1024 * 1024 + 5, blockSize: 4 * 1024 * 1024 });
      expect(await upload(store, carve, [2, 0, 1])).toBe(1);
      const record = await store.getCarve(carve.spec.carveId);
      expect(record.sha256).toBe(sha256(carve.bytes));
      expect(sha256(await archiveBytes(store, carve.spec.carveId))).toBe(sha256(carve.bytes));
      void randomBytes;
    });
  });
}
