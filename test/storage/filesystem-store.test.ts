import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
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
    interruptDelete: async (carveId, at) => {
      const file = path.join(dir, "meta", `${carveId}.json`);
      const meta = JSON.parse(await readFile(file, "utf8")) as Record<string, unknown>;
      await writeFile(file, JSON.stringify({ ...meta, status: "deleting", deletingSince: at.toISOString() }));
    },
    leftovers: async () => {
      const out: string[] = [];
      for (const sub of ["carves", "meta", "sessions", "index"]) {
        for (const name of await readdir(path.join(dir, sub))) out.push(`${sub}/${name}`);
      }
      return out;
    },
  };
});
