import { randomBytes } from "node:crypto";
import { MongoClient } from "mongodb";
import { pino } from "pino";
import { inject } from "vitest";
import { GridFsBlobs } from "../../../src/storage/gridfs/gridfs-blobs.js";
import { blobStoreConformance } from "./blob-suite.js";

blobStoreConformance("gridfs", async () => {
  const client = await MongoClient.connect(inject("mongoUri"));
  const db = client.db(`blobs_test_${randomBytes(6).toString("hex")}`);
  return {
    open: () => GridFsBlobs.create({ db, bucket: "carves", logger: pino({ level: "silent" }) }),
    destroy: async () => {
      await db.dropDatabase();
      await client.close();
    },
    leftovers: async () => {
      const out: string[] = [];
      for (const name of ["carves.sessions", "carves.chunks", "carves.files"]) {
        const docs = await db.collection(name).find({}, { projection: { _id: 1 } }).toArray();
        out.push(...docs.map((d) => `${name}/${String(d._id)}`));
      }
      return out;
    },
  };
});
