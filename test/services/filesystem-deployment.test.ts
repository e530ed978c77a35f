import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { pino } from "pino";
import { CarveServices } from "../../src/services/deployment.js";
import type { CarveCatalog } from "../../src/storage/contracts.js";
import { openFilesystemStorage } from "../../src/storage/factory.js";
import { carveStoreConformance } from "./deployment-suite.js";
import { storeOver } from "./services-as-store.js";

const FAR = new Date(8.64e15);

/** Every catalog entry retention can see, whatever its age: what a deployment still holds. */
export async function catalogLeftovers(catalog: CarveCatalog): Promise<string[]> {
  const left = await catalog.sweep({ completedBefore: FAR, idleBefore: FAR, staleDeleteBefore: FAR }, 1000);
  return [...left.retention, ...left.idle, ...left.stale].map((e) => `catalog/${e.carveId}`);
}

carveStoreConformance("filesystem + SQLite catalog", async () => {
  const dir = await mkdtemp(path.join(tmpdir(), "carve-fs-"));
  const logger = pino({ level: "silent" });
  let current: CarveServices | null = null;
  const withCatalog = async <T>(fn: (catalog: CarveCatalog) => Promise<T>): Promise<T> => {
    if (current) return fn(current.storage.catalog);
    const storage = await openFilesystemStorage({ dataDir: dir, logger });
    try {
      return await fn(storage.catalog);
    } finally {
      await storage.close();
    }
  };
  return {
    open: async (options) => {
      const storage = await openFilesystemStorage({ dataDir: dir, logger, ...(options?.now ? { now: options.now } : {}) });
      const services = new CarveServices(storage, { logger, ...(options?.now ? { now: options.now } : {}) });
      await services.recoverAtStart();
      current = services;
      const store = storeOver(services);
      return {
        ...store,
        close: async () => {
          if (current === services) current = null;
          await store.close();
        },
      };
    },
    destroy: () => rm(dir, { recursive: true, force: true }),
    // As a process that died right after marking the carve deleting would leave it.
    interruptDelete: (carveId, at) =>
      withCatalog(async (catalog) => {
        await catalog.update(carveId, {}, { state: "deleting", claim: "dead-process", stateSince: at });
      }),
    leftovers: async () => {
      const out: string[] = [];
      for (const sub of ["carves", "sessions"]) {
        for (const name of await readdir(path.join(dir, sub))) out.push(`${sub}/${name}`);
      }
      out.push(...(await withCatalog(catalogLeftovers)));
      return out;
    },
  };
});
