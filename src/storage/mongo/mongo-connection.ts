import { setTimeout as sleep } from "node:timers/promises";
import { MongoClient, type Db } from "mongodb";
import { AppError } from "../../errors.js";
import type { Logger } from "../../logger.js";
import type { StoreHealth } from "../model.js";
import { checkMongoServer } from "../mongo-server-check.js";

/*
 * One MongoClient per deployment, shared by the catalog, the audit log and the GridFS blobs: one connection
 * pool, one server check. Whoever opened it closes it, after the stores that use it.
 */

export interface MongoConnectionOptions {
  uri: string;
  database: string;
  logger: Logger;
  serverSelectionTimeoutMs?: number;
}

export interface MongoConnection {
  client: MongoClient;
  db: Db;
}

/**
 * Connects and asks the server what it is (src/storage/mongo-server-check.ts), before anything is written.
 * @throws Error when MongoDB cannot be reached or must not be used (reported before the service listens).
 */
export async function openMongo(options: MongoConnectionOptions): Promise<MongoConnection> {
  const client = new MongoClient(options.uri, {
    serverSelectionTimeoutMS: options.serverSelectionTimeoutMs ?? 5_000,
    // Block requests must fail within osquery's 16 s deadline, so the agent retries instead of hanging.
    connectTimeoutMS: 5_000,
    appName: "osquery-carve-server",
  });
  try {
    await client.connect();
    await checkMongoServer(client.db("admin"), options.logger);
    return { client, db: client.db(options.database) };
  } catch (err) {
    await client.close().catch(() => undefined);
    throw err;
  }
}

export function isDuplicateKey(err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === 11000;
}

/** A backend failure as the contracts report it: STORAGE_UNAVAILABLE, the driver's error kept as the cause. */
export function storageError(err: unknown, what: string): AppError {
  if (err instanceof AppError) return err;
  return new AppError("STORAGE_UNAVAILABLE", undefined, { cause: Object.assign(new Error(what), { cause: err }) });
}

/** Pings the database within 3 s: a hung server must not hang the health endpoint. */
export async function pingHealth(db: Db, backend: string, detail: StoreHealth["detail"]): Promise<StoreHealth> {
  const out = { ...detail };
  const started = Date.now();
  const abort = new AbortController();
  try {
    await Promise.race([
      db.command({ ping: 1 }),
      sleep(3_000, undefined, { signal: abort.signal }).then(
        () => {
          throw new Error("ping timed out");
        },
        () => undefined, // aborted: the ping answered first
      ),
    ]);
    out.pingMs = Date.now() - started;
    return { ok: true, backend, detail: out };
  } catch (err) {
    out.error = err instanceof Error ? err.name : "unknown";
    return { ok: false, backend, detail: out };
  } finally {
    abort.abort();
  }
}
