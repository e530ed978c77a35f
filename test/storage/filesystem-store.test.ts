import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { pino } from "pino";
import { FilesystemCarveStore } from "../../src/storage/filesystem/filesystem-carve-store.js";
import { carveStoreConformance } from "./conformance.js";

carveStoreConformance("filesystem", async () => {
  const dir = await mkdtemp(path.join(tmpdir(), "carve-fs-"));
  return {
    open: (options) =>
      FilesystemCarveStore.create({
        dataDir: dir,
        logger: pino({ level: "silent" }),
        ...(options?.now ? { now: options.now } : {}),
      }),
    destroy: () => rm(dir, { recursive: true, force: true }),
  };
});
