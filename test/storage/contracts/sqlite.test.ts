/**
 * The catalog and audit conformance suites on SQLite, plus what only SQLite shows: every query shape runs on
 * an index (EXPLAIN QUERY PLAN), and the database file is shared safely by several processes.
 */
import { spawn, spawnSync } from "node:child_process";
import { statSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AppError } from "../../../src/errors.js";
import { SqliteAuditLog } from "../../../src/storage/sqlite/sqlite-audit-log.js";
import { SqliteCatalog } from "../../../src/storage/sqlite/sqlite-catalog.js";
import { CATALOG_FILE, openCatalogDatabase } from "../../../src/storage/sqlite/sqlite-database.js";
import type { AuditQuery, ListQuery } from "../../../src/storage/model.js";
import { auditConformance, testEvent } from "./audit-suite.js";
import { catalogConformance, testEntry } from "./catalog-suite.js";
import { holdWriteLock } from "../../support/sqlite-lock.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

async function tempDir(): Promise<string> {
  return mkdtemp(path.join(tmpdir(), "carve-sqlite-"));
}

catalogConformance("sqlite", async () => {
  const dataDir = await tempDir();
  return { open: () => SqliteCatalog.open({ dataDir }), cleanup: () => rm(dataDir, { recursive: true, force: true }) };
});

auditConformance("sqlite", async () => {
  const dataDir = await tempDir();
  return { open: () => SqliteAuditLog.open({ dataDir }), cleanup: () => rm(dataDir, { recursive: true, force: true }) };
});

describe("SQLite catalog: query plans", () => {
  let dataDir: string;
  let db: Database.Database;
  beforeAll(async () => {
    dataDir = await tempDir();
    db = openCatalogDatabase(dataDir);
  });
  afterAll(async () => {
    db.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  /** The plan's lines; a line "SCAN <table>" without an index is a full table scan. */
  const plan = (sql: string, params: Record<string, unknown>): string[] =>
    (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(params) as Array<{ detail: string }>).map((r) => r.detail);
  const expectIndexed = (lines: string[], what: string): void => {
    expect(lines.length, what).toBeGreaterThan(0);
    for (const line of lines) {
      expect(line, `${what}: ${lines.join(" | ")}`).not.toMatch(/^SCAN (carves|audit)(?! USING)/);
      expect(line, `${what}: ${lines.join(" | ")}`).not.toMatch(/USING (AUTOMATIC|TEMP)/);
    }
  };

  const cursor = Buffer.from(JSON.stringify({ t: Date.now(), id: "x" })).toString("base64url");
  const since = new Date(0);
  const until = new Date();

  it("lists on an index whatever the filters, sorting nothing but a node prefix's own entries", () => {
    const shapes: ListQuery[] = [];
    for (const status of [undefined, "receiving", "complete"] as const) {
      for (const node of [undefined, "ab", "ab".repeat(32)]) {
        for (const range of [{}, { since }, { until }, { since, until }]) {
          for (const c of [{}, { cursor }]) {
            shapes.push({ limit: 100, ...(status ? { status } : {}), ...(node ? { nodeSha256Prefix: node } : {}), ...range, ...c });
          }
        }
      }
    }
    for (const q of shapes) {
      const { sql, params } = SqliteCatalog.listSql(q);
      const lines = plan(sql, params);
      const what = JSON.stringify(q);
      for (const line of lines) {
        expect(line, `${what}: ${lines.join(" | ")}`).not.toMatch(/^SCAN carves(?! USING)/);
        expect(line, `${what}: ${lines.join(" | ")}`).not.toMatch(/AUTOMATIC/);
      }
      expect(lines.join(" | "), what).toMatch(/USING (COVERING )?INDEX carves_/);
      // Only a node prefix (many node keys) sorts, and then only its index entries, never whole rows.
      if (q.nodeSha256Prefix === undefined) expect(lines.join(" | "), what).not.toMatch(/TEMP B-TREE/);
      if (q.nodeSha256Prefix !== undefined) expect(lines.join(" | "), what).toMatch(/USING COVERING INDEX carves_node/);
    }
  });

  it("finds by carve id and by session id through unique indexes", () => {
    expectIndexed(plan("SELECT * FROM carves WHERE carve_id = @id", { id: "x" }), "get");
    expect(plan("SELECT * FROM carves WHERE session_id = @id", { id: "x" }).join()).toContain("SEARCH carves USING INDEX sqlite_autoindex_carves_2 (session_id=?)");
  });

  it("sweeps each kind on its own partial index, in its order", () => {
    for (const [kind, sql] of Object.entries(SqliteCatalog.SWEEP_SQL)) {
      const lines = plan(sql, { before: 1, limit: 10 });
      expectIndexed(lines, kind);
      expect(lines.join(), kind).toMatch(new RegExp(`carves_${kind}`));
    }
  });

  it("sums the receiving load on the receiving entries' partial index", () => {
    for (const params of [{ fingerprint: "AB:CD", address: "10.0.0.1" }, { fingerprint: null, address: null }]) {
      const lines = plan(SqliteCatalog.RECEIVING_LOAD_SQL, params);
      expectIndexed(lines, JSON.stringify(params));
      expect(lines.join(), JSON.stringify(params)).toMatch(/USING INDEX carves_receiving/);
    }
  });

  it("queries the audit trail on an index whatever the filters", () => {
    for (const carveId of [undefined, "c"]) {
      for (const action of [undefined, "carve.read"]) {
        for (const range of [{}, { since }, { until }, { since, until }]) {
          for (const c of [{}, { cursor }]) {
            const q: AuditQuery = { limit: 50, ...(carveId ? { carveId } : {}), ...(action ? { action } : {}), ...range, ...c };
            const { sql, params } = SqliteAuditLog.querySql(q);
            const lines = plan(sql, params);
            expectIndexed(lines, JSON.stringify(q));
            expect(lines.join(), JSON.stringify(q)).toMatch(/USING INDEX audit_/);
          }
        }
      }
    }
  });

  it("keeps the database in WAL mode with synced commits", () => {
    expect(db.pragma("journal_mode", { simple: true })).toBe("wal");
    expect(db.pragma("synchronous", { simple: true })).toBe(2);
    expect(db.pragma("user_version", { simple: true })).toBe(1);
    expect(db.name).toBe(path.join(dataDir, CATALOG_FILE));
  });
});

describe("SQLite catalog: the database file", () => {
  it("is created readable by owner and group only, and refused when a newer release wrote it", async () => {
    const dataDir = await tempDir();
    try {
      const catalog = await SqliteCatalog.open({ dataDir });
      await catalog.close();
      expect(statSync(path.join(dataDir, CATALOG_FILE)).mode & 0o777).toBe(0o640);
      const db = new Database(path.join(dataDir, CATALOG_FILE));
      db.pragma("user_version = 99");
      db.close();
      const err = await SqliteCatalog.open({ dataDir }).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(AppError);
      expect((err as AppError).code).toBe("STORAGE_UNAVAILABLE");
      const why = ((err as AppError).cause as Error | undefined)?.cause;
      expect(String(why)).toMatch(/schema version 99, newer than this release.s 1/);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

describe("SQLite catalog: several processes on one file", () => {
  let dataDir: string;
  beforeAll(async () => {
    dataDir = await tempDir();
    const build = spawnSync("bash", [path.join(ROOT, "scripts/build.sh"), "--if-stale"], { cwd: ROOT, encoding: "utf8" });
    expect(build.status, build.stderr).toBe(0);
  });
  afterAll(() => rm(dataDir, { recursive: true, force: true }));

  it("creates each carve once, grants each claim once and loses no verification, with four processes racing", async () => {
    const script = path.join(dataDir, "racer.mjs");
    await writeFile(
      script,
      `const { SqliteCatalog } = await import(${JSON.stringify(path.join(ROOT, "dist/src/storage/sqlite/sqlite-catalog.js"))});
const [dataDir, me, startAt] = process.argv.slice(2);
const catalog = await SqliteCatalog.open({ dataDir });
const out = { created: [], claimed: [] };
while (Date.now() < Number(startAt)) {}
for (let i = 0; i < 40; i++) {
  const carveId = "race-" + i;
  const t = new Date(Date.UTC(2026, 5, 1, 0, 0, i));
  const agent = { address: me, userAgent: null, certificate: null };
  const entry = { carveId, sessionId: me + "-" + i, requestId: me, nodeKeySha256: null, blockCount: 1, blockSize: 1, carveSize: 1,
    agent, createdAt: t, state: "receiving", stateSince: t, claim: null, completedAt: null, sha256: null, compression: null,
    hold: null, origin: "agent", imported: null, verifications: [] };
  if ((await catalog.create(entry)).created) out.created.push(carveId);
  const won = await catalog.update(carveId, { states: ["receiving"], claim: null }, { state: "completing", claim: me });
  if (won) out.claimed.push(carveId);
  await catalog.update(carveId, {}, { addVerification: { claimedSha256: me, match: true, by: me, at: t } });
}
await catalog.close();
process.stdout.write(JSON.stringify(out));
`,
    );
    const startAt = Date.now() + 1500;
    const run = (me: string): Promise<{ created: string[]; claimed: string[] }> =>
      new Promise((resolve, reject) => {
        const p = spawn(process.execPath, [script, dataDir, me, String(startAt)], { stdio: ["ignore", "pipe", "pipe"] });
        let out = "";
        let err = "";
        p.stdout.on("data", (c: Buffer) => (out += c.toString()));
        p.stderr.on("data", (c: Buffer) => (err += c.toString()));
        p.on("close", (code) => (code === 0 ? resolve(JSON.parse(out) as { created: string[]; claimed: string[] }) : reject(new Error(err))));
      });
    const results = await Promise.all(["p1", "p2", "p3", "p4"].map(run));
    const ids = Array.from({ length: 40 }, (_, i) => `race-${i}`);
    expect(results.flatMap((r) => r.created).sort()).toEqual([...ids].sort());
    expect(results.flatMap((r) => r.claimed).sort()).toEqual([...ids].sort());
    const catalog = await SqliteCatalog.open({ dataDir });
    try {
      for (const carveId of ids) {
        const e = await catalog.get(carveId);
        expect(e?.state).toBe("completing");
        expect(e?.verifications.map((v) => v.by).sort()).toEqual(["p1", "p2", "p3", "p4"]);
      }
      expect(await catalog.count()).toEqual({ receiving: 40, complete: 0 });
    } finally {
      await catalog.close();
    }
  });
});

describe("SQLite catalog: another process holding the write lock", () => {
  it("holds up only the write that waits for it: the call returns at once, reads go on, the write lands once the lock is free", async () => {
    const dataDir = await tempDir();
    const catalog = await SqliteCatalog.open({ dataDir });
    const audit = await SqliteAuditLog.open({ dataDir });
    try {
      const before = testEntry();
      await catalog.create(before);
      const lock = await holdWriteLock(path.join(dataDir, CATALOG_FILE));
      let released = false;
      try {
        const entry = testEntry();
        let settled = false;
        // SQLite's busy handler sleeps in the calling thread: waiting the whole timeout there blocked the event loop
        // (and so every request of the service) for 5 s. Now only a short slice blocks; the rest is waited between
        // attempts, so the promise is still pending after a turn of the event loop.
        const write = catalog.create(entry).finally(() => (settled = true));
        const appended = audit.append(testEvent()).finally(() => undefined);
        await new Promise((resolve) => setImmediate(resolve));
        expect(settled, "the write waits for the lock without holding the event loop").toBe(false);
        expect((await catalog.get(before.carveId))?.carveId, "readers go on (WAL)").toBe(before.carveId);
        expect(settled).toBe(false);
        await lock.release();
        released = true;
        expect((await write).created).toBe(true);
        await appended;
        expect((await catalog.get(entry.carveId))?.sessionId).toBe(entry.sessionId);
        expect((await audit.query({ limit: 10 })).events).toHaveLength(1);
      } finally {
        if (!released) await lock.release();
      }
    } finally {
      await catalog.close();
      await audit.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
