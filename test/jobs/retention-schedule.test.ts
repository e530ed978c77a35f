/**
 * The retention job as the service schedules it (test/jobs/retention.test.ts covers what one run does): the
 * interval (CARVE_RETENTION_INTERVAL_MINUTES, or `retention.intervalMinutes` in the configuration file) counted
 * from the end of a run; a run slower than the interval is never joined by a second one; and at shutdown a run
 * in progress finishes its current carve, then nothing more starts. A run is made slow deterministically: the
 * service's MongoDB traffic goes through a proxy that stops forwarding at the first expiry's audit write
 * (test/support/mongo-hold-proxy.ts), so the run waits there for as long as the test holds it.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { MongoClient } from "mongodb";
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from "vitest";
import { makeCarve } from "../support/carve-data.js";
import { openGridfsStore } from "../support/deployment.js";
import { startMongoHoldProxy, type MongoHoldProxy, type SeenCommand } from "../support/mongo-hold-proxy.js";
import { startTestService, type TestService } from "../support/service.js";

const DAY = 86_400_000;

interface RunLine {
  time: number;
  deleted: number;
  kept: number;
  failed: number;
}

/** The service's "retention run finished" lines, in order. */
function runs(svc: TestService): RunLine[] {
  return svc.logs
    .entries()
    .filter((e) => e.msg === "retention run finished")
    .map((e) => ({ time: Date.parse(String(e.time)), deleted: Number(e.deleted), kept: Number(e.kept), failed: Number(e.failed) }));
}

async function until<T>(what: string, get: () => T | undefined | false, svc: TestService, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = get();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}:\n${svc.logs.text.slice(-4000)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("the interval, from the environment or the configuration file", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "carve-ret-sched-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it.each([
    ["CARVE_RETENTION_INTERVAL_MINUTES", 1.2, (): Record<string, string> => ({ CARVE_RETENTION_INTERVAL_MINUTES: "0.02" })],
    [
      "retention.intervalMinutes in CARVE_CONFIG",
      1.8,
      (): Record<string, string> => ({ CARVE_CONFIG: path.join(dir, "carve-server.yml") }),
    ],
  ])("%s: a run after start-up, then one each interval after the previous run ended", async (_label, seconds, env) => {
    await writeFile(path.join(dir, "carve-server.yml"), "retention:\n  enabled: true\n  intervalMinutes: 0.03\n");
    const started = Date.now();
    const svc = await startTestService({ CARVE_RETENTION_ENABLED: "true", ...env() });
    try {
      expect(svc.config.retention.intervalMinutes * 60).toBeCloseTo(seconds, 6);
      const lines = await until("four retention runs", () => runs(svc).length >= 4 && runs(svc), svc);
      expect((lines[0] as RunLine).time - started).toBeGreaterThanOrEqual(1000 - 5); // the first, 1 s after start-up
      for (let i = 1; i < lines.length; i++) {
        // a run begins `seconds` after the previous one ended, so it ends at least that much later (pino's
        // times are whole milliseconds)
        expect((lines[i] as RunLine).time - (lines[i - 1] as RunLine).time).toBeGreaterThanOrEqual(seconds * 1000 - 2);
      }
    } finally {
      await svc.dispose();
    }
  });
});

describe("GridFS behind a proxy that stalls the first expiry", () => {
  const CARVES = 6;
  let proxy: MongoHoldProxy;
  let database: string;
  let ids: string[];
  let svc: TestService | null = null;

  const isExpiryAudit = (c: SeenCommand): boolean => c.name === "insert" && c.collection === "carves.audit";
  /** Commands about the service's data (not the driver's own monitoring or session upkeep). */
  const dataCommands = (from: number): SeenCommand[] =>
    proxy.commands.slice(from).filter((c) => c.collection !== null && !["hello", "isMaster", "ismaster", "ping", "endSessions"].includes(c.name));

  beforeAll(async () => {
    proxy = await startMongoHoldProxy(inject("mongoUri"));
  });
  afterAll(async () => {
    await proxy.close();
  });

  // Six carves completed 40 days ago (directly, not through the proxy): every one is due.
  async function prepare(): Promise<void> {
    database = `carve_sched_${randomBytes(6).toString("hex")}`;
    const past = Date.now() - 40 * DAY;
    const store = await openGridfsStore(inject("mongoUri"), database, { now: () => new Date(past) });
    ids = [];
    for (let i = 0; i < CARVES; i++) {
      const c = makeCarve({ size: 2048, blockSize: 1024 });
      const { session } = await store.createSession(c.spec, randomUUID().replaceAll("-", ""));
      for (const [n, b] of c.blocks.entries()) await store.putBlock(session, n, b);
      ids.push(c.spec.carveId);
    }
    await store.close();
  }

  async function remaining(): Promise<number> {
    const client = await MongoClient.connect(inject("mongoUri"));
    try {
      return await client.db(database).collection("carves.carves").countDocuments({ _id: { $in: ids as never[] } });
    } finally {
      await client.close();
    }
  }

  async function startBehindProxy(): Promise<TestService> {
    return startTestService({
      CARVE_STORAGE: "gridfs",
      CARVE_MONGODB_URI: proxy.uri,
      CARVE_MONGODB_DATABASE: database,
      CARVE_RETENTION_ENABLED: "true",
      CARVE_RETENTION_INTERVAL_MINUTES: "0.01", // 0.6 s
      LOG_LEVEL: "info",
    });
  }

  afterEach(async () => {
    proxy.release();
    await svc?.dispose();
    svc = null;
    const client = await MongoClient.connect(inject("mongoUri"));
    await client.db(database).dropDatabase();
    await client.close();
  });

  it("never starts a second run while a run is stalled for many intervals; the next starts an interval after it ends", async () => {
    await prepare();
    const held = proxy.holdAt(isExpiryAudit);
    svc = await startBehindProxy();
    const stalledAt = proxy.commands.indexOf(await held);
    // Five intervals while the first run waits for its first audit write: a scheduler that started runs on the
    // clock would have begun several, each reading the catalog.
    await new Promise((r) => setTimeout(r, 3000));
    expect(dataCommands(stalledAt + 1)).toEqual([]);
    expect(runs(svc)).toEqual([]);
    proxy.release();

    const lines = await until("three retention runs", () => runs(svc as TestService).length >= 3 && runs(svc as TestService), svc);
    // one run did all the work, nothing was contended (a concurrent run would have lost carves to it: kept)
    expect(lines[0]).toMatchObject({ deleted: CARVES, kept: 0, failed: 0 });
    for (const later of lines.slice(1)) expect(later).toMatchObject({ deleted: 0, kept: 0, failed: 0 });
    for (let i = 1; i < lines.length; i++) {
      expect((lines[i] as RunLine).time - (lines[i - 1] as RunLine).time).toBeGreaterThanOrEqual(600 - 2);
    }
    expect(svc.logs.entries().filter((e) => e.msg === "carve expired")).toHaveLength(CARVES);
    expect(await remaining()).toBe(0);
    const metrics = await (await fetch(`${svc.url}/metrics`)).text();
    expect(metrics).toContain(`carve_sessions_expired_total{reason="retention"} ${CARVES}`);
  });

  it("at shutdown, a stalled run finishes its current carve and stops; no run starts after", async () => {
    await prepare();
    const held = proxy.holdAt(isExpiryAudit);
    const service = await startBehindProxy();
    svc = service;
    await held;
    const stopping = service.stop();
    await until("the shutdown to begin", () => service.logs.text.includes("shutting down"), service);
    // well past the interval: the job must not start again, and stop() waits for the run in progress
    await new Promise((r) => setTimeout(r, 1500));
    let stopped = false;
    void stopping.then(() => (stopped = true));
    await new Promise((r) => setImmediate(r));
    expect(stopped, "stop() waits for the run in progress").toBe(false);
    proxy.release();
    await stopping;
    const entries = service.logs.entries();
    const finished = entries.filter((e) => e.msg === "retention run finished");
    expect(finished).toHaveLength(1);
    expect(finished[0]).toMatchObject({ deleted: 1, kept: 0, failed: 0 });
    const order = entries.map((e) => e.msg);
    expect(order.indexOf("retention run finished")).toBeGreaterThan(order.indexOf("shutting down"));
    expect(order.indexOf("stopped")).toBeGreaterThan(order.indexOf("retention run finished"));
    expect(await remaining()).toBe(CARVES - 1);
  });
});
