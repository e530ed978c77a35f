/**
 * Two replicas of the service sharing one MongoDB and one S3 bucket (a real SeaweedFS), each with its own
 * connections: blocks of one carve arrive at both, the last ones at both at once. The carve is completed exactly
 * once, by one multipart upload, and both replicas serve it byte-exact, whole and in ranges. S3 stopping in the
 * middle of a completion leaves the carve receiving with every block staged; a replica started once S3 is back
 * completes it.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { ListMultipartUploadsCommand, ListObjectsV2Command } from "@aws-sdk/client-s3";
import { MongoClient } from "mongodb";
import { pino } from "pino";
import { afterAll, beforeAll, expect, inject, it, vi } from "vitest";
import { configSchema } from "../../src/config/schema.js";
import { AppError } from "../../src/errors.js";
import type { PutBlockResult } from "../../src/storage/model.js";
import { CarveServices } from "../../src/services/deployment.js";
import { openMongoStorage } from "../../src/storage/factory.js";
import { withS3Archives } from "../../src/storage/s3/open-s3.js";
import { makeCarve, readAll, sha256 } from "../support/carve-data.js";
import { startSeaweedFs, type SeaweedFs } from "../support/seaweedfs.js";
import { storeOver, type DeploymentStore } from "./services-as-store.js";

const logger = pino({ level: "silent" });
const database = `carve_replicas_${randomBytes(6).toString("hex")}`;
const prefix = `replicas-${randomBytes(6).toString("hex")}/`;
let server: SeaweedFs;
const replicas: DeploymentStore[] = [];
const services: CarveServices[] = [];
let s3Section: ReturnType<typeof configSchema.parse>["storage"]["s3"];

beforeAll(async () => {
  server = await startSeaweedFs();
  vi.stubEnv("AWS_ACCESS_KEY_ID", server.accessKeyId);
  vi.stubEnv("AWS_SECRET_ACCESS_KEY", server.secretAccessKey);
  s3Section = configSchema.parse({
    storage: { blobs: "s3", s3: { endpoint: server.endpoint, region: server.region, bucket: server.bucket, forcePathStyle: true, prefix } },
  }).storage.s3;
  for (let i = 0; i < 2; i++) {
    const storage = await withS3Archives(await openMongoStorage({ uri: inject("mongoUri"), database, bucket: "carves", logger }), s3Section, logger);
    services.push(new CarveServices(storage, { logger }));
    replicas.push(storeOver(services[i] as CarveServices));
  }
}, 30 * 60_000);
afterAll(async () => {
  for (const r of replicas) await r.close();
  const client = await MongoClient.connect(inject("mongoUri"));
  await client.db(database).dropDatabase();
  await client.close();
  vi.unstubAllEnvs();
  await server?.destroy();
});

it("completes a carve sent to two replicas exactly once, and both serve it byte-exact", async () => {
  const [a, b] = replicas as [DeploymentStore, DeploymentStore];
  const carve = makeCarve({ size: 20 * 1024 * 1024 + 333, blockSize: 1024 * 1024 });
  const { session } = await a.createSession(carve.spec, randomUUID().replaceAll("-", ""));
  const last = carve.blocks.length - 1;
  // All but the last two alternate between the replicas; the last two go to both at once, twice each.
  for (let id = 0; id < last - 1; id++) {
    const r = await (id % 2 === 0 ? a : b).putBlock(session, id, carve.blocks[id] as Buffer);
    expect(r.complete).toBe(false);
  }
  // A block that finds the completion running elsewhere for too long is told to retry, as osquery then does.
  const send = async (r: DeploymentStore, id: number): Promise<PutBlockResult> => {
    for (let attempt = 0; ; attempt++) {
      try {
        return await r.putBlock(session, id, carve.blocks[id] as Buffer);
      } catch (err) {
        if (attempt >= 3 || !(err instanceof AppError) || err.code !== "STORAGE_UNAVAILABLE") throw err;
      }
    }
  };
  const settled = await Promise.all([last - 1, last, last - 1, last].map((id, i) => send(i % 2 === 0 ? a : b, id)));
  // A block stored while the other last one was still on its way rightly sees the carve incomplete.
  expect(settled.some((r) => r.complete)).toBe(true);
  expect(settled.filter((r) => r.completedNow)).toHaveLength(1);
  for (const r of [a, b]) {
    const record = await r.getCarve(carve.spec.carveId);
    expect(record?.status).toBe("complete");
    expect(record?.sha256).toBe(sha256(carve.bytes));
    expect(sha256(await readAll((await r.openArchive(carve.spec.carveId)).stream))).toBe(sha256(carve.bytes));
    const range = await readAll((await r.openArchive(carve.spec.carveId, { start: 5_000_000, end: 15_000_000 })).stream);
    expect(sha256(range)).toBe(sha256(carve.bytes.subarray(5_000_000, 15_000_001)));
  }
  const client = server.client();
  const objects = await client.send(new ListObjectsV2Command({ Bucket: server.bucket, Prefix: prefix }));
  expect((objects.Contents ?? []).map((o) => o.Key)).toEqual([`${prefix}${carve.spec.carveId}.tar`]);
  expect((await client.send(new ListMultipartUploadsCommand({ Bucket: server.bucket, Prefix: prefix }))).Uploads ?? []).toEqual([]);
  client.destroy();
});

it("completes, once S3 is back, a carve whose completion S3 interrupted", async () => {
  const [a] = replicas as [DeploymentStore];
  const carve = makeCarve({ size: 40 * 1024 * 1024, blockSize: 1024 * 1024 });
  const { session } = await a.createSession(carve.spec, randomUUID().replaceAll("-", ""));
  const last = carve.blocks.length - 1;
  for (let id = 0; id < last; id++) await a.putBlock(session, id, carve.blocks[id] as Buffer);
  // The last block starts the completion; S3 goes away while its parts are being sent.
  const stopping = (async () => {
    const client = server.client();
    try {
      for (;;) {
        const uploads = await client.send(new ListMultipartUploadsCommand({ Bucket: server.bucket, Prefix: prefix }));
        if ((uploads.Uploads ?? []).length > 0) break;
        await new Promise((r) => setTimeout(r, 5));
      }
    } finally {
      client.destroy();
    }
    await server.stop();
  })();
  const failed = await a.putBlock(session, last, carve.blocks[last] as Buffer).then(
    () => null,
    (e: unknown) => e,
  );
  expect(failed).toBeInstanceOf(AppError);
  expect((failed as AppError).code, "S3 gone: the block's completion is a storage failure the agent retries").toBe("STORAGE_UNAVAILABLE");
  await stopping;
  expect((await a.getCarve(carve.spec.carveId))?.status).toBe("receiving");
  await server.start();
  // A replica starting now finishes what was left: every block is staged, so recovery completes it.
  const storage = await withS3Archives(await openMongoStorage({ uri: inject("mongoUri"), database, bucket: "carves", logger }), s3Section, logger);
  const fresh = new CarveServices(storage, { logger });
  try {
    await fresh.recoverAtStart(0);
    const record = await storeOver(fresh).getCarve(carve.spec.carveId);
    expect(record?.status).toBe("complete");
    expect(record?.sha256).toBe(sha256(carve.bytes));
    expect(sha256(await readAll((await a.openArchive(carve.spec.carveId)).stream))).toBe(sha256(carve.bytes));
  } finally {
    await fresh.close();
  }
});
