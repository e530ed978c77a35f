import type { Config } from "../config/schema.js";
import type { Logger } from "../logger.js";
import type { CarveStore } from "./carve-store.js";
import { FilesystemCarveStore } from "./filesystem/filesystem-carve-store.js";

/** Opens the configured backend. @throws Error when it cannot be opened (reported before listening). */
export async function openStore(config: Config, logger: Logger, now?: () => Date): Promise<CarveStore> {
  switch (config.storage.backend) {
    case "filesystem":
      return FilesystemCarveStore.create({
        dataDir: config.storage.filesystem.dataDir,
        fsyncEachBlock: config.storage.filesystem.fsyncEachBlock,
        logger: logger.child({ component: "filesystem-store" }),
        ...(now ? { now } : {}),
      });
    case "gridfs": {
      const { uri, database, bucket } = config.storage.gridfs;
      if (!uri) throw new Error("storage.gridfs.uri is required for the gridfs backend");
      // Loaded only when configured: the MongoDB driver costs memory a filesystem deployment never uses.
      const { GridFsCarveStore } = await import("./gridfs/gridfs-carve-store.js");
      return GridFsCarveStore.create({
        uri,
        database,
        bucket,
        logger: logger.child({ component: "gridfs-store" }),
        ...(now ? { now } : {}),
      });
    }
  }
}
