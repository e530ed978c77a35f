import { pino } from "pino";
import type { CompletionOptions } from "../../src/services/completion.js";
import { CarveServices } from "../../src/services/deployment.js";
import type { Logger } from "../../src/logger.js";
import { openFilesystemStorage, openMongoStorage } from "../../src/storage/factory.js";
import { storeOver, type DeploymentStore } from "../services/services-as-store.js";

const silent = pino({ level: "silent" });

/** The embedded deployment over `dataDir`, as the service opens it (recovery at start included). */
export async function openFilesystemStore(dataDir: string, options: { now?: () => Date } = {}): Promise<DeploymentStore> {
  const storage = await openFilesystemStorage({ dataDir, logger: silent, ...(options.now ? { now: options.now } : {}) });
  const services = new CarveServices(storage, { logger: silent, ...(options.now ? { now: options.now } : {}) });
  await services.recoverAtStart();
  return storeOver(services);
}

/** The MongoDB deployment (catalog, audit log, GridFS) in `database`, as the service opens it. */
export async function openGridfsStore(
  uri: string,
  database: string,
  options: { now?: () => Date; bucket?: string; completion?: CompletionOptions; serverSelectionTimeoutMs?: number; logger?: Logger } = {},
): Promise<DeploymentStore> {
  const logger = options.logger ?? silent;
  const storage = await openMongoStorage({
    uri,
    database,
    bucket: options.bucket ?? "carves",
    logger,
    ...(options.now ? { now: options.now } : {}),
    ...(options.serverSelectionTimeoutMs ? { serverSelectionTimeoutMs: options.serverSelectionTimeoutMs } : {}),
  });
  const services = new CarveServices(storage, {
    logger,
    ...(options.now ? { now: options.now } : {}),
    ...(options.completion ? { completion: options.completion } : {}),
  });
  await services.recoverAtStart();
  return storeOver(services);
}
