/**
 * The catalog and audit conformance suites on MongoDB (the mongo-wire test server), plus what only MongoDB shows:
 * every query shape has an index behind it, documents have the shape other tools see, and a server that goes
 * away is reported as STORAGE_UNAVAILABLE.
 *
 * mongo-java-server keeps the non-unique indexes it is asked for but never plans with them, so neither its
 * timings nor an `explain` (it has none) can show index use. The index check below is static instead: each
 * query's filter and sort come from the very builders the catalog uses (src/storage/mongo/catalog-queries.ts),
 * and a query passes when a declared index bounds its scan with its leading fields and, where it must, yields
 * its order, as MongoDB's planner would use it (point intervals, then the sort, then ranges).
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { MongoServerSelectionError, type Document, type IndexDescription } from "mongodb";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { AppError } from "../../../src/errors.js";
import type { AuditLog, CarveCatalog } from "../../../src/storage/contracts.js";
import {
  allCatalogShapes,
  CATALOG_INDEXES,
  NODE_INDEX,
  type QueryShape,
} from "../../../src/storage/mongo/catalog-queries.js";
import { AUDIT_INDEXES, MongoAuditLog, auditShape } from "../../../src/storage/mongo/mongo-audit-log.js";
import { MongoCarveCatalog } from "../../../src/storage/mongo/mongo-catalog.js";
import { openMongo, type MongoConnection } from "../../../src/storage/mongo/mongo-connection.js";
import { freePort } from "../../support/service.js";
import { auditConformance, testEvent } from "./audit-suite.js";
import { catalogConformance, expectCode, testEntry } from "./catalog-suite.js";

const logger = pino({ level: "silent" });
const run = promisify(execFile);
const SCRIPT = path.resolve(import.meta.dirname, "../../../scripts/mongo-wire.sh");

/** A harness over one fresh database: every open() is a client of its own, as another service process has. */
function mongoHarness<T extends { close(): Promise<void> }>(open: (conn: MongoConnection) => Promise<T>) {
  return () => {
    const uri = inject("mongoUri");
    const database = `contract_${randomBytes(6).toString("hex")}`;
    return Promise.resolve({
      open: async (): Promise<T> => {
        const conn = await openMongo({ uri, database, logger });
        const store = await open(conn);
        const close = store.close.bind(store);
        store.close = async () => {
          await close();
          await conn.client.close();
        };
        return store;
      },
      cleanup: async () => {
        const conn = await openMongo({ uri, database, logger });
        await conn.db.dropDatabase();
        await conn.client.close();
      },
    });
  };
}

catalogConformance(
  "mongodb",
  mongoHarness<CarveCatalog>(({ db }) => MongoCarveCatalog.open({ db, bucket: "carves", logger })),
);
auditConformance(
  "mongodb",
  mongoHarness<AuditLog>(({ db }) => MongoAuditLog.open({ db, bucket: "carves", logger })),
);

// ------------------------------------------------------------------------------------------ index check

type Constraint = "point" | "points" | "range";

/** How a filter constrains each top-level field (what index bounds can be built from); $or and $and are residual. */
function constraints(filter: Document): Map<string, Constraint> {
  const out = new Map<string, Constraint>();
  for (const [field, cond] of Object.entries(filter)) {
    if (field.startsWith("$")) continue;
    if (cond !== null && typeof cond === "object" && !(cond instanceof Date)) {
      const ops = Object.keys(cond as object);
      if (ops.length === 1 && ops[0] === "$in")
        out.set(field, (cond as { $in: unknown[] }).$in.length === 1 ? "point" : "points");
      else if (ops.length === 1 && ops[0] === "$eq") out.set(field, "point");
      else if (ops.every((o) => ["$lt", "$lte", "$gt", "$gte"].includes(o))) out.set(field, "range");
      else if (ops.includes("$eq")) out.set(field, "point");
      else throw new Error(`the index check does not know ${field}: ${JSON.stringify(cond)}`);
    } else {
      out.set(field, "point"); // a literal, null included (MongoDB bounds {x: null} as [null, null])
    }
  }
  return out;
}

interface IndexUse {
  index: string;
  /** Leading index fields with bounds from the filter. */
  bounds: string[];
  /** The index yields the requested order (an $in before the sort is merged: SORT_MERGE). */
  sorted: boolean;
  unique: boolean;
  /** Every field of the index is a point of the filter. */
  points: boolean;
}

/** What MongoDB's planner could do with `index` for `shape`: null when the index does not bound the scan. */
function indexUse(
  index: IndexDescription,
  shape: { filter: Document; sort?: Record<string, 1 | -1> },
): IndexUse | null {
  const keys = Object.entries(index.key as Record<string, 1 | -1>);
  const c = constraints(shape.filter);
  const bounds: string[] = [];
  let i = 0;
  for (; i < keys.length; i++) {
    const kind = c.get(keys[i]![0]);
    if (kind === "point" || kind === "points") bounds.push(keys[i]![0]);
    else break;
  }
  const sortFields = Object.entries(shape.sort ?? {}).filter(([f]) => c.get(f) !== "point");
  let sorted = sortFields.length === 0;
  if (!sorted) {
    const rest = keys.slice(i, i + sortFields.length);
    const same =
      rest.length === sortFields.length &&
      rest.every(([f, d], j) => f === sortFields[j]![0] && d === sortFields[j]![1]);
    const reversed =
      rest.length === sortFields.length &&
      rest.every(([f, d], j) => f === sortFields[j]![0] && d === -sortFields[j]![1]);
    sorted = same || reversed;
  }
  // A range right after the points bounds the scan too (the sort field's own range, or a node prefix).
  const next = keys[i]?.[0];
  if (next !== undefined && c.get(next) === "range") bounds.push(next);
  // No bounds at all is still an index scan when it yields the order: it stops after `limit` keys.
  if (bounds.length === 0 && (sortFields.length === 0 || !sorted)) return null;
  return {
    index: String(index.name),
    bounds,
    sorted,
    unique: index.name === "_id_" || index.unique === true,
    points: i === keys.length,
  };
}

const ID_INDEX: IndexDescription = { key: { _id: 1 }, name: "_id_" };

/** The indexes that bound `shape`, the hinted one only when the query names one. */
function usable(
  indexes: IndexDescription[],
  shape: QueryShape | { filter: Document; sort?: Record<string, 1 | -1>; hint?: string },
): IndexUse[] {
  return [ID_INDEX, ...indexes]
    .filter((ix) => shape.hint === undefined || ix.name === shape.hint)
    .map((ix) => indexUse(ix, shape as { filter: Document; sort?: Record<string, 1 | -1> }))
    .filter((u): u is IndexUse => u !== null);
}

describe("MongoDB catalog: every query shape has an index", () => {
  it("bounds every shape by an index, in order unless a node prefix picks the entries", () => {
    const shapes = allCatalogShapes();
    expect(shapes.length).toBeGreaterThan(48);
    for (const { name, shape } of shapes) {
      const uses = usable(CATALOG_INDEXES, shape);
      expect(uses.length, `${name}: no index bounds ${JSON.stringify(shape.filter)}`).toBeGreaterThan(0);
      if (shape.hint) {
        // The node prefix: only that node's entries are read (a range of its hash), then sorted top-k.
        expect(
          CATALOG_INDEXES.map((i) => i.name),
          name,
        ).toContain(shape.hint);
        expect(uses[0]!.bounds[0], name).toBe("nodeKeySha256");
      } else {
        expect(
          uses.some((u) => u.sorted),
          `${name}: no index yields ${JSON.stringify(shape.sort)}: ${JSON.stringify(uses)}`,
        ).toBe(true);
      }
    }
  });

  it("serves each kind of query from the index meant for it", () => {
    const best = (name: string): string => {
      const found = allCatalogShapes().find((s) => s.name === name);
      if (!found) throw new Error(`no shape ${name}`);
      const uses = usable(CATALOG_INDEXES, found.shape);
      // A unique index with every field a point finds the one document (for _id the planner skips planning);
      // otherwise an index that gives the order wins, then the one with the most bounded fields.
      const rank = (u: IndexUse): number => (u.unique && u.points ? 2 : 0) + (u.sorted ? 1 : 0);
      uses.sort((a, b) => rank(b) - rank(a) || b.bounds.length - a.bounds.length);
      return uses[0]!.index;
    };
    expect(best("list status=any node=false since=false until=false cursor=false")).toBe("state_createdAt");
    expect(best("list status=complete node=false since=true until=true cursor=true")).toBe("state_createdAt");
    expect(best("list status=receiving node=true since=false until=false cursor=true")).toBe(NODE_INDEX);
    expect(best("sweep retention")).toBe("state_hold_completedAt");
    expect(best("sweep idle")).toBe("state_createdAt");
    expect(best("sweep stale")).toBe("state_stateSince");
    expect(best("count receiving")).toMatch(/^state_/);
    expect(best("receiving load")).toMatch(/^state_/);
    expect(best("getBySession")).toBe("sessionId_unique");
    expect(best("get")).toBe("_id_");
    expect(best("conditional update/remove")).toBe("_id_");
  });

  it("rejects a shape no index serves (the check can fail)", () => {
    expect(usable(CATALOG_INDEXES, { filter: { requestId: "r" } })).toEqual([]);
    const unsorted = usable(CATALOG_INDEXES, { filter: { state: "complete" }, sort: { carveSize: -1 } });
    expect(unsorted.length).toBeGreaterThan(0);
    expect(unsorted.some((u) => u.sorted)).toBe(false);
    // A range before the sort gives no order, which is what the node prefix accepts knowingly.
    const node = usable(CATALOG_INDEXES, {
      filter: { nodeKeySha256: { $gte: "ab", $lt: "abg" } },
      sort: { createdAt: -1, _id: 1 },
    });
    expect(node.find((u) => u.index === NODE_INDEX)?.sorted).toBe(false);
  });

  it("bounds and orders every audit query by an index", () => {
    const t = new Date();
    for (const carveId of [undefined, "c"]) {
      for (const action of [undefined, "carve.read"]) {
        for (const range of [{}, { since: t }, { until: t }, { since: t, until: t }]) {
          for (const cursor of [null, { t: t.getTime(), id: "x" }]) {
            const q = { ...(carveId ? { carveId } : {}), ...(action ? { action } : {}), ...range };
            const shape = auditShape(q, cursor);
            const uses = usable(AUDIT_INDEXES, shape);
            const what = `${JSON.stringify(q)} cursor=${cursor !== null}`;
            expect(
              uses.some((u) => u.sorted),
              `${what}: ${JSON.stringify(uses)}`,
            ).toBe(true);
            if (carveId)
              expect(
                uses.some((u) => u.sorted && u.bounds[0] === "carveId"),
                what,
              ).toBe(true);
            if (action)
              expect(
                uses.some((u) => u.sorted && u.bounds[0] === "action"),
                what,
              ).toBe(true);
          }
        }
      }
    }
  });
});

// ------------------------------------------------------------------------------------------ MongoDB specifics

describe("MongoDB catalog and audit log: documents and failures", () => {
  let conn: MongoConnection;
  const database = `mongo_specific_${randomBytes(6).toString("hex")}`;
  beforeAll(async () => {
    conn = await openMongo({ uri: inject("mongoUri"), database, logger });
  });
  afterAll(async () => {
    await conn.db.dropDatabase();
    await conn.client.close();
  });

  it("creates every declared index on the server", async () => {
    await MongoCarveCatalog.open({ db: conn.db, bucket: "idx", logger });
    await MongoAuditLog.open({ db: conn.db, bucket: "idx", logger });
    const list = async (c: string) =>
      (await conn.db.collection(c).listIndexes().toArray()) as Array<{ name: string; unique?: boolean }>;
    expect((await list("idx.carves")).map((i) => i.name)).toEqual(
      expect.arrayContaining(CATALOG_INDEXES.map((i) => i.name)),
    );
    expect((await list("idx.audit")).map((i) => i.name)).toEqual(
      expect.arrayContaining(AUDIT_INDEXES.map((i) => i.name)),
    );
    expect((await list("idx.carves")).find((i) => i.name === "sessionId_unique")?.unique).toBe(true);
  });

  it("keeps an entry as one document with BSON dates and the node key only as its SHA-256", async () => {
    const catalog = await MongoCarveCatalog.open({ db: conn.db, bucket: "shape", logger });
    const entry = testEntry({
      hold: { by: "j", reason: "r", at: new Date(5) },
      verifications: [{ claimedSha256: "b".repeat(64), match: false, by: null, at: new Date(6) }],
    });
    await catalog.create(entry);
    const doc = await conn.db.collection("shape.carves").findOne({ _id: entry.carveId as never });
    expect(doc).not.toBeNull();
    expect(Object.keys(doc!).sort()).toEqual(
      [
        "_id",
        "agent",
        "blockCount",
        "blockSize",
        "carveSize",
        "claim",
        "completedAt",
        "compression",
        "createdAt",
        "hold",
        "imported",
        "nodeKeySha256",
        "origin",
        "requestId",
        "sessionId",
        "sha256",
        "state",
        "stateSince",
        "verifications",
      ].sort(),
    );
    expect(doc!.createdAt).toBeInstanceOf(Date);
    expect(doc!.stateSince).toBeInstanceOf(Date);
    expect((doc!.hold as { at: unknown }).at).toBeInstanceOf(Date);
    expect((doc!.verifications as Array<{ at: unknown }>)[0]!.at).toBeInstanceOf(Date);
    expect(doc!.nodeKeySha256).toBe(entry.nodeKeySha256);
  });

  it("keeps audit events in the previous release's shape (_id = event id)", async () => {
    const log = await MongoAuditLog.open({ db: conn.db, bucket: "shape", logger });
    const event = testEvent();
    await log.append(event);
    const doc = await conn.db.collection("shape.audit").findOne({ _id: event.id as never });
    const { id, ...rest } = event;
    expect(doc).toEqual({ _id: id, ...rest });
  });

  it("rejects a node prefix that is not hex", async () => {
    const catalog = await MongoCarveCatalog.open({ db: conn.db, bucket: "shape", logger });
    await expectCode(catalog.list({ limit: 10, nodeSha256Prefix: "ab.*" }), "INVALID_QUERY");
    expect((await catalog.list({ limit: 10, nodeSha256Prefix: "ABCDEF01" })).entries).toEqual([]);
  });
});

describe("MongoDB catalog and audit log: a server that goes away", () => {
  let dir: string;
  let uri: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "carve-mongo-gone-"));
    const { stdout } = await run("bash", [SCRIPT, "start", dir, String(await freePort())], {
      env: { ...process.env, MONGO_WIRE_BACKEND: "memory" },
    });
    uri = stdout.trim().split("\n").pop() ?? "";
  });
  afterAll(async () => {
    await run("bash", [SCRIPT, "stop", dir]).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });

  it("answers STORAGE_UNAVAILABLE with the driver's error as the cause, and an unhealthy health", async () => {
    const conn = await openMongo({ uri, database: "gone", logger, serverSelectionTimeoutMs: 1_000 });
    expect(conn.db.databaseName).toBe("gone");
    const catalog = await MongoCarveCatalog.open({ db: conn.db, bucket: "carves", logger });
    const audit = await MongoAuditLog.open({ db: conn.db, bucket: "carves", logger });
    await catalog.create(testEntry());
    expect((await catalog.health()).ok).toBe(true);
    await run("bash", [SCRIPT, "stop", dir]);
    try {
      const calls = [
        () => catalog.get("x"),
        () => catalog.list({ limit: 5 }),
        () => catalog.count(),
        () => catalog.receivingLoad(testEntry().agent),
        () => audit.query({ limit: 5 }),
        () => audit.append(testEvent()),
      ];
      for (const call of calls) {
        const err = await (call() as Promise<unknown>).then(
          () => null,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(AppError);
        expect((err as AppError).code).toBe("STORAGE_UNAVAILABLE");
        const cause = (err as { cause?: { cause?: unknown } }).cause?.cause;
        expect((cause as Error | undefined)?.name).toMatch(/^Mongo/);
      }
      expect((await catalog.health()).ok).toBe(false);
    } finally {
      await conn.client.close();
    }
  });

  it("refuses to open when the server cannot be reached", async () => {
    const nobody = `mongodb://127.0.0.1:${await freePort()}/`;
    // the driver's own error, naming the refused address, as openMongo's doc promises (the service reports it
    // before listening)
    const err = await openMongo({ uri: nobody, database: "gone", logger, serverSelectionTimeoutMs: 500 }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(MongoServerSelectionError);
    expect((err as Error).message).toBe(`connect ECONNREFUSED ${new URL(nobody).host}`);
  });
});
