/**
 * Faults seen from the agents' side, against the built service (dist/src/main.js) as a child process and
 * the protocol-exact emulator with osquery's own retry rules (5.22+: 3 attempts, 1 s then 4 s apart):
 *  - kill -9 in the middle of several concurrent carves, on each backend: after a restart on the same port
 *    and storage, the agents' own retries complete every carve byte-exact, each completed exactly once;
 *  - storage failing mid-carve for real: a full tmpfs (kernel ENOSPC) under the filesystem backend, MongoDB
 *    killed under the GridFS backend: non-JSON 503 refusals, readiness down, nothing stored corrupted, and
 *    the carve completes once storage is back;
 *  - slow and stalled clients: block bodies trickling in over ~10 s do not hold up another agent or grow the
 *    service's memory; a client that stops mid-body is cut off by the request timeout and nothing of its
 *    block is stored.
 * The suites are independent (own service, port, storage) and run concurrently: most of their time is
 * spent waiting for retry delays and timeouts.
 */
import { execFile } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { GridFSBucket, MongoClient } from "mongodb";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { runCarve, ZSTD_MAGIC, type CarveRequestRecord } from "../../scripts/emulator/index.js";
import { readAll, sha256 } from "../support/carve-data.js";
import { peekEntriesInside, peekEntry, type PeekedEntry } from "../support/catalog-peek.js";
import { spawnServiceWith, stopChild, waitForMetric, type WrappedChildService } from "../support/child-service.js";
import { agentCountsAsSuccess, getJson } from "../support/raw-http.js";
import { freePort } from "../support/service.js";
import { openTmpfsNamespace, PAGE, tmpfsNamespaceProblem, type TmpfsNamespace } from "../support/tmpfs-namespace.js";

const run = promisify(execFile);
const MONGO_SCRIPT = path.resolve(import.meta.dirname, "../../scripts/mongo-wire.sh");
const ENDPOINTS = { startEndpoint: "/start_uploads", continueEndpoint: "/upload_blocks" } as const;

let work: string;
beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-faults-"));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function archive(bytes: Buffer): Promise<string> {
  const file = path.join(work, `${randomUUID()}.bin`);
  await writeFile(file, bytes);
  return file;
}

/** A deliberate block refusal as the agent saw it: that status, `refused: CODE: ...`, not JSON. */
function isRefusal(r: CarveRequestRecord | undefined, code: string, status: number): boolean {
  return (
    r !== undefined && r.statusCode === status && !r.ok && r.body.startsWith(`refused: ${code}: `) && !agentCountsAsSuccess(r.body)
  );
}

function describeRequests(requests: CarveRequestRecord[]): string {
  return requests
    .map((r) => `${r.kind}${r.blockId ?? ""}#${r.attempt}${r.silentResend ? "r" : ""}:${r.statusCode ?? r.error ?? "?"}${r.ok ? "" : `(${r.body.slice(0, 60).trim()})`}`)
    .join(" ");
}

/** A filesystem deployment's catalog entry of a carve (catalog.sqlite, read-only beside the service). */
function readEntry(dataDir: string, carveId: string): PeekedEntry {
  const entry = peekEntry(dataDir, carveId);
  if (!entry) throw new Error(`no catalog entry for ${carveId} in ${dataDir}`);
  return entry;
}

/** The catalog entry of a carve in a data directory on a namespace's tmpfs. */
function readEntryInside(ns: TmpfsNamespace, carveId: string): PeekedEntry {
  const entry = peekEntriesInside(ns.wrapper, ns.mountPoint).find((e) => e.carveId === carveId);
  if (!entry) throw new Error(`no catalog entry for ${carveId} in the tmpfs`);
  return entry;
}

/** The GridFS deployment's catalog: one document per carve in `<bucket>.carves` (src/storage/mongo/carve-doc.ts). */
interface CarveDoc {
  _id: string;
  state: string;
  claim: string | null;
  sha256: string | null;
}

function gridfsEnv(uri: string, database: string): Record<string, string> {
  return { CARVE_STORAGE: "gridfs", CARVE_MONGODB_URI: uri, CARVE_MONGODB_DATABASE: database };
}

/** Every GridFS file stored for a carve, with its bytes. */
async function gridfsArchives(
  uri: string,
  database: string,
  carveId: string,
): Promise<Array<{ filename: string; sha256: unknown; bytes: Buffer }>> {
  const client = await MongoClient.connect(uri);
  try {
    const bucket = new GridFSBucket(client.db(database), { bucketName: "carves" });
    const files = await bucket.find({ "metadata.carve_id": carveId }).toArray();
    const out = [];
    for (const f of files) {
      out.push({ filename: f.filename, sha256: f.metadata?.sha256 as unknown, bytes: await readAll(bucket.openDownloadStream(f._id)) });
    }
    return out;
  } finally {
    await client.close();
  }
}

async function dropDatabase(uri: string, database: string): Promise<void> {
  const client = await MongoClient.connect(uri);
  try {
    await client.db(database).dropDatabase();
  } finally {
    await client.close();
  }
}

/** The carve is stored exactly once, byte-exact, under the right name, and recorded complete with its SHA-256. */
async function expectStored(
  backend: "filesystem" | "gridfs",
  where: { dataDir?: string; uri?: string; database?: string },
  carveId: string,
  bytes: Buffer,
): Promise<void> {
  const ext = bytes.subarray(0, 4).equals(ZSTD_MAGIC) ? ".tar.zst" : ".tar";
  if (backend === "filesystem") {
    const dataDir = where.dataDir as string;
    expect(sha256(await readFile(path.join(dataDir, "carves", `${carveId}${ext}`))), carveId).toBe(sha256(bytes));
    expect(readEntry(dataDir, carveId)).toMatchObject({ state: "complete", sha256: sha256(bytes) });
  } else {
    const files = await gridfsArchives(where.uri as string, where.database as string, carveId);
    expect(files.map((f) => f.filename), carveId).toEqual([`${carveId}${ext}`]);
    expect(files[0]?.sha256).toBe(sha256(bytes));
    expect(sha256(files[0]?.bytes ?? Buffer.alloc(0))).toBe(sha256(bytes));
    const client = await MongoClient.connect(where.uri as string);
    try {
      const doc = await client.db(where.database).collection<CarveDoc>("carves.carves").findOne({ _id: carveId });
      expect(doc, carveId).toMatchObject({ state: "complete", sha256: sha256(bytes) });
    } finally {
      await client.close();
    }
  }
}

function completionLines(outputs: string[][], carveId: string): number {
  return outputs.flat().filter((l) => l.includes('"msg":"carve complete"') && l.includes(carveId)).length;
}

// ------------------------------------------------------------------------------------------------------------

describe("kill -9 in the middle of several concurrent carves", { concurrent: true }, () => {
  it.sequential.for(["filesystem", "gridfs"] as const)(
    "%s: four 5.22+ agents ride out a kill and restart on their own retries; every carve completes byte-exact, once",
    async (backend, { expect, onTestFinished }) => {
      const uri = inject("mongoUri");
      const database = `carve_faults_${randomBytes(6).toString("hex")}`;
      const dataDir = path.join(work, randomUUID());
      const env = {
        CARVE_PORT: String(await freePort()),
        LOG_LEVEL: "info",
        ...(backend === "gridfs" ? gridfsEnv(uri, database) : { CARVE_DATA_DIR: dataDir }),
      };
      let svc = await spawnServiceWith({ env });
      const outputs = [svc.output];
      onTestFinished(async () => {
        await stopChild(svc, "SIGKILL");
        if (backend === "gridfs") await dropDatabase(uri, database);
      });
      const plans = [
        { bytes: randomBytes(24 * 65536 - 100), blockSize: 65536, agentVersion: "5.23.0" },
        { bytes: randomBytes(20 * 65536), blockSize: 65536, agentVersion: "5.22.1" },
        { bytes: Buffer.concat([ZSTD_MAGIC, randomBytes(40 * 32768 - 4 - 77)]), blockSize: 32768, agentVersion: "5.23.0" },
        { bytes: randomBytes(48 * 16384 + 1), blockSize: 16384, agentVersion: "5.22.0" },
      ].map((p) => ({ ...p, blockCount: Math.ceil(p.bytes.length / p.blockSize) }));

      // Kill once 30 blocks are acknowledged in all, while every agent still has blocks to send.
      const acked = plans.map(() => 0);
      let restarted: Promise<WrappedChildService> | null = null;
      let ackedAtKill: number[] | null = null;
      const results = await Promise.all(
        plans.map(async (p, i) =>
          runCarve({
            baseUrl: svc.url,
            ...ENDPOINTS,
            archivePath: await archive(p.bytes),
            blockSize: p.blockSize,
            agentVersion: p.agentVersion,
            onRequest: (r) => {
              if (r.kind !== "block" || !r.ok) return;
              acked[i] = (acked[i] ?? 0) + 1;
              const total = acked.reduce((a, b) => a + b, 0);
              if (restarted === null && total >= 30 && acked.every((a, j) => a <= (plans[j]?.blockCount ?? 0) - 3)) {
                ackedAtKill = [...acked];
                svc.proc.kill("SIGKILL");
                restarted = svc.exited.then(() => spawnServiceWith({ env }));
                restarted.catch(() => undefined); // awaited below
              }
            },
          }),
        ),
      );
      expect(ackedAtKill, "the kill happened mid-carve").not.toBeNull();
      expect(restarted).not.toBeNull();
      svc = await (restarted as unknown as Promise<WrappedChildService>);
      outputs.push(svc.output);

      results.forEach((r, i) => expect(r.status, `agent ${i}: ${describeRequests(r.requests)}`).toBe("SUCCESS"));
      // The kill cost requests (connection reset / refused), and at least one agent needed its 1 s retry.
      expect(results.flatMap((r) => r.requests).filter((r) => !r.ok).length).toBeGreaterThan(0);
      expect(results.some((r) => r.requests.some((q) => q.attempt > 1))).toBe(true);
      for (const [i, r] of results.entries()) {
        const bytes = plans[i]?.bytes as Buffer;
        expect(r.sha256).toBe(sha256(bytes));
        await expectStored(backend, { dataDir, uri, database }, r.carveId, bytes);
        expect(completionLines(outputs, r.carveId), `completions of ${r.carveId}`).toBe(1);
      }
    },
  );
});

describe("kill -9 while a GridFS carve is being completed", { concurrent: true }, () => {
  // The process dies after claiming the completion (catalog entry "completing", with its claim) and before finishing it;
  // the restarted service sees the agent's retries of the last block.
  it("the agent's retries after the restart still complete the carve", async ({ expect, onTestFinished }) => {
    const uri = inject("mongoUri");
    const database = `carve_faults_${randomBytes(6).toString("hex")}`;
    const env = { CARVE_PORT: String(await freePort()), LOG_LEVEL: "info", ...gridfsEnv(uri, database) };
    // The first process kills itself right after claiming the completion and hashing (crash point
    // complete.after-hash): no race with how fast the completion runs.
    let svc = await spawnServiceWith({ env: { ...env, CARVE_CRASH_AT: "complete.after-hash:1" } });
    const client = await MongoClient.connect(uri);
    onTestFinished(async () => {
      await stopChild(svc, "SIGKILL");
      await client.db(database).dropDatabase();
      await client.close();
    });
    const carves = client.db(database).collection<CarveDoc>("carves.carves");
    const bytes = randomBytes(64 * 65536 - 10);
    const carveId = randomUUID();
    const first = svc;
    let atCrash: CarveDoc | null = null;
    const restarted = first.exited.then(async () => {
      atCrash = await carves.findOne({ _id: carveId });
      return spawnServiceWith({ env });
    });
    restarted.catch(() => undefined);
    const result = await runCarve({
      baseUrl: svc.url,
      ...ENDPOINTS,
      archivePath: await archive(bytes),
      blockSize: 65536,
      carveId,
      agentVersion: "5.23.0",
    });
    svc = await restarted;
    expect(first.output.join("")).toContain("crash-point: SIGKILL at complete.after-hash");
    expect(atCrash, "the claim the dead process left").toMatchObject({ state: "completing", claim: expect.any(String) as string, sha256: null });
    expect.soft(result.status, describeRequests(result.requests)).toBe("SUCCESS");
    const after = await carves.findOne({ _id: carveId });
    expect(after, "the carve's state once the agent is done").toMatchObject({ state: "complete", claim: null, sha256: sha256(bytes) });
    await expectStored("gridfs", { uri, database }, carveId, bytes);
  });
});

// ------------------------------------------------------------------------------------------------------------
// Storage failure, filesystem backend: the data directory is a 1-4 MiB tmpfs that really fills up.

const tmpfsProblem = await tmpfsNamespaceProblem();

// No silent skip: a machine without user namespaces fails here, saying why (CI's machine kind has them).
it("can mount a small tmpfs in a user namespace for the full-disk tests", () => {
  expect(tmpfsProblem).toBeNull();
});

describe("filesystem storage failure: a full disk (tmpfs, kernel ENOSPC)", { concurrent: true }, () => {
  it.sequential(
    "refuses blocks with a non-JSON 503 (the 5.23 agent retries, then aborts), reports not ready, corrupts nothing, and completes the carve once space is freed",
    async ({ expect, onTestFinished }) => {
      const ns = await openTmpfsNamespace(4 * 1024 * 1024);
      const env = { CARVE_DATA_DIR: ns.mountPoint, CARVE_PORT: String(await freePort()), LOG_LEVEL: "info", CARVE_RETENTION_ENABLED: "false" };
      const svc = await spawnServiceWith({ env, wrapper: ns.wrapper });
      onTestFinished(async () => {
        await stopChild(svc, "SIGKILL");
        await ns.close();
      });
      const common = { baseUrl: svc.url, ...ENDPOINTS, agentVersion: "5.23.0" };

      // A carve completed before the disk fills.
      const doneBytes = randomBytes(100_000);
      const done = await runCarve({ ...common, archivePath: await archive(doneBytes), blockSize: 16384 });
      expect(done.status).toBe("SUCCESS");

      // The disk fills up (synchronously, before the agent sends block 21) once block 20 is acknowledged.
      const bytes = randomBytes(64 * 16384 - 333);
      const archivePath = await archive(bytes);
      const carveId = randomUUID();
      const requestId = randomUUID();
      let filled = false;
      const first = await runCarve({
        ...common,
        archivePath,
        blockSize: 16384,
        carveId,
        requestId,
        onRequest: (r) => {
          if (r.kind === "block" && r.blockId === 20 && r.ok && !filled) {
            ns.fill("filler");
            filled = true;
          }
        },
      });
      expect(filled).toBe(true);
      expect(ns.freeBytes()).toBe(0);
      expect(first.status).toBe("DATA POST FAILED");
      const failed = first.requests.filter((r) => r.kind === "block" && r.blockId === 21);
      expect(failed.map((r) => r.attempt)).toEqual([1, 2, 3]);
      for (const r of failed) expect(isRefusal(r, "STORAGE_UNAVAILABLE", 503), JSON.stringify(r)).toBe(true);
      expect(first.requests.filter((r) => r.kind === "block" && (r.blockId ?? 0) > 21)).toEqual([]);

      const notReady = await getJson(svc.url, "/ready");
      expect(notReady.status).toBe(503);
      expect(notReady.json).toMatchObject({ status: "unavailable", storage: { ok: false, backend: "filesystem" } });
      expect((await getJson(svc.url, "/status")).status).toBe(200);
      // A new carve cannot start either: the same non-JSON 503 (a 5.22+ agent retries its start), nothing kept.
      const newStart = await fetch(`${svc.url}/start_uploads`, {
        method: "POST",
        body: JSON.stringify({ block_count: 1, block_size: 10, carve_size: 10, carve_id: randomUUID(), request_id: randomUUID(), node_key: "" }),
      });
      const newStartText = await newStart.text();
      expect(newStart.status).toBe(503);
      expect(newStartText.startsWith("refused: STORAGE_UNAVAILABLE: ") && !agentCountsAsSuccess(newStartText), newStartText).toBe(true);
      expect(peekEntriesInside(ns.wrapper, ns.mountPoint).map((e) => e.carveId).sort()).toEqual([carveId, done.carveId].sort());
      expect((await readdir(ns.outside("sessions"))).sort()).toEqual([carveId]);

      // Nothing stored is corrupted: the complete carve, and the 21 acknowledged blocks of the other.
      expect(sha256(await readFile(ns.outside("carves", `${done.carveId}.tar`)))).toBe(sha256(doneBytes));
      expect(readEntryInside(ns, done.carveId)).toMatchObject({ state: "complete", sha256: sha256(doneBytes) });
      expect(readEntryInside(ns, carveId)).toMatchObject({ state: "receiving", sha256: null });
      const part = await readFile(ns.outside("sessions", carveId, "data.part"));
      expect(part.subarray(0, 21 * 16384).equals(bytes.subarray(0, 21 * 16384))).toBe(true);
      expect((await readFile(ns.outside("sessions", carveId, "journal"))).length).toBe(21 * 8);
      expect((await readdir(ns.outside("carves"))).sort()).toEqual([`${done.carveId}.tar`]);

      // Space is freed: ready again, and the same carve re-sent (same carve_id and request_id, so the same
      // session) completes byte-exact: acknowledged blocks are duplicates, the rest is stored.
      ns.free("filler");
      expect((await getJson(svc.url, "/ready")).status).toBe(200);
      const second = await runCarve({ ...common, archivePath, blockSize: 16384, carveId, requestId });
      expect(second.status, describeRequests(second.requests)).toBe("SUCCESS");
      expect(second.sessionId).toBe(first.sessionId);
      expect(sha256(await readFile(ns.outside("carves", `${carveId}.tar`)))).toBe(sha256(bytes));
      expect(readEntryInside(ns, carveId)).toMatchObject({ state: "complete", sha256: sha256(bytes) });
      expect(sha256(await readFile(ns.outside("carves", `${done.carveId}.tar`)))).toBe(sha256(doneBytes));
    },
  );

  it.sequential(
    "a disk that fills up during completion: the agent's retry completes the carve once space is back, and the service still restarts",
    async ({ expect, onTestFinished }) => {
      // 8 blocks of one page each. After block 6 exactly one page stays free: block 7 (the last) and its
      // journal record fit, then the completion moves the archive into carves/ and fails writing the record.
      const ns = await openTmpfsNamespace(1024 * 1024);
      const env = { CARVE_DATA_DIR: ns.mountPoint, CARVE_PORT: String(await freePort()), LOG_LEVEL: "info", CARVE_RETENTION_ENABLED: "false" };
      let svc = await spawnServiceWith({ env, wrapper: ns.wrapper });
      onTestFinished(async () => {
        await stopChild(svc, "SIGKILL");
        await ns.close();
      });
      const bytes = randomBytes(8 * PAGE);
      let freed = false;
      const result = await runCarve({
        baseUrl: svc.url,
        ...ENDPOINTS,
        archivePath: await archive(bytes),
        blockSize: PAGE,
        agentVersion: "5.23.0",
        onRequest: (r) => {
          if (r.kind === "block" && r.blockId === 6 && r.ok) ns.fill("filler", PAGE);
          // The operator frees space as soon as the failure shows; the agent retries 1 s later.
          if (r.kind === "block" && r.blockId === 7 && !r.ok && !freed) {
            ns.free("filler");
            freed = true;
          }
        },
      });
      const { carveId } = result;
      const last = result.requests.filter((r) => r.kind === "block" && r.blockId === 7);
      expect(freed).toBe(true);
      expect(isRefusal(last[0], "STORAGE_UNAVAILABLE", 503), JSON.stringify(last[0])).toBe(true);
      // Expected: the retry, with space back, is stored and completes the carve.
      expect.soft(last.slice(1).map((r) => `${r.statusCode} ${r.body.trim()}`)).toEqual(['200 {"success":true}']);
      expect.soft(result.status).toBe("SUCCESS");
      expect.soft(readEntryInside(ns, carveId)).toMatchObject({ state: "complete", sha256: sha256(bytes) });

      // Whatever the agent saw, the service must start again on this data directory and finish the carve.
      await stopChild(svc, "SIGKILL");
      svc = await spawnServiceWith({ env, wrapper: ns.wrapper });
      expect(readEntryInside(ns, carveId)).toMatchObject({ state: "complete", sha256: sha256(bytes) });
      expect(sha256(await readFile(ns.outside("carves", `${carveId}.tar`)))).toBe(sha256(bytes));
    },
  );
});

// ------------------------------------------------------------------------------------------------------------

describe("GridFS storage failure: MongoDB dies mid-carve", { concurrent: true }, () => {
  it("refuses with non-JSON 503 and is not ready while MongoDB is down; the agent's retries complete the carve once it is back, nothing stored is lost", async ({ expect, onTestFinished }) => {
    const mongoDir = await mkdtemp(path.join(tmpdir(), "carve-faults-mongo-"));
    const mongoPort = await freePort();
    const uri = `mongodb://127.0.0.1:${mongoPort}/`;
    await run("bash", [MONGO_SCRIPT, "start", mongoDir, String(mongoPort)], { timeout: 120_000 });
    const mongoPid = Number((await readFile(path.join(mongoDir, "server.pid"), "utf8")).trim());
    const database = "carve_faults";
    const svc = await spawnServiceWith({ env: { LOG_LEVEL: "info", ...gridfsEnv(uri, database) } });
    onTestFinished(async () => {
      await stopChild(svc, "SIGKILL");
      await run("bash", [MONGO_SCRIPT, "stop", mongoDir]).catch(() => undefined);
      await rm(mongoDir, { recursive: true, force: true });
    });
    const common = { baseUrl: svc.url, ...ENDPOINTS, agentVersion: "5.23.0" };
    const doneBytes = randomBytes(200_000);
    const done = await runCarve({ ...common, archivePath: await archive(doneBytes), blockSize: 65536 });
    expect(done.status).toBe("SUCCESS");

    // MongoDB is killed once block 8 is acknowledged (its writes are committed as they happen, so nothing
    // acknowledged is lost); when the agent has seen the first refusal, readiness is checked and MongoDB
    // started again on the same data while the agent waits to retry.
    const bytes = randomBytes(24 * 65536 - 5);
    let killed = false;
    let outage: Promise<{ status: number; json: unknown }> | null = null;
    const result = await runCarve({
      ...common,
      archivePath: await archive(bytes),
      blockSize: 65536,
      onRequest: (r) => {
        if (r.kind === "block" && r.blockId === 8 && r.ok && !killed) {
          process.kill(mongoPid, "SIGKILL");
          killed = true;
        }
        if (r.kind === "block" && !r.ok && outage === null) {
          outage = getJson(svc.url, "/ready").then(async (ready) => {
            await run("bash", [MONGO_SCRIPT, "start", mongoDir, String(mongoPort)], { timeout: 120_000 });
            return ready;
          });
          outage.catch(() => undefined);
        }
      },
    });
    expect(killed).toBe(true);
    expect(outage, describeRequests(result.requests)).not.toBeNull();
    const ready = await (outage as unknown as Promise<{ status: number; json: unknown }>);
    expect(ready.status).toBe(503);
    expect(ready.json).toMatchObject({ status: "unavailable", storage: { ok: false, backend: "gridfs" } });

    expect(result.status, describeRequests(result.requests)).toBe("SUCCESS");
    const failures = result.requests.filter((r) => !r.ok);
    expect(failures.length).toBeGreaterThan(0);
    for (const r of failures) expect(isRefusal(r, "STORAGE_UNAVAILABLE", 503), JSON.stringify(r)).toBe(true);
    expect(result.requests.some((r) => r.attempt > 1 && r.ok)).toBe(true);
    expect((await getJson(svc.url, "/ready")).status).toBe(200);
    await expectStored("gridfs", { uri, database }, result.carveId, bytes);
    await expectStored("gridfs", { uri, database }, done.carveId, doneBytes);
  });
});

// ------------------------------------------------------------------------------------------------------------

interface Trickle {
  /** Resolves with the raw HTTP reply once the server answers and closes, or the socket closes. */
  reply: Promise<{ raw: string; closedAfterMs: number }>;
  /** When the last byte was sent (or the trickle stopped). */
  sent: Promise<number>;
}

interface TrickleOptions {
  bytesPerTick: number;
  tickMs: number;
  /** Send only this many bytes, then nothing more (a stalled client). */
  stopAfter?: number;
  /** After this long, send the rest of the body at once. */
  finishAfterMs?: number;
  /** Transfer-Encoding: chunked (no Content-Length), one chunk per tick. */
  chunked?: boolean;
  /**
   * Keep the body unfinished (its last byte, or the chunked terminator, unsent) until this settles, or 120 s
   * at most, however fast the ticks went: the body is still arriving for as long as the test needs it to be.
   */
  holdEndUntil?: Promise<unknown>;
}

/** A block request whose body arrives `bytesPerTick` bytes every `tickMs`, as a slow link delivers it. */
function trickle(url: string, body: Buffer, options: TrickleOptions): Trickle {
  const { hostname, port } = new URL(url);
  const socket = net.connect(Number(port), hostname);
  const started = Date.now();
  const length = options.chunked ? "Transfer-Encoding: chunked" : `Content-Length: ${body.length}`;
  const head = `POST /upload_blocks HTTP/1.1\r\nHost: ${hostname}:${port}\r\nContent-Type: application/json\r\nAccept: application/json\r\nUser-Agent: osquery/5.23.0\r\n${length}\r\nConnection: close\r\n\r\n`;
  const holding = options.holdEndUntil !== undefined && options.stopAfter === undefined;
  const limit = Math.min(body.length - (holding && !options.chunked ? 1 : 0), options.stopAfter ?? body.length);
  const frame = (b: Buffer): Buffer => (options.chunked ? Buffer.concat([Buffer.from(`${b.length.toString(16)}\r\n`), b, Buffer.from("\r\n")]) : b);
  let raw = "";
  socket.on("data", (c: Buffer) => (raw += c.toString("utf8")));
  const reply = new Promise<{ raw: string; closedAfterMs: number }>((resolve) => {
    socket.on("close", () => resolve({ raw, closedAfterMs: Date.now() - started }));
    socket.on("error", () => undefined);
  });
  const sent = new Promise<number>((resolve) => {
    socket.once("connect", () => {
      socket.write(head);
      let off = 0;
      const timer = setInterval(() => {
        if (options.finishAfterMs !== undefined && Date.now() - started >= options.finishAfterMs && off < limit) {
          socket.write(frame(body.subarray(off, limit)));
          off = limit;
        }
        if (off >= limit || socket.destroyed) {
          clearInterval(timer);
          void (async () => {
            if (holding) {
              let deadline: NodeJS.Timeout | undefined;
              await Promise.race([options.holdEndUntil, new Promise((r) => (deadline = setTimeout(r, 120_000)))]);
              clearTimeout(deadline);
              if (off < body.length && !socket.destroyed) socket.write(frame(body.subarray(off)));
              off = body.length;
            }
            if (options.chunked && off >= body.length && !socket.destroyed) socket.write("0\r\n\r\n");
            resolve(Date.now());
          })();
          return;
        }
        socket.write(frame(body.subarray(off, Math.min(off + options.bytesPerTick, limit))));
        off = Math.min(off + options.bytesPerTick, limit);
      }, options.tickMs);
    });
  });
  return { reply, sent };
}

function httpBody(raw: string): string {
  const i = raw.indexOf("\r\n\r\n");
  return i < 0 ? "" : raw.slice(i + 4);
}

async function startSession(url: string, carveSize: number, blockSize: number): Promise<{ carveId: string; requestId: string; sessionId: string }> {
  const carveId = randomUUID();
  const requestId = randomUUID();
  const res = await fetch(`${url}/start_uploads`, {
    method: "POST",
    body: JSON.stringify({ block_count: Math.ceil(carveSize / blockSize), block_size: blockSize, carve_size: carveSize, carve_id: carveId, request_id: requestId, node_key: "" }),
  });
  const { session_id } = (await res.json()) as { session_id: string };
  return { carveId, requestId, sessionId: session_id };
}

function blockBody(s: { sessionId: string; requestId: string }, blockId: number, data: Buffer): Buffer {
  return Buffer.from(JSON.stringify({ block_id: blockId, session_id: s.sessionId, request_id: s.requestId, data: data.toString("base64") }));
}

async function postBlock(url: string, body: Buffer): Promise<{ status: number; text: string }> {
  const res = await fetch(`${url}/upload_blocks`, { method: "POST", body });
  return { status: res.status, text: await res.text() };
}

interface SlowBlock {
  carveId: string;
  /** The whole carve: the trickled block 0, then the rest sent normally. */
  data: Buffer;
  blockSize: number;
  session: { sessionId: string; requestId: string };
  options: TrickleOptions;
}

interface SlowScenario {
  dataDir: string;
  baselineMs: number;
  duringMs: number;
  during: CarveRequestRecord[];
  /** Milliseconds after the trickles began: the other carve done, the last trickled byte sent. */
  normalDoneAfter: number;
  lastByteAfter: number;
  /** The other carve was done before the last trickled byte was sent. */
  normalDoneWhileTrickling: boolean;
  replies: Array<{ raw: string; closedAfterMs: number }>;
}

/**
 * A service with default limits; slow block uploads start, and once the service is reading them another agent
 * carves 4 MiB in 256 KiB blocks while they are kept unfinished (the times are reported, the order asserted).
 * Afterwards every slow carve is finished normally and checked byte-exact.
 */
async function slowClientScenario(
  onTestFinished: (fn: () => Promise<void> | void) => void,
  makeSlow: (url: string) => Promise<SlowBlock[]>,
): Promise<SlowScenario> {
  const dataDir = path.join(work, randomUUID());
  const svc = await spawnServiceWith({ env: { CARVE_DATA_DIR: dataDir, LOG_LEVEL: "info" } });
  onTestFinished(async () => {
    await stopChild(svc, "SIGKILL");
  });
  const common = { baseUrl: svc.url, ...ENDPOINTS, agentVersion: "5.23.0" };
  const normalBytes = randomBytes(4 * 1024 * 1024 - 7);
  const normalArchive = await archive(normalBytes);
  // Baseline: the same carve with nobody trickling (also warms the service up).
  const baseline = await runCarve({ ...common, archivePath: normalArchive, blockSize: 256 * 1024 });
  expect(baseline.status).toBe("SUCCESS");
  const slow = await makeSlow(svc.url);
  const t0 = Date.now();
  const bodies = slow.map((b) => blockBody(b.session, 0, b.data.subarray(0, b.blockSize)));
  // The slow bodies stay unfinished until the other carve is done (or 120 s): "done while they were still
  // arriving" is then a fact of the order of events, not of how fast this machine ran the other carve.
  let release!: () => void;
  const normalDone = new Promise<void>((r) => (release = r));
  const trickles = slow.map((b, i) => trickle(svc.url, bodies[i] as Buffer, { ...b.options, holdEndUntil: normalDone }));
  // The slow bodies are being read by the service (its in-flight budget holds the bytes received: at least
  // each one's first tick) before the other agent starts.
  const held = slow.reduce((sum, b) => sum + b.options.bytesPerTick, 0);
  await waitForMetric(svc.url, "carve_inflight_body_bytes", (v) => v >= held);
  let trickling = true;
  void Promise.all(trickles.map((t) => t.sent)).then(() => (trickling = false));
  const during = await runCarve({ ...common, archivePath: normalArchive, blockSize: 256 * 1024 });
  const normalDoneWhileTrickling = trickling;
  const normalDoneAfter = Date.now() - t0;
  release();
  const replies = await Promise.all(trickles.map((t) => t.reply));
  const lastByteAfter = Math.max(...(await Promise.all(trickles.map((t) => t.sent)))) - t0;
  expect(during.status, describeRequests(during.requests)).toBe("SUCCESS");
  await expectStored("filesystem", { dataDir }, during.carveId, normalBytes);
  for (const [i, r] of replies.entries()) {
    expect(`${r.raw.split("\r\n")[0]} ${httpBody(r.raw)}`, `slow block ${i}`).toBe('HTTP/1.1 200 OK {"success":true}');
    const b = slow[i] as SlowBlock;
    for (let id = 1; id * b.blockSize < b.data.length; id++) {
      const res = await postBlock(svc.url, blockBody(b.session, id, b.data.subarray(id * b.blockSize, (id + 1) * b.blockSize)));
      expect(res).toEqual({ status: 200, text: '{"success":true}' });
    }
    await expectStored("filesystem", { dataDir }, b.carveId, b.data);
  }
  return {
    dataDir,
    baselineMs: baseline.durationMs,
    duringMs: during.durationMs,
    during: during.requests,
    normalDoneAfter,
    lastByteAfter,
    normalDoneWhileTrickling,
    replies,
  };
}

async function slowBlock(url: string, carveSize: number, blockSize: number, options: TrickleOptions): Promise<SlowBlock> {
  const data = randomBytes(carveSize);
  const s = await startSession(url, carveSize, blockSize);
  return { carveId: s.carveId, data, blockSize, session: s, options };
}

describe("slow and stalled clients", { concurrent: true }, () => {
  it("20 block bodies trickling in over ~10 s: another agent's carve completes before they do, and the slow blocks are stored", async ({ expect, onTestFinished }) => {
    const r = await slowClientScenario(onTestFinished, (url) =>
      Promise.all(Array.from({ length: 20 }, () => slowBlock(url, 600, 300, { bytesPerTick: 5, tickMs: 100 }))),
    );
    expect(r.lastByteAfter, "the trickles really took ~10 s").toBeGreaterThan(9_000);
    // Not held up: the other carve is complete before the slow bodies are (its speed is the benchmark's).
    expect(r.normalDoneWhileTrickling, `done after ${r.normalDoneAfter} ms (alone: ${r.baselineMs} ms), last trickled byte after ${r.lastByteAfter} ms`).toBe(true);
  });

  it.for([
    ["an agent uploading a maximum-size block (8 MiB, the default limit) over a slow link", { chunked: false }],
    ["a client sending a small block with chunked transfer encoding, slowly", { chunked: true }],
  ] as const)("%s does not hold up another agent's carve", async ([_label, shape], { expect, onTestFinished }) => {
    const r = await slowClientScenario(onTestFinished, async (url) => [
      shape.chunked
        ? await slowBlock(url, 600, 300, { bytesPerTick: 5, tickMs: 100, chunked: true })
        : // a few bytes every 100 ms for ~10 s, then the rest of the 11 MB body at once
          await slowBlock(url, 8 * 1024 * 1024, 8 * 1024 * 1024, { bytesPerTick: 5, tickMs: 100, finishAfterMs: 10_000 }),
    ]);
    expect(r.lastByteAfter, "the slow body really took ~10 s").toBeGreaterThan(9_000);
    expect(r.normalDoneWhileTrickling, `the other carve finished while the slow body was still arriving (done after ${r.normalDoneAfter} ms, alone ${r.baselineMs} ms, last byte after ${r.lastByteAfter} ms)`).toBe(true);
  });

  describe("a client that stops sending mid-body (request timeout 2 s)", () => {
    let svc: WrappedChildService;
    let dataDir: string;
    let session: { carveId: string; requestId: string; sessionId: string };
    let data: Buffer;
    let stalled: { raw: string; closedAfterMs: number };
    let servedMeanwhile: Array<{ status: number; text: string }>;
    let servedWhileStalled = false;

    beforeAll(async () => {
      dataDir = path.join(work, randomUUID());
      const conf = path.join(work, `${randomUUID()}.yml`);
      await writeFile(conf, "server:\n  requestTimeoutSeconds: 2\n");
      svc = await spawnServiceWith({ env: { CARVE_CONFIG: conf, CARVE_DATA_DIR: dataDir, LOG_LEVEL: "info" } });
      data = randomBytes(2000);
      session = await startSession(svc.url, data.length, 1000);
      const body = blockBody(session, 0, data.subarray(0, 1000));
      const half = Math.floor(body.length / 2);
      const t = trickle(svc.url, body, { bytesPerTick: half, tickMs: 10, stopAfter: half });
      let cutOff = false;
      void t.reply.then(() => (cutOff = true));
      await t.sent;
      // The service is reading the stalled body (its budget holds the half received) before the others go.
      await waitForMetric(svc.url, "carve_inflight_body_bytes", (v) => v >= half);
      // The service keeps serving others meanwhile, the same carve included.
      servedMeanwhile = [
        await postBlock(svc.url, blockBody(session, 1, data.subarray(1000))),
        { status: (await fetch(`${svc.url}/status`)).status, text: "" },
      ];
      servedWhileStalled = !cutOff;
      stalled = await t.reply;
    }, 90_000);
    afterAll(async () => {
      await stopChild(svc, "SIGKILL");
    });

    it("is cut off by the request timeout (Node checks it every 30 s), and nothing of its block is stored", async ({ expect }) => {
      expect(servedMeanwhile).toEqual([{ status: 200, text: '{"success":true}' }, { status: 200, text: "" }]);
      expect(servedWhileStalled, "the others were served while the stalled body was still open").toBe(true);
      // It was cut off (the reply promise resolved on close) no earlier than the 2 s timeout allows.
      expect(stalled.closedAfterMs).toBeGreaterThanOrEqual(2_000);
      // Only block 1 is in the journal; the carve is not complete.
      expect((await readFile(path.join(dataDir, "sessions", session.carveId, "journal"))).length).toBe(8);
      expect(readEntry(dataDir, session.carveId)).toMatchObject({ state: "receiving" });
      // The genuine block 0 sent again is stored (no conflict with anything half-received) and completes it.
      expect(await postBlock(svc.url, blockBody(session, 0, data.subarray(0, 1000)))).toEqual({ status: 200, text: '{"success":true}' });
      await expectStored("filesystem", { dataDir }, session.carveId, data);
    });

    it("gets a reply that an agent counts as failure (non-JSON), not one it counts as success", ({ expect }) => {
      // osquery counts any reply whose body is empty or JSON as success: a block cut off by the timeout must
      // not look stored to the agent.
      expect(stalled.raw, "the reply the cut-off client received").not.toBe("");
      expect(agentCountsAsSuccess(httpBody(stalled.raw)), `reply: ${JSON.stringify(stalled.raw)}`).toBe(false);
    });
  });
});

