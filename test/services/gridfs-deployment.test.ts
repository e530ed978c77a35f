import { randomBytes } from "node:crypto";
import { MongoClient } from "mongodb";
import { pino } from "pino";
import { inject } from "vitest";
import { CarveServices } from "../../src/services/deployment.js";
import { openMongoStorage } from "../../src/storage/factory.js";
import { carveStoreConformance } from "./deployment-suite.js";
import { storeOver } from "./services-as-store.js";

carveStoreConformance("GridFS + MongoDB catalog", () => {
  const uri = inject("mongoUri");
  const database = `carve_test_${randomBytes(6).toString("hex")}`;
  const logger = pino({ level: "silent" });
  const withDb = async <T>(fn: (db: ReturnType<MongoClient["db"]>) => Promise<T>): Promise<T> => {
    const client = await MongoClient.connect(uri);
    try {
      return await fn(client.db(database));
    } finally {
      await client.close();
    }
  };
  return Promise.resolve({
    open: async (options) => {
      const storage = await openMongoStorage({ uri, database, bucket: "carves", logger, ...(options?.now ? { now: options.now } : {}) });
      const services = new CarveServices(storage, { logger, ...(options?.now ? { now: options.now } : {}) });
      await services.recoverAtStart();
      return storeOver(services);
    },
    // As a process that died right after marking the carve deleting would leave it.
    interruptDelete: (carveId, at) =>
      withDb(async (db) => {
        await db.collection("carves.carves").updateOne({ _id: carveId as never }, { $set: { state: "deleting", claim: "dead-process", stateSince: at } });
      }),
    leftovers: () =>
      withDb(async (db) => {
        const out: string[] = [];
        for (const name of ["carves.carves", "carves.sessions", "carves.chunks", "carves.files"]) {
          const docs = await db.collection(name).find({}, { projection: { _id: 1 } }).toArray();
          out.push(...docs.map((d) => `${name}/${String(d._id)}`));
        }
        return out;
      }),
    destroy: () => withDb((db) => db.dropDatabase().then(() => undefined)),
  });
});
