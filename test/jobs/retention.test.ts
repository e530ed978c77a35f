/**
 * The retention job on both backends, with an injected clock: boundaries, batches that always end, dry
 * runs that change nothing, carves still receiving blocks, holds, a crash in the middle of a delete, and
 * (GridFS) two replicas running the job at once.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { MongoClient } from "mongodb";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, inject, it } from "vitest";
import { RetentionJob, type RetentionOptions } from "../../src/jobs/retention.js";
import type { DeploymentStore as CarveStore } from "../services/services-as-store.js";
import { makeCarve, type TestCarve } from "../support/carve-data.js";
import { openFilesystemStore, openGridfsStore } from "../support/deployment.js";

const DAY = 86_400_000;
const logger = pino({ level: "silent" });
const OPTIONS: RetentionOptions = {
  retentionDays: 30,
  abandonedAfterSeconds: 6 * 3600,
  staleDeleteAfterSeconds: 600,
  batchSize: 3,
  maxBatchesPerRun: 2,
  intervalSeconds: 3600,
};

interface Backend {
  name: string;
  open(now: () => Date): Promise<CarveStore>;
  cleanup(): Promise<void>;
  /** What a crash right after the first step of a delete leaves behind. */
  interruptDelete(carveId: string, at: Date): Promise<void>;
  shared: boolean;
}

const backends: Array<() => Promise<Backend>> = [
  async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "carve-ret-"));
    return {
      name: "filesystem",
      shared: false,
      open: (now) => openFilesystemStore(dir, { now }),
      cleanup: () => rm(dir, { recursive: true, force: true }),
      interruptDelete: async (carveId, at) => {
        // As a process that died right after marking the carve deleting would leave it (the store is closed).
        const store = await openFilesystemStore(dir);
        await store.services.storage.catalog.update(carveId, {}, { state: "deleting", claim: "dead-process", stateSince: at });
        await store.close();
      },
    };
  },
  () => {
    const uri = inject("mongoUri");
    const database = `carve_ret_${randomBytes(6).toString("hex")}`;
    return Promise.resolve({
      name: "gridfs",
      shared: true,
      open: (now: () => Date) => openGridfsStore(uri, database, { now }),
      cleanup: async () => {
        const c = await MongoClient.connect(uri);
        await c.db(database).dropDatabase();
        await c.close();
      },
      interruptDelete: async (carveId: string, at: Date) => {
        const c = await MongoClient.connect(uri);
        await c
          .db(database)
          .collection("carves.carves")
          .updateOne({ _id: carveId as never }, { $set: { state: "deleting", claim: "dead-process", stateSince: at } });
        await c.close();
      },
    });
  },
];

describe.each([0, 1])("retention job (backend %#)", (index) => {
  let backend: Backend;
  let store: CarveStore;
  let t: number;
  const now = () => new Date(t);

  beforeEach(async () => {
    backend = await backends[index]!();
    t = Date.parse("2026-06-01T00:00:00Z");
    store = await backend.open(now);
  });
  afterEach(async () => {
    await store.close();
    await backend.cleanup();
  });

  async function complete(carve: TestCarve): Promise<void> {
    const { session } = await store.createSession(carve.spec, randomUUID().replaceAll("-", ""));
    for (const [i, b] of carve.blocks.entries()) await store.putBlock(session, i, b);
  }

  it("deletes complete carves after 30 days and abandoned ones after the idle period, exactly at the limits", async () => {
    const old = makeCarve({ size: 2000, blockSize: 1000 });
    await complete(old);
    const abandoned = makeCarve({ size: 3000, blockSize: 1000 });
    const { session } = await store.createSession(abandoned.spec, "abandon1");
    await store.putBlock(session, 0, abandoned.blocks[0]!);
    const job = new RetentionJob({ expiry: store.services.expiry, audit: store.services.audit, logger, options: OPTIONS, now });

    t += 6 * 3600 * 1000; // exactly the idle limit: kept
    expect((await job.runOnce()).deleted).toBe(0);
    t += 1;
    const first = await job.runOnce();
    expect(first).toMatchObject({ deleted: 1, bytesFreed: 1000, byReason: { abandoned: 1, retention: 0 } });
    await expect(store.getCarve(abandoned.spec.carveId)).rejects.toMatchObject({ code: "CARVE_NOT_FOUND" });

    t = Date.parse("2026-06-01T00:00:00Z") + 30 * DAY; // exactly 30 days after completion: kept
    expect((await job.runOnce()).deleted).toBe(0);
    t += 1;
    expect(await job.runOnce()).toMatchObject({ deleted: 1, bytesFreed: 2000, byReason: { retention: 1 } });
    const audit = await store.listAudit({ limit: 10, action: "carve.expire" });
    expect(audit.events.map((e) => e.carveId).sort()).toEqual([abandoned.spec.carveId, old.spec.carveId].sort());
    expect(audit.events[0]?.actor.displayName).toBe("retention");
  });

  it("works in capped batches, reports the backlog and finishes it in later runs", async () => {
    for (let i = 0; i < 8; i++) await complete(makeCarve({ size: 1000, blockSize: 1000 }));
    t += 31 * DAY;
    const job = new RetentionJob({ expiry: store.services.expiry, audit: store.services.audit, logger, options: OPTIONS, now });
    const run1 = await job.runOnce();
    expect(run1).toMatchObject({ deleted: 6, backlog: true });
    const run2 = await job.runOnce();
    expect(run2).toMatchObject({ deleted: 2, backlog: false });
    expect((await store.listCarves({ limit: 100 })).carves).toHaveLength(0);
  });

  it("changes nothing in a dry run and lists what would go", async () => {
    const a = makeCarve({ size: 1000, blockSize: 1000 });
    await complete(a);
    t += 31 * DAY;
    const job = new RetentionJob({ expiry: store.services.expiry, audit: store.services.audit, logger, options: OPTIONS, now });
    const dry = await job.runOnce({ dryRun: true });
    expect(dry).toMatchObject({ dryRun: true, deleted: 0, candidates: [{ carveId: a.spec.carveId, reason: "retention", bytes: 1000 }] });
    expect((await store.getCarve(a.spec.carveId)).status).toBe("complete");
  });

  it("never expires a carve that is still receiving blocks, nor a held one", async () => {
    const live = makeCarve({ size: 10_000, blockSize: 1000 });
    const { session } = await store.createSession(live.spec, "stillrx1");
    const held = makeCarve({ size: 1000, blockSize: 1000 });
    await complete(held);
    await store.setHold(held.spec.carveId, { by: "alice", reason: "case 7", at: now() });
    const job = new RetentionJob({ expiry: store.services.expiry, audit: store.services.audit, logger, options: OPTIONS, now });
    for (let i = 0; i < 10; i++) {
      t += 5 * 3600 * 1000; // a block every 5 hours: slow, but alive (the idle limit is 6 hours)
      await store.putBlock(session, i, live.blocks[i]!);
      expect((await job.runOnce()).deleted).toBe(0);
    }
    expect((await store.getCarve(live.spec.carveId)).status).toBe("complete");
    t += 365 * DAY;
    const run = await job.runOnce();
    expect(run).toMatchObject({ deleted: 1, byReason: { retention: 1 } }); // the old complete carve, not the held one
    await expect(store.getCarve(live.spec.carveId)).rejects.toMatchObject({ code: "CARVE_NOT_FOUND" });
    expect((await store.getCarve(held.spec.carveId)).hold?.reason).toBe("case 7");
  });

  it("finishes a delete a crash interrupted, on a later run", async () => {
    const a = makeCarve({ size: 2000, blockSize: 1000 });
    await complete(a);
    t += 31 * DAY;
    // the first run's process dies right after marking the carve for deletion
    await store.close();
    await backend.interruptDelete(a.spec.carveId, now());
    store = await backend.open(now);
    const job = new RetentionJob({ expiry: store.services.expiry, audit: store.services.audit, logger, options: OPTIONS, now });
    await expect(store.getCarve(a.spec.carveId)).rejects.toMatchObject({ code: "CARVE_NOT_FOUND" });
    expect((await job.runOnce()).deleted).toBe(0); // too fresh: maybe another process is still deleting it
    t += 11 * 60 * 1000;
    expect(await job.runOnce()).toMatchObject({ deleted: 1, byReason: { "unfinished-delete": 1 } });
    expect((await job.runOnce()).deleted).toBe(0);
  });

  it("deletes each carve once when two replicas run the job at once", async () => {
    if (!backend.shared) {
      // one process owns a filesystem data directory; concurrency there is within one store
      const carves = Array.from({ length: 6 }, () => makeCarve({ size: 1000, blockSize: 1000 }));
      for (const c of carves) await complete(c);
      t += 31 * DAY;
      const jobs = [1, 2].map(() => new RetentionJob({ expiry: store.services.expiry, audit: store.services.audit, logger, options: { ...OPTIONS, batchSize: 10 }, now }));
      const [r1, r2] = await Promise.all(jobs.map((j) => j.runOnce()));
      expect(r1!.deleted + r2!.deleted).toBe(6);
      return;
    }
    const other = await backend.open(now);
    try {
      const carves = Array.from({ length: 9 }, () => makeCarve({ size: 1000, blockSize: 1000 }));
      for (const c of carves) await complete(c);
      t += 31 * DAY;
      const jobs = [store, other].map((s) => new RetentionJob({ expiry: s.services.expiry, audit: s.services.audit, logger, options: { ...OPTIONS, batchSize: 10 }, now }));
      const [r1, r2] = await Promise.all(jobs.map((j) => j.runOnce()));
      expect(r1!.deleted + r2!.deleted).toBe(9);
      expect(r1!.bytesFreed + r2!.bytesFreed).toBe(9000);
      expect(r1!.failed + r2!.failed).toBe(0);
      expect((await store.listCarves({ limit: 100 })).carves).toHaveLength(0);
    } finally {
      await other.close();
    }
  });
});
