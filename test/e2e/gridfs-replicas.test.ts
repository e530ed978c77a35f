/**
 * Two service processes on different ports share one MongoDB database behind a round-robin balancer: the
 * emulator's blocks alternate between them (with duplicates and reordering) and the carve completes
 * byte-exact, exactly once. Then MongoDB goes away mid-carve: agents get the non-JSON refusal, readiness
 * says so, and the carve completes once MongoDB is back and the blocks are re-sent.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { GridFSBucket, MongoClient } from "mongodb";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { runCarve } from "../../scripts/emulator/index.js";
import { readAll, sha256 } from "../support/carve-data.js";
import { startRoundRobinProxy } from "../support/round-robin-proxy.js";
import { freePort, spawnService, type ChildService } from "../support/service.js";

const run = promisify(execFile);
const SCRIPT = path.resolve(import.meta.dirname, "../../scripts/mongo-wire.sh");

let work: string;
beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-replicas-"));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function stopAll(services: ChildService[]): Promise<void> {
  for (const s of services) {
    s.proc.kill("SIGTERM");
    await s.exited;
  }
}

describe("two replicas sharing GridFS", () => {
  it("complete a carve whose blocks alternate between them, byte-exact, exactly once", async () => {
    const uri = inject("mongoUri");
    const database = `carve_repl_${randomBytes(6).toString("hex")}`;
    const env = { CARVE_STORAGE: "gridfs", CARVE_MONGODB_URI: uri, CARVE_MONGODB_DATABASE: database, LOG_LEVEL: "info" };
    const services = [await spawnService(env), await spawnService(env)];
    const proxy = await startRoundRobinProxy(services.map((s) => s.url));
    try {
      const bytes = randomBytes(40 * 65536 + 999);
      const archivePath = path.join(work, `${randomUUID()}.bin`);
      await writeFile(archivePath, bytes);
      const result = await runCarve({
        baseUrl: proxy.url,
        startEndpoint: "/start_uploads",
        continueEndpoint: "/upload_blocks",
        archivePath,
        blockSize: 65536,
        retryDelaysMs: [50, 100],
        inject: { duplicate: [0, 7, 40], order: "shuffle" },
      });
      expect(result.status).toBe("SUCCESS");
      expect(proxy.hits[0]).toBeGreaterThan(10);
      expect(proxy.hits[1]).toBeGreaterThan(10);

      const client = await MongoClient.connect(uri);
      try {
        const bucket = new GridFSBucket(client.db(database), { bucketName: "carves" });
        const files = await bucket.find({ "metadata.carve_id": result.carveId }).toArray();
        expect(files).toHaveLength(1);
        expect(files[0]?.metadata?.sha256).toBe(sha256(bytes));
        expect((await readAll(bucket.openDownloadStreamByName(`${result.carveId}.tar`))).equals(bytes)).toBe(true);
        await client.db(database).dropDatabase();
      } finally {
        await client.close();
      }
      const completions = services.flatMap((s) => s.output).filter((l) => l.includes('"msg":"carve complete"') && l.includes(result.carveId));
      expect(completions).toHaveLength(1);
    } finally {
      await proxy.close();
      await stopAll(services);
    }
  });
});

describe("MongoDB outage seen by agents", () => {
  let dir: string;
  let port: number;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "carve-mongo-e2e-"));
    port = await freePort();
    await run("bash", [SCRIPT, "start", dir, String(port)]);
  });
  afterAll(async () => {
    await run("bash", [SCRIPT, "stop", dir]).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });

  it("refuses non-JSON while MongoDB is down, reports not ready, and completes after it returns", async () => {
    const svc = await spawnService({
      CARVE_STORAGE: "gridfs",
      CARVE_MONGODB_URI: `mongodb://127.0.0.1:${port}/`,
      LOG_LEVEL: "info",
    });
    try {
      const data = randomBytes(4000);
      const start = { block_count: 4, block_size: 1000, carve_size: 4000, carve_id: randomUUID(), request_id: randomUUID(), node_key: "" };
      const post = (p: string, body: unknown) =>
        fetch(svc.url + p, { method: "POST", body: JSON.stringify(body) }).then(async (r) => ({ status: r.status, text: await r.text() }));
      const { session_id } = JSON.parse((await post("/start_uploads", start)).text) as { session_id: string };
      const block = (i: number) => ({
        block_id: i,
        session_id,
        request_id: start.request_id,
        data: data.subarray(i * 1000, (i + 1) * 1000).toString("base64"),
      });
      expect((await post("/upload_blocks", block(0))).text).toBe('{"success":true}');
      expect((await post("/upload_blocks", block(1))).text).toBe('{"success":true}');

      await run("bash", [SCRIPT, "stop", dir]);
      const refused = await post("/upload_blocks", block(2));
      expect(refused.status).toBe(503);
      expect(refused.text).toMatch(/^refused: STORAGE_UNAVAILABLE/);
      expect(() => JSON.parse(refused.text) as unknown, "not JSON, so osquery retries").toThrow(SyntaxError);
      const ready = await fetch(`${svc.url}/ready`);
      expect(ready.status).toBe(503);
      expect(await ready.json()).toMatchObject({ status: "unavailable", storage: { ok: false, backend: "gridfs" } });

      await run("bash", [SCRIPT, "start", dir, String(port)]);
      for (const i of [1, 2, 3]) expect((await post("/upload_blocks", block(i))).text).toBe('{"success":true}');
      expect((await fetch(`${svc.url}/ready`)).status).toBe(200);
      const client = await MongoClient.connect(`mongodb://127.0.0.1:${port}/`);
      try {
        const bucket = new GridFSBucket(client.db("osquery_carves"), { bucketName: "carves" });
        expect(sha256(await readAll(bucket.openDownloadStreamByName(`${start.carve_id}.tar`)))).toBe(sha256(data));
      } finally {
        await client.close();
      }
    } finally {
      await stopAll([svc]);
    }
  });
});
