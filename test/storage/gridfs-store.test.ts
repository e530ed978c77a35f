import { randomBytes } from "node:crypto";
import { MongoClient } from "mongodb";
import { pino } from "pino";
import { inject } from "vitest";
import { GridFsCarveStore } from "../../src/storage/gridfs/gridfs-carve-store.js";
import { carveStoreConformance } from "./conformance.js";

carveStoreConformance("gridfs", () => {
  const uri = inject("mongoUri");
  const database = `carve_test_${randomBytes(6).toString("hex")}`;
  return Promise.resolve({
    open: (options) =>
      GridFsCarveStore.create({
        uri,
        database,
        bucket: "carves",
        logger: pino({ level: "silent" }),
        ...(options?.now ? { now: options.now } : {}),
      }),
    interruptDelete: async (carveId, at) => {
      const client = await MongoClient.connect(uri);
      await client
        .db(database)
        .collection("carves.sessions")
        .updateOne({ _id: carveId as never }, { $set: { status: "deleting", deletingSince: at } });
      await client.close();
    },
    leftovers: async () => {
      const client = await MongoClient.connect(uri);
      const out: string[] = [];
      for (const name of ["carves.sessions", "carves.chunks", "carves.files"]) {
        const docs = await client.db(database).collection(name).find({}, { projection: { _id: 1 } }).toArray();
        out.push(...docs.map((d) => `${name}/${String(d._id)}`));
      }
      await client.close();
      return out;
    },
    destroy: async () => {
      const client = await MongoClient.connect(uri);
      await client.db(database).dropDatabase();
      await client.close();
    },
  });
});
