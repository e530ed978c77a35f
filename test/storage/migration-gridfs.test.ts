/**
 * Upgrade in place of a GridFS database written by the previous release (test/fixtures/upgrade/gridfs-v1, dumped
 * from a real database that release's GridFsCarveStore wrote, leftovers of killed processes included): loaded into
 * a fresh database, opened by the new catalog, checked field by field, then served by the new services (downloads,
 * an unfinished upload finished, dead claims and deletes finished). The upgrade is run twice, concurrently, and
 * killed with SIGKILL at every record (a child process of the built code, `bash scripts/build.sh` first).
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { BSON, MongoClient, type Db, type Document } from "mongodb";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { CarveServices } from "../../src/services/deployment.js";
import { sessionOf } from "../../src/services/records.js";
import type { CatalogEntry } from "../../src/storage/contracts.js";
import { GridFsBlobs } from "../../src/storage/gridfs/gridfs-blobs.js";
import { migrateGridfsV1 } from "../../src/storage/mongo/migrate-gridfs.js";
import { MongoAuditLog } from "../../src/storage/mongo/mongo-audit-log.js";
import { MongoCarveCatalog } from "../../src/storage/mongo/mongo-catalog.js";
import { readAll } from "../support/carve-data.js";

const ROOT = path.resolve(import.meta.dirname, "../..");
const FIXTURE = path.join(ROOT, "test/fixtures/upgrade/gridfs-v1");
const BUCKET = "carves";
const COLLECTIONS = ["sessions", "chunks", "files", "audit"].map((c) => `${BUCKET}.${c}`);
const logger = pino({ level: "silent" });

interface ExpectedCarve {
  state: string;
  nodeKey: string;
  sessionId: string;
  sha256?: string;
  compression?: string;
  size?: number;
  hold?: boolean;
  verifications?: number;
  origin?: string;
  blocksReceived?: number;
  received?: number[];
}
const expected = JSON.parse(readFileSync(path.join(FIXTURE, "expected.json"), "utf8")) as {
  carves: Record<string, ExpectedCarve>;
  audit: string[];
};
const indexes = JSON.parse(readFileSync(path.join(FIXTURE, "indexes.json"), "utf8")) as Record<string, Document[]>;
const sha256 = (data: Buffer | string): string => createHash("sha256").update(data).digest("hex");

/** The fixture in a fresh database, with the indexes the old release created. */
async function loadFixture(client: MongoClient, name: string): Promise<Db> {
  const db = client.db(name);
  for (const collection of COLLECTIONS) {
    const text = readFileSync(path.join(FIXTURE, `${collection}.json`), "utf8");
    const docs = BSON.EJSON.parse(text, { relaxed: false }) as Document[];
    await db.collection(collection).insertMany(docs);
    const own = (indexes[collection] ?? []).filter((i) => i.name !== "_id_");
    if (own.length > 0) await db.collection(collection).createIndexes(own as never);
  }
  return db;
}

/** Every document of the deployment's collections, by _id. */
async function dump(db: Db): Promise<Record<string, Document[]>> {
  const out: Record<string, Document[]> = {};
  for (const c of [...COLLECTIONS, `${BUCKET}.carves`])
    out[c] = await db.collection(c).find({}).sort({ _id: 1 }).toArray();
  return out;
}

function rawNodeKeys(): string[] {
  return [...new Set(Object.values(expected.carves).map((c) => c.nodeKey))].filter((k) => k !== "");
}

/** Where a raw node key still appears, in any field of any document of the database. */
async function rawKeyHits(db: Db): Promise<string[]> {
  const hits: string[] = [];
  for (const { name } of await db.listCollections().toArray()) {
    for (const doc of await db.collection(name).find({}).toArray()) {
      const text = BSON.EJSON.stringify(doc);
      for (const key of rawNodeKeys()) if (text.includes(`"${key}"`)) hits.push(`${name}/${String(doc._id)}: ${key}`);
    }
  }
  return hits;
}

/** What the upgrade must make of a v1 sessions document, written out from the brief, field by field. */
function expectedEntry(v1: Document): CatalogEntry {
  const status = v1.status as CatalogEntry["state"];
  const imported = v1.origin === "import";
  return {
    carveId: v1._id as string,
    sessionId: v1.sessionId as string,
    requestId: v1.requestId as string,
    nodeKeySha256: v1.nodeKey === "" ? null : sha256(v1.nodeKey as string),
    blockCount: imported ? 1 : (v1.blockCount as number),
    blockSize: imported ? (v1.carveSize as number) : (v1.blockSize as number),
    carveSize: v1.carveSize as number,
    agent: v1.agent as CatalogEntry["agent"],
    createdAt: v1.createdAt as Date,
    state: status,
    stateSince: (status === "completing"
      ? v1.completingSince
      : status === "deleting"
        ? v1.deletingSince
        : status === "complete"
          ? v1.completedAt
          : v1.updatedAt) as Date,
    claim: status === "completing" ? (v1.completer as string) : null,
    completedAt: (v1.completedAt as Date | null) ?? null,
    sha256: (v1.sha256 as string | null) ?? null,
    compression: (v1.compression as CatalogEntry["compression"]) ?? null,
    hold: (v1.hold as CatalogEntry["hold"]) ?? null,
    origin: imported ? "import" : "agent",
    imported: (v1.imported as CatalogEntry["imported"]) ?? null,
    verifications: (v1.verifications as CatalogEntry["verifications"] | undefined) ?? [],
  };
}

const UPLOAD_FIELDS = ["_id", "v", "sessionId", "blockCount", "blockSize", "carveSize", "chunkSize", "chunksPerBlock"]
  .concat(["createdAt", "updatedAt", "blocksReceived", "bytesReceived", "b"])
  .sort();

describe("upgrade of a GridFS database written by the previous release", () => {
  let client: MongoClient;
  let uri: string;
  let n = 0;
  const fresh = (): string => `upgrade_${process.pid}_${Date.now()}_${n++}`;
  const databases: string[] = [];
  let before: Record<string, Document[]>;
  let reference: Record<string, Document[]>;
  let referenceDb: Db;

  beforeAll(async () => {
    uri = inject("mongoUri");
    client = await MongoClient.connect(uri);
    const name = fresh();
    databases.push(name);
    referenceDb = await loadFixture(client, name);
    before = await dump(referenceDb);
    await MongoCarveCatalog.open({ db: referenceDb, bucket: BUCKET, logger });
    reference = await dump(referenceDb);
  });
  afterAll(async () => {
    for (const name of databases) await client.db(name).dropDatabase();
    await client.close();
  });

  it("holds what the fixture says it holds (the old layout, raw node keys included)", async () => {
    const v1 = before[`${BUCKET}.sessions`]!;
    expect(v1.map((d) => String(d._id)).sort()).toEqual(Object.keys(expected.carves).sort());
    expect(v1.every((d) => d.v === undefined && typeof d.nodeKey === "string")).toBe(true);
    // The raw-key scan finds them before the upgrade, so finding none afterwards means something.
    const db = await loadFixture(client, fresh());
    databases.push(db.databaseName);
    expect((await rawKeyHits(db)).length).toBeGreaterThanOrEqual(rawNodeKeys().length);
  });

  it("writes one catalog entry per carve, every field as the old document had it, node key hashed", () => {
    const v1 = before[`${BUCKET}.sessions`]!;
    const entries = reference[`${BUCKET}.carves`]!;
    expect(entries).toHaveLength(v1.length);
    for (const old of v1) {
      const doc = entries.find((e) => e._id === old._id);
      const facts = expected.carves[old._id as string]!;
      const { carveId, ...want } = expectedEntry(old);
      expect(doc, carveId).toEqual({ _id: carveId, ...want });
      // The facts the generator sent, independently of the dump.
      expect(doc!.state).toBe(facts.state);
      expect(doc!.sessionId).toBe(facts.sessionId);
      expect(doc!.nodeKeySha256).toBe(facts.nodeKey === "" ? null : sha256(facts.nodeKey));
      if (facts.state === "complete") {
        expect(doc!.sha256).toBe(facts.sha256);
        expect(doc!.compression).toBe(facts.compression);
        expect(doc!.carveSize).toBe(facts.size);
      }
      // The GridFS files document of the old release already had the same digest.
      const file = before[`${BUCKET}.files`]!.find((f) => f._id === old.sessionId);
      if (file) expect(doc!.nodeKeySha256, carveId).toBe((file.metadata as Document).node_key_sha256);
    }
    const byId = (id: string) => entries.find((e) => e._id === id)!;
    expect(byId("v1-held-complete").hold).toMatchObject({ by: "alice", reason: "case 4711" });
    expect((byId("v1-held-complete").hold as { at: unknown }).at).toBeInstanceOf(Date);
    expect(byId("v1-verified-complete").verifications).toHaveLength(2);
    expect((byId("v1-verified-complete").verifications as unknown[])[1]).toMatchObject({ match: false, by: null });
    expect(byId("v1-imported")).toMatchObject({ origin: "import", blockCount: 1, blockSize: 3500, carveSize: 3500 });
    expect(byId("v1-imported").imported).toMatchObject({ host: "host-9", importedBy: { displayName: "carol" } });
    expect(byId("v1-completing-after-hash").claim).toMatch(/^[0-9a-f-]{36}$/);
    expect(byId("v1-no-node-key").nodeKeySha256).toBeNull();
  });

  it("keeps only unfinished uploads in sessions, as v2 progress documents without catalog fields", () => {
    const sessions = reference[`${BUCKET}.sessions`]!;
    expect(sessions.map((d) => String(d._id)).sort()).toEqual([
      "v1-completing-after-hash",
      "v1-completing-after-publish",
      "v1-receiving-partial",
    ]);
    for (const doc of sessions) {
      expect(Object.keys(doc).sort(), String(doc._id)).toEqual(UPLOAD_FIELDS);
      const old = before[`${BUCKET}.sessions`]!.find((d) => d._id === doc._id)!;
      for (const f of UPLOAD_FIELDS.filter((f) => f !== "v")) expect(doc[f], `${String(doc._id)}.${f}`).toEqual(old[f]);
      expect(doc.v).toBe(2);
    }
    expect(sessions.find((d) => d._id === "v1-receiving-partial")!.b).toEqual({ r0: 1, r2: 1, r3: 1 });
  });

  it("leaves chunks, files and the audit trail as they were, and no raw node key anywhere", async () => {
    for (const c of ["chunks", "files", "audit"])
      expect(reference[`${BUCKET}.${c}`], c).toEqual(before[`${BUCKET}.${c}`]);
    expect(await rawKeyHits(referenceDb)).toEqual([]);
    // The old per-carve audit index is covered by the new one and gone.
    await MongoAuditLog.open({ db: referenceDb, bucket: BUCKET, logger });
    const names = (await referenceDb.collection(`${BUCKET}.audit`).listIndexes().toArray()).map(
      (i: { name?: unknown }) => String(i.name),
    );
    expect(names).not.toContain("carveId_at");
    expect(names).toContain("carveId_at_id");
    // The old listing and retention indexes on sessions are gone too (every block updated one of them).
    const sessionIndexes = await referenceDb.collection(`${BUCKET}.sessions`).listIndexes().toArray();
    expect(sessionIndexes.map((i: { name?: unknown }) => String(i.name)).sort()).toEqual(["_id_", "sessionId_unique"]);
  });

  it("does nothing the second time", async () => {
    expect(await migrateGridfsV1({ db: referenceDb, bucket: BUCKET, logger })).toEqual({
      entries: 0,
      progress: 0,
      removed: 0,
      skipped: 0,
    });
    await MongoCarveCatalog.open({ db: referenceDb, bucket: BUCKET, logger });
    expect(await dump(referenceDb)).toEqual(reference);
  });

  it("ends in the same state when two processes upgrade at once", async () => {
    const db = await loadFixture(client, fresh());
    databases.push(db.databaseName);
    const other = await MongoClient.connect(uri);
    try {
      await Promise.all([
        MongoCarveCatalog.open({ db, bucket: BUCKET, logger }),
        MongoCarveCatalog.open({ db: other.db(db.databaseName), bucket: BUCKET, logger }),
      ]);
    } finally {
      await other.close();
    }
    expect(await dump(db)).toEqual(reference);
  });

  it("loses and duplicates nothing when killed (SIGKILL) at any record, then restarted", async () => {
    const built = path.join(ROOT, "dist/src/storage/mongo/mongo-catalog.js");
    expect(existsSync(built), "run bash scripts/build.sh first").toBe(true);
    const records = before[`${BUCKET}.sessions`]!.length;
    for (let k = 1; k <= records; k++) {
      const db = await loadFixture(client, fresh());
      databases.push(db.databaseName);
      const { signal, stderr } = await upgradeInChild(uri, db.databaseName, `migrate.mid-gridfs:${k}`);
      expect(signal, stderr).toBe("SIGKILL");
      expect(stderr).toContain("crash-point: SIGKILL at migrate.mid-gridfs");
      // Killed after the k-th entry, before its sessions document was touched.
      expect(await db.collection(`${BUCKET}.carves`).countDocuments()).toBe(k);
      expect(await db.collection(`${BUCKET}.sessions`).countDocuments({ v: { $exists: false } })).toBe(records - k + 1);
      const report = await migrateGridfsV1({ db, bucket: BUCKET, logger });
      expect(report.entries).toBe(records - k);
      expect(report.progress + report.removed).toBe(records - k + 1);
      const after = await dump(db);
      expect(after, `killed at record ${k}`).toEqual(reference);
    }
  });

  it("serves the upgraded carves with the new services: downloads, an upload finished, leftovers finished", async () => {
    const db = await loadFixture(client, fresh());
    databases.push(db.databaseName);
    const catalog = await MongoCarveCatalog.open({ db, bucket: BUCKET, logger });
    const blobs = await GridFsBlobs.create({ db, bucket: BUCKET, logger });
    const audit = await MongoAuditLog.open({ db, bucket: BUCKET, logger });
    const close = async (): Promise<void> => {
      await Promise.all([catalog.close(), blobs.close(), audit.close()]);
    };
    const services = new CarveServices({ catalog, blobs, audit, exclusive: false, close }, { logger });
    try {
      // Dead completion claims (their completingSince is long past) are finished at start.
      await services.recoverAtStart();
      for (const [carveId, facts] of Object.entries(expected.carves)) {
        if (facts.state !== "complete" && facts.state !== "completing") continue;
        const handle = await services.reads.openArchive(carveId);
        const bytes = await readAll(handle.stream);
        expect(sha256(bytes), carveId).toBe(facts.sha256);
        expect(handle.record.status).toBe("complete");
        expect(handle.record.nodeKeySha256).toBe(facts.nodeKey === "" ? null : sha256(facts.nodeKey));
      }
      // The unfinished upload takes its missing blocks and completes.
      expect(await services.reads.missingBlocks("v1-receiving-partial", 10)).toEqual([1, 4]);
      const partial = (await catalog.get("v1-receiving-partial"))!;
      const stored = before[`${BUCKET}.chunks`]!.filter((c) => c.files_id === partial.sessionId);
      const block = (i: number): Buffer =>
        i === 1 || i === 4
          ? Buffer.alloc(1024, i)
          : Buffer.from((stored.find((c) => c.n === i)!.data as BSON.Binary).buffer);
      for (const i of [1, 4]) await blobs.putBlock(sessionOf(partial), i, block(i));
      expect(await services.completer.ensureComplete(sessionOf(partial))).toBe(true);
      const whole = Buffer.concat([0, 1, 2, 3, 4].map(block));
      expect(sha256(await readAll((await services.reads.openArchive("v1-receiving-partial")).stream))).toBe(
        sha256(whole),
      );
      // Unfinished deletes and the dead import are finished by retention; nothing of them stays.
      const now = new Date();
      for (const carveId of ["v1-deleting-after-mark", "v1-deleting-after-bytes", "v1-importing-leftover"]) {
        const criteria = { completedBefore: new Date(0), idleBefore: now, staleDeleteBefore: now };
        expect((await services.expiry.deleteIfExpired(carveId, criteria)).deleted, carveId).toBe(true);
        expect(await catalog.get(carveId)).toBeNull();
        const sessionId = expected.carves[carveId]!.sessionId;
        expect(await db.collection(`${BUCKET}.chunks`).countDocuments({ files_id: sessionId })).toBe(0);
        expect(await db.collection(`${BUCKET}.files`).countDocuments({ _id: sessionId as never })).toBe(0);
      }
      // Listing by node, and the old audit trail in its order (equal instants by id descending).
      const alpha = await services.reads.list({ limit: 10, nodeSha256Prefix: sha256("node-key-alpha").slice(0, 8) });
      expect(alpha.carves.map((c) => c.carveId).sort()).toEqual(["v1-held-complete", "v1-plain-complete"]);
      const trail = await services.audit.list({ limit: 10 });
      expect(trail.events.map((e) => e.id)).toEqual(["ev-05", "ev-04", "ev-03", "ev-02", "ev-01"]);
      expect(new Set(trail.events.map((e) => e.id))).toEqual(new Set(expected.audit));
      expect(await rawKeyHits(db)).toEqual([]);
    } finally {
      await services.close();
    }
  });
});

/** Opens the built catalog (which upgrades) in a child process that kills itself at `crashAt`. */
async function upgradeInChild(
  uri: string,
  database: string,
  crashAt: string,
): Promise<{ signal: string | null; stderr: string }> {
  const script = `
    const { openMongo } = await import(${JSON.stringify(path.join(ROOT, "dist/src/storage/mongo/mongo-connection.js"))});
    const { MongoCarveCatalog } = await import(${JSON.stringify(path.join(ROOT, "dist/src/storage/mongo/mongo-catalog.js"))});
    const { pino } = await import("pino");
    const logger = pino({ level: "silent" });
    const conn = await openMongo({ uri: ${JSON.stringify(uri)}, database: ${JSON.stringify(database)}, logger });
    await MongoCarveCatalog.open({ db: conn.db, bucket: ${JSON.stringify(BUCKET)}, logger });
    await conn.client.close();
  `;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
    cwd: ROOT,
    env: { ...process.env, CARVE_CRASH_AT: crashAt },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const signal = await new Promise<string | null>((resolve) => child.on("exit", (_code, sig) => resolve(sig)));
  return { signal, stderr };
}
