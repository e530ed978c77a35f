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
    destroy: async () => {
      const client = await MongoClient.connect(uri);
      await client.db(database).dropDatabase();
      await client.close();
    },
  });
});
