import type { Config } from "../config/schema.js";
import type { Logger } from "../logger.js";
import type { Storage } from "./contracts.js";
import { FilesystemBlobs } from "./filesystem/filesystem-blobs.js";
import { upgradeFilesystemDataDir } from "./sqlite/migrate-filesystem.js";
import { SqliteAuditLog } from "./sqlite/sqlite-audit-log.js";
import { SqliteCatalog } from "./sqlite/sqlite-catalog.js";

/*
 * The one place that knows the implementations (npm run lint enforces it): everything else speaks the contracts
 * of ./contracts.ts through src/services/.
 */

export interface FilesystemStorageOptions {
  dataDir: string;
  logger: Logger;
  fsyncEachBlock?: boolean;
  now?: () => Date;
}

/**
 * The embedded deployment: blobs in the data directory (whose lock makes this process its only user) and the
 * catalog and audit log in <dataDir>/catalog.sqlite. A directory written by the previous release is upgraded
 * in place first.
 * @throws Error when the directory is locked by another live process or cannot be opened.
 */
export async function openFilesystemStorage(options: FilesystemStorageOptions): Promise<Storage> {
  const blobs = await FilesystemBlobs.create({
    dataDir: options.dataDir,
    logger: options.logger.child({ component: "filesystem-blobs" }),
    ...(options.fsyncEachBlock !== undefined ? { fsyncEachBlock: options.fsyncEachBlock } : {}),
    ...(options.now ? { now: options.now } : {}),
  });
  const opened: Array<{ close(): Promise<void> }> = [blobs];
  try {
    // Under the directory's lock (taken by the blob store), so no live service sees a half-upgraded directory.
    const upgrade = await upgradeFilesystemDataDir({ dataDir: blobs.root, logger: options.logger.child({ component: "upgrade" }) });
    if (upgrade.carves > 0 || upgrade.auditEvents > 0) options.logger.info(upgrade, "data directory upgraded in place");
    const catalog = await SqliteCatalog.open({ dataDir: blobs.root });
    opened.push(catalog);
    const audit = await SqliteAuditLog.open({ dataDir: blobs.root });
    opened.push(audit);
    return {
      catalog,
      blobs,
      audit,
      exclusive: true,
      releaseReserve: () => blobs.releaseReserve(),
      close: async () => {
        await audit.close();
        await catalog.close();
        await blobs.close();
      },
    };
  } catch (err) {
    for (const o of opened.reverse()) await o.close().catch(() => undefined);
    throw err;
  }
}

export interface MongoStorageOptions {
  uri: string;
  database: string;
  bucket: string;
  logger: Logger;
  now?: () => Date;
  serverSelectionTimeoutMs?: number;
}

/**
 * The shared deployment: catalog and audit log in indexed MongoDB collections, bytes in GridFS, one connection.
 * Loaded only when configured: the MongoDB driver costs memory a filesystem deployment never uses.
 * @throws Error when MongoDB cannot be reached, must not be used, or an index or the upgrade fails.
 */
export async function openMongoStorage(options: MongoStorageOptions): Promise<Storage> {
  const [{ openMongo }, { MongoCarveCatalog }, { MongoAuditLog }, { GridFsBlobs }] = await Promise.all([
    import("./mongo/mongo-connection.js"),
    import("./mongo/mongo-catalog.js"),
    import("./mongo/mongo-audit-log.js"),
    import("./gridfs/gridfs-blobs.js"),
  ]);
  const { client, db } = await openMongo({
    uri: options.uri,
    database: options.database,
    logger: options.logger,
    ...(options.serverSelectionTimeoutMs ? { serverSelectionTimeoutMs: options.serverSelectionTimeoutMs } : {}),
  });
  try {
    const { bucket, logger } = options;
    const catalog = await MongoCarveCatalog.open({ db, bucket, logger: logger.child({ component: "catalog" }) });
    const audit = await MongoAuditLog.open({ db, bucket, logger });
    const blobs = await GridFsBlobs.create({ db, bucket, logger: logger.child({ component: "gridfs-blobs" }), ...(options.now ? { now: options.now } : {}) });
    return {
      catalog,
      blobs,
      audit,
      exclusive: false,
      close: async () => {
        await Promise.all([audit.close(), catalog.close(), blobs.close()]);
        await client.close();
      },
    };
  } catch (err) {
    await client.close().catch(() => undefined);
    throw err;
  }
}

/** Opens the configured deployment. @throws Error when it cannot be opened (reported before listening). */
export async function openStorage(config: Config, logger: Logger, now?: () => Date): Promise<Storage> {
  const storage = await openDeployment(config, logger, now);
  if (config.storage.blobs !== "s3") return storage;
  // Archives on S3: the deployment's own blob store stages the blocks (loaded only when configured).
  const { withS3Archives } = await import("./s3/open-s3.js");
  return withS3Archives(storage, config.storage.s3, logger.child({ component: "s3-blobs" }));
}

async function openDeployment(config: Config, logger: Logger, now?: () => Date): Promise<Storage> {
  switch (config.storage.backend) {
    case "filesystem":
      return openFilesystemStorage({
        dataDir: config.storage.filesystem.dataDir,
        fsyncEachBlock: config.storage.filesystem.fsyncEachBlock,
        logger,
        ...(now ? { now } : {}),
      });
    case "gridfs": {
      const { uri, database, bucket } = config.storage.gridfs;
      if (!uri) throw new Error("storage.gridfs.uri is required for the gridfs backend");
      return openMongoStorage({ uri, database, bucket, logger, ...(now ? { now } : {}) });
    }
  }
}
