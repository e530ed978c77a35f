import { randomBytes } from "node:crypto";
import { MongoClient } from "mongodb";
import { pino } from "pino";
import { afterAll, beforeAll, inject } from "vitest";
import { GridFsBlobs } from "../../../src/storage/gridfs/gridfs-blobs.js";
import { startSeaweedFs, type SeaweedFs } from "../../support/seaweedfs.js";
import { s3Harness } from "../s3/harness.js";
import { blobStoreConformance } from "./blob-suite.js";

// One real SeaweedFS for the file (S3 authentication on); each case has its own key prefix and staging.
let server: SeaweedFs;
beforeAll(async () => {
  server = await startSeaweedFs();
}, 30 * 60_000);
afterAll(async () => {
  await server?.destroy();
});

// A single node: blocks staged in the data directory.
blobStoreConformance("s3 (SeaweedFS, filesystem staging)", async () => {
  const h = await s3Harness(server);
  return { open: () => h.open(), destroy: () => h.destroy(), leftovers: () => h.leftovers() };
});

// Replicas sharing MongoDB: blocks staged in GridFS, where every replica sees them.
blobStoreConformance("s3 (SeaweedFS, GridFS staging)", async () => {
  const client = await MongoClient.connect(inject("mongoUri"));
  const db = client.db(`s3_staging_${randomBytes(6).toString("hex")}`);
  const h = await s3Harness(server, {
    open: () => GridFsBlobs.create({ db, bucket: "carves", logger: pino({ level: "silent" }) }),
    leftovers: async () => {
      const out: string[] = [];
      for (const name of ["carves.sessions", "carves.chunks", "carves.files"]) {
        const docs = await db.collection(name).find({}, { projection: { _id: 1 } }).toArray();
        out.push(...docs.map((d) => `${name}/${String(d._id)}`));
      }
      return out;
    },
    destroy: async () => {
      await db.dropDatabase();
      await client.close();
    },
  });
  return { open: () => h.open(), destroy: () => h.destroy(), leftovers: () => h.leftovers() };
});
