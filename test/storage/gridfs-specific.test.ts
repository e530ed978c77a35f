/**
 * GridFS behaviour beyond the shared contract: the completed carve is an ordinary GridFS file, several
 * store instances (= service replicas, each with its own connection) share one carve, large blocks are
 * split under the 16 MB document limit, an abandoned completion is taken over, and a MongoDB outage
 * loses nothing.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { GridFSBucket, MongoClient } from "mongodb";
import { afterAll, beforeAll, describe, expect, inject, it, vi } from "vitest";
import { AppError } from "../../src/errors.js";
import { MAX_GRIDFS_BLOCKS } from "../../src/storage/gridfs/gridfs-blobs.js";
import { chunksPerBlock } from "../../src/storage/gridfs/gridfs-chunks.js";
import type { DeploymentStore } from "../services/services-as-store.js";
import { openGridfsStore } from "../support/deployment.js";
import { makeCarve, readAll, sha256, shuffled } from "../support/carve-data.js";
import { freePort } from "../support/service.js";

const run = promisify(execFile);
const SCRIPT = path.resolve(import.meta.dirname, "../../scripts/mongo-wire.sh");

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  return p.then(
    () => undefined,
    (e: unknown) => (e instanceof AppError ? e.code : `non-AppError: ${String(e)}`),
  );
}

describe("GridFS specifics", () => {
  let uri: string;
  let database: string;
  let client: MongoClient;
  const stores: DeploymentStore[] = [];

  const open = async (extra: { staleCompletionMs?: number } = {}) => {
    const store = await openGridfsStore(uri, database, { completion: extra });
    stores.push(store);
    return store;
  };

  beforeAll(async () => {
    uri = inject("mongoUri");
    database = `carve_gfs_${randomBytes(6).toString("hex")}`;
    client = await MongoClient.connect(uri);
  });
  afterAll(async () => {
    for (const s of stores) await s.close();
    await client.db(database).dropDatabase();
    await client.close();
  });

  it("leaves a completed carve as an ordinary GridFS file with its metadata", async () => {
    const store = await open();
    const carve = makeCarve({ size: 700_000, blockSize: 262_144, nodeKey: "secret-node-key" });
    const { session } = await store.createSession(carve.spec, "gfsplain1");
    for (const [i, b] of carve.blocks.entries()) await store.putBlock(session, i, b);

    const bucket = new GridFSBucket(client.db(database), { bucketName: "carves" });
    const [file] = await bucket.find({ filename: `${carve.spec.carveId}.tar` }).toArray();
    expect(file).toBeDefined();
    expect(file?.length).toBe(700_000);
    expect(file?.chunkSize).toBe(262_144);
    expect(file?.metadata).toMatchObject({
      carve_id: carve.spec.carveId,
      request_id: carve.spec.requestId,
      sha256: sha256(carve.bytes),
      compression: "none",
      certificate_subject: "CN=agent-1,O=Example",
      node_key_sha256: sha256(Buffer.from("secret-node-key")),
    });
    expect(JSON.stringify(file?.metadata)).not.toContain("secret-node-key");
    const bytes = await readAll(bucket.openDownloadStreamByName(`${carve.spec.carveId}.tar`));
    expect(bytes.equals(carve.bytes)).toBe(true);
  });

  it("lets several replicas share one carve: blocks alternate, duplicates everywhere, completed exactly once", async () => {
    const replicas = [await open(), await open(), await open()];
    const carve = makeCarve({ size: 60 * 4096 + 123, blockSize: 4096 });
    const starts = await Promise.all(replicas.map((r, i) => r.createSession(carve.spec, `gfsrepl${i}`)));
    expect(starts.filter((s) => s.created)).toHaveLength(1);
    const sessionId = starts[0]!.session.sessionId;
    // each replica learns the session by id, as a replica behind a load balancer would
    const sessions = await Promise.all(replicas.map((r) => r.findSession(sessionId)));
    const order = shuffled([...carve.blocks.keys(), ...carve.blocks.keys(), 5, 5, 60], 3);
    const results = await Promise.all(
      order.map((id, i) => replicas[i % 3]!.putBlock(sessions[i % 3]!, id, carve.blocks[id]!)),
    );
    expect(results.filter((r) => r.completedNow)).toHaveLength(1);
    expect(results.filter((r) => !r.duplicate)).toHaveLength(carve.blocks.length);
    for (const r of replicas) {
      const record = await r.getCarve(carve.spec.carveId);
      expect(record.status).toBe("complete");
      expect(record.sha256).toBe(sha256(carve.bytes));
    }
    expect((await readAll((await replicas[2]!.openArchive(carve.spec.carveId)).stream)).equals(carve.bytes)).toBe(true);
  });

  it("splits blocks over 8 MiB into equal chunks under the 16 MB document limit", async () => {
    expect(chunksPerBlock(8 * 1024 * 1024)).toBe(1);
    expect(chunksPerBlock(12 * 1024 * 1024)).toBe(2);
    expect(chunksPerBlock(64 * 1024 * 1024)).toBe(8);
    expect(chunksPerBlock(10_000_019)).toBeNull(); // a prime: no even split
    const store = await open();
    const carve = makeCarve({ size: 25 * 1024 * 1024 + 7, blockSize: 12 * 1024 * 1024 });
    const { session } = await store.createSession(carve.spec, "gfsbig01");
    for (const id of [2, 0, 1]) await store.putBlock(session, id, carve.blocks[id]!);
    expect((await store.getCarve(carve.spec.carveId)).sha256).toBe(sha256(carve.bytes));
    const bucket = new GridFSBucket(client.db(database), { bucketName: "carves" });
    const [file] = await bucket.find({ filename: `${carve.spec.carveId}.tar` }).toArray();
    expect(file?.chunkSize).toBe(6 * 1024 * 1024);
    expect(sha256(await readAll(bucket.openDownloadStreamByName(`${carve.spec.carveId}.tar`)))).toBe(sha256(carve.bytes));
  });

  it("completes a carve received in order without reading it back, and reads it back when it was not", async () => {
    const chunk = 256 * 1024;
    const inOrder = makeCarve({ size: 20 * chunk + 11, blockSize: chunk });
    const shuffledCarve = makeCarve({ size: 20 * chunk + 11, blockSize: chunk });
    const store = await open();
    const chunks = (store.services.storage.blobs as unknown as { chunks: { find: (...a: unknown[]) => unknown } }).chunks;
    const finds = vi.spyOn(chunks, "find");
    // Reading a carve back is a find by a list of chunk ids (findOne of a re-sent block is a find too).
    const readBacks = (): number => finds.mock.calls.filter(([filter]) => JSON.stringify(filter).includes('"$in"')).length;
    try {
      const a = await store.createSession(inOrder.spec, "gfsrun1");
      for (const [i, b] of inOrder.blocks.entries()) {
        await store.putBlock(a.session, i, b);
        if (i === 3) await store.putBlock(a.session, 3, b); // a re-sent block is not hashed twice
      }
      expect((await store.getCarve(inOrder.spec.carveId)).sha256).toBe(sha256(inOrder.bytes));
      expect(readBacks()).toBe(0);

      const b = await store.createSession(shuffledCarve.spec, "gfsrun2");
      const order = [1, 0, ...[...shuffledCarve.blocks.keys()].slice(2)];
      for (const i of order) await store.putBlock(b.session, i, shuffledCarve.blocks[i]!);
      expect((await store.getCarve(shuffledCarve.spec.carveId)).sha256).toBe(sha256(shuffledCarve.bytes));
      expect(readBacks()).toBeGreaterThan(0); // block 1 came before block 0: read back
    } finally {
      finds.mockRestore();
    }
  });

  it("streams a download in batches read as they are needed, checking every chunk", async () => {
    // Reading everything up front (what the driver's download stream does on a server that ignores batch
    // limits) held a whole carve in memory. Here a chunk deleted after the download started is found
    // missing only when its batch is fetched: the bytes before it have gone out, then the stream fails.
    const store = await open();
    const chunk = 256 * 1024; // 4 chunks per 1 MiB batch
    const carve = makeCarve({ size: 40 * chunk, blockSize: chunk });
    const { session } = await store.createSession(carve.spec, "gfsstream1");
    for (const [i, b] of carve.blocks.entries()) await store.putBlock(session, i, b);
    const { stream } = await store.openArchive(carve.spec.carveId);
    const received: Buffer[] = [];
    const iterator = (stream as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    const first = await iterator.next();
    received.push(first.value as Buffer);
    await client.db(database).collection("carves.chunks").deleteOne({ _id: "gfsstream1/35" as never });
    let failure: unknown;
    try {
      for (let r = await iterator.next(); !r.done; r = await iterator.next()) received.push(r.value);
    } catch (err) {
      failure = err;
    }
    expect(failure).toBeInstanceOf(AppError);
    expect((failure as AppError).code).toBe("STORAGE_UNAVAILABLE");
    const got = Buffer.concat(received);
    expect(got.length).toBe(35 * chunk);
    expect(got.equals(carve.bytes.subarray(0, 35 * chunk))).toBe(true);

    // The first batch is read by openArchive itself: trouble there is an error before any byte (and any
    // HTTP header) goes out.
    await client.db(database).collection("carves.chunks").deleteOne({ _id: "gfsstream1/0" as never });
    expect(await codeOf(store.openArchive(carve.spec.carveId))).toBe("STORAGE_UNAVAILABLE");
    expect((await readAll((await store.openArchive(carve.spec.carveId, { start: chunk, end: 2 * chunk - 1 })).stream)).equals(carve.bytes.subarray(chunk, 2 * chunk))).toBe(true);

    // A range inside one chunk, across batches, and the last byte.
    const other = makeCarve({ size: 40 * chunk + 5, blockSize: chunk });
    const s2 = await store.createSession(other.spec, "gfsstream2");
    for (const [i, b] of other.blocks.entries()) await store.putBlock(s2.session, i, b);
    for (const [start, end] of [[10, 20], [15 * chunk - 3, 33 * chunk + 2], [40 * chunk + 4, 40 * chunk + 4], [0, 40 * chunk + 4]] as const) {
      const h = await store.openArchive(other.spec.carveId, { start, end });
      expect((await readAll(h.stream)).equals(other.bytes.subarray(start, end + 1))).toBe(true);
    }
  });

  it("refuses geometries it cannot store, before writing anything", async () => {
    const store = await open();
    const prime = makeCarve({ size: 1024, blockSize: 1024 });
    expect(await codeOf(store.createSession({ ...prime.spec, blockSize: 10_000_019, carveSize: 10_000_019, blockCount: 1 }, "gfsprime"))).toBe("INVALID_START");
    expect(
      await codeOf(
        store.createSession(
          { ...prime.spec, carveId: randomUUID(), blockSize: 8, carveSize: 8 * (MAX_GRIDFS_BLOCKS + 1), blockCount: MAX_GRIDFS_BLOCKS + 1 },
          "gfsmany1",
        ),
      ),
    ).toBe("INVALID_START");
    expect(await codeOf(store.getCarve(prime.spec.carveId))).toBe("CARVE_NOT_FOUND");
  });

  it("takes over a completion whose process died after claiming it", async () => {
    const a = await open({ staleCompletionMs: 200 });
    const carve = makeCarve({ size: 3 * 1000, blockSize: 1000 });
    const { session } = await a.createSession(carve.spec, "gfsstale");
    await a.putBlock(session, 0, carve.blocks[0]!);
    await a.putBlock(session, 1, carve.blocks[1]!);
    // Replica "a" stores and marks the last block, claims the completion and dies before finishing it.
    const uploads = client.db(database).collection("carves.sessions");
    await client.db(database).collection("carves.chunks").insertOne({
      _id: `${session.sessionId}/2` as never,
      files_id: session.sessionId,
      n: 2,
      data: carve.blocks[2]!,
    });
    await uploads.updateOne({ _id: carve.spec.carveId as never }, { $set: { "b.r2": 1 }, $inc: { blocksReceived: 1, bytesReceived: 1000 } });
    await client
      .db(database)
      .collection("carves.carves")
      .updateOne({ _id: carve.spec.carveId as never }, { $set: { state: "completing", claim: "dead-replica", stateSince: new Date(Date.now() - 1000) } });
    expect((await a.getCarve(carve.spec.carveId)).status).toBe("receiving");
    // The agent re-sends the last block (its reply never came) to replica "b".
    const b = await open({ staleCompletionMs: 200 });
    const r = await b.putBlock(await b.findSession(session.sessionId), 2, carve.blocks[2]!);
    expect(r).toEqual({ duplicate: true, complete: true, completedNow: true });
    expect((await b.getCarve(carve.spec.carveId)).sha256).toBe(sha256(carve.bytes));
  });
});

describe("GridFS during a MongoDB outage", () => {
  let dir: string;
  let port: number;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "carve-mongo-outage-"));
    port = await freePort();
    await run("bash", [SCRIPT, "start", dir, String(port)]);
  });
  afterAll(async () => {
    await run("bash", [SCRIPT, "stop", dir]).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });

  it("refuses blocks while MongoDB is down, loses nothing stored, and completes once it is back", async () => {
    const store = await openGridfsStore(`mongodb://127.0.0.1:${port}/`, "carve_outage", { serverSelectionTimeoutMs: 1500 });
    try {
      const carve = makeCarve({ size: 10 * 1000, blockSize: 1000 });
      const { session } = await store.createSession(carve.spec, "outage01");
      for (let i = 0; i < 5; i++) await store.putBlock(session, i, carve.blocks[i]!);
      expect((await store.health()).ok).toBe(true);

      await run("bash", [SCRIPT, "stop", dir]);
      expect(await codeOf(store.putBlock(session, 5, carve.blocks[5]!))).toBe("STORAGE_UNAVAILABLE");
      expect(await codeOf(store.getCarve(carve.spec.carveId))).toBe("STORAGE_UNAVAILABLE");
      expect((await store.health()).ok).toBe(false);

      await run("bash", [SCRIPT, "start", dir, String(port)]);
      // blocks already stored survived; the refused one is re-sent, then the rest
      const afterOutage = await store.getCarve(carve.spec.carveId);
      expect(afterOutage.blocksReceived).toBeGreaterThanOrEqual(5);
      for (let i = 4; i < 10; i++) await store.putBlock(session, i, carve.blocks[i]!);
      const record = await store.getCarve(carve.spec.carveId);
      expect(record.status).toBe("complete");
      expect(record.sha256).toBe(sha256(carve.bytes));
      expect((await store.health()).ok).toBe(true);
    } finally {
      await store.close();
    }
  });
});
