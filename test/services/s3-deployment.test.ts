/**
 * The whole-deployment suite (deployment-suite.ts) with completed archives on S3 (a real SeaweedFS): the embedded
 * deployment (filesystem staging, SQLite catalog) and the shared one (GridFS staging, MongoDB catalog), each with
 * openS3Blobs's credentials from the standard AWS chain (here the environment) and its start-up check.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { ListMultipartUploadsCommand, ListObjectsV2Command } from "@aws-sdk/client-s3";
import { MongoClient } from "mongodb";
import { pino } from "pino";
import { afterAll, beforeAll, inject, vi } from "vitest";
import { configSchema } from "../../src/config/schema.js";
import { CarveServices } from "../../src/services/deployment.js";
import type { CarveCatalog, Storage } from "../../src/storage/contracts.js";
import { openFilesystemStorage, openMongoStorage } from "../../src/storage/factory.js";
import { withS3Archives } from "../../src/storage/s3/open-s3.js";
import { startSeaweedFs, type SeaweedFs } from "../support/seaweedfs.js";
import { carveStoreConformance } from "./deployment-suite.js";
import { storeOver } from "./services-as-store.js";

const FAR = new Date(8.64e15);
const logger = pino({ level: "silent" });

let server: SeaweedFs;
beforeAll(async () => {
  server = await startSeaweedFs();
  vi.stubEnv("AWS_ACCESS_KEY_ID", server.accessKeyId);
  vi.stubEnv("AWS_SECRET_ACCESS_KEY", server.secretAccessKey);
}, 30 * 60_000);
afterAll(async () => {
  vi.unstubAllEnvs();
  await server?.destroy();
});

function s3Config(prefix: string) {
  return configSchema.parse({
    storage: {
      blobs: "s3",
      s3: { endpoint: server.endpoint, region: server.region, bucket: server.bucket, forcePathStyle: true, prefix, partSize: "8MiB" },
    },
  }).storage.s3;
}

async function catalogLeftovers(catalog: CarveCatalog): Promise<string[]> {
  const left = await catalog.sweep({ completedBefore: FAR, idleBefore: FAR, staleDeleteBefore: FAR }, 1000);
  return [...left.retention, ...left.idle, ...left.stale].map((e) => `catalog/${e.carveId}`);
}

/** Objects and unfinished multipart uploads under the prefix. */
async function s3Leftovers(prefix: string): Promise<string[]> {
  const client = server.client();
  try {
    const objects = await client.send(new ListObjectsV2Command({ Bucket: server.bucket, Prefix: prefix }));
    const uploads = await client.send(new ListMultipartUploadsCommand({ Bucket: server.bucket, Prefix: prefix }));
    return [...(objects.Contents ?? []).map((o) => `s3/${o.Key ?? ""}`), ...(uploads.Uploads ?? []).map((u) => `s3-upload/${u.Key ?? ""}`)];
  } finally {
    client.destroy();
  }
}

function harness(openDeployment: (now?: () => Date) => Promise<Storage>, localLeftovers: () => Promise<string[]>, destroyLocal: () => Promise<void>) {
  const prefix = `deploy-${randomBytes(6).toString("hex")}/`;
  let current: CarveServices | null = null;
  const withCatalog = async <T>(fn: (catalog: CarveCatalog) => Promise<T>): Promise<T> => {
    if (current) return fn(current.storage.catalog);
    const storage = await openDeployment();
    try {
      return await fn(storage.catalog);
    } finally {
      await storage.close();
    }
  };
  return {
    open: async (options?: { now?: () => Date }) => {
      const storage = await withS3Archives(await openDeployment(options?.now), s3Config(prefix), logger);
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
    destroy: destroyLocal,
    interruptDelete: (carveId: string, at: Date) =>
      withCatalog(async (catalog) => {
        await catalog.update(carveId, {}, { state: "deleting", claim: "dead-process", stateSince: at });
      }),
    leftovers: async () => [...(await s3Leftovers(prefix)), ...(await localLeftovers()), ...(await withCatalog(catalogLeftovers))],
  };
}

carveStoreConformance("S3 archives + filesystem staging + SQLite catalog", async () => {
  const dir = await mkdtemp(path.join(tmpdir(), "carve-s3-fs-"));
  return harness(
    (now) => openFilesystemStorage({ dataDir: dir, logger, ...(now ? { now } : {}) }),
    async () => {
      const out: string[] = [];
      for (const sub of ["carves", "sessions"]) for (const name of await readdir(path.join(dir, sub))) out.push(`${sub}/${name}`);
      return out;
    },
    () => rm(dir, { recursive: true, force: true }),
  );
});

carveStoreConformance("S3 archives + GridFS staging + MongoDB catalog", () => {
  const uri = inject("mongoUri");
  const database = `carve_s3_${randomBytes(6).toString("hex")}`;
  const withDb = async <T>(fn: (db: ReturnType<MongoClient["db"]>) => Promise<T>): Promise<T> => {
    const client = await MongoClient.connect(uri);
    try {
      return await fn(client.db(database));
    } finally {
      await client.close();
    }
  };
  return Promise.resolve(
    harness(
      (now) => openMongoStorage({ uri, database, bucket: "carves", logger, ...(now ? { now } : {}) }),
      () =>
        withDb(async (db) => {
          const out: string[] = [];
          for (const name of ["carves.sessions", "carves.chunks", "carves.files"]) {
            const docs = await db.collection(name).find({}, { projection: { _id: 1 } }).toArray();
            out.push(...docs.map((d) => `${name}/${String(d._id)}`));
          }
          return out;
        }),
      () => withDb((db) => db.dropDatabase().then(() => undefined)),
    ),
  );
});
