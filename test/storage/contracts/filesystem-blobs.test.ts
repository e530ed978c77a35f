import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { pino } from "pino";
import { FilesystemBlobs } from "../../../src/storage/filesystem/filesystem-blobs.js";
import { blobStoreConformance } from "./blob-suite.js";

blobStoreConformance("filesystem", async () => {
  const dir = await mkdtemp(path.join(tmpdir(), "carve-blobs-"));
  return {
    open: () => FilesystemBlobs.create({ dataDir: dir, logger: pino({ level: "silent" }) }),
    destroy: () => rm(dir, { recursive: true, force: true }),
    leftovers: async () => {
      const out: string[] = [];
      for (const sub of ["carves", "sessions", "tmp"]) {
        for (const name of await readdir(path.join(dir, sub))) out.push(`${sub}/${name}`);
      }
      return out;
    },
  };
});
