/**
 * Upgrade in place of a data directory written by the release before the catalog (test/fixtures/upgrade/
 * filesystem-v1, made by that release's own store): every record field, the audit trail, no raw node key left,
 * the blob layout untouched, idempotency, and kill -9 at every crash point hit of the upgrade.
 */
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { appendFileSync, cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, lstatSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { nodeKeyDigest } from "../../src/services/ingest.js";
import { sessionOf } from "../../src/services/records.js";
import type { CatalogEntry } from "../../src/storage/contracts.js";
import { FilesystemBlobs } from "../../src/storage/filesystem/filesystem-blobs.js";
import type { AgentInfo, AuditEvent } from "../../src/storage/model.js";
import { upgradeFilesystemDataDir } from "../../src/storage/sqlite/migrate-filesystem.js";
import { SqliteAuditLog } from "../../src/storage/sqlite/sqlite-audit-log.js";
import { SqliteCatalog } from "../../src/storage/sqlite/sqlite-catalog.js";
import { CATALOG_FILE } from "../../src/storage/sqlite/sqlite-database.js";
import { readAll } from "../support/carve-data.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const FIXTURE = path.join(ROOT, "test/fixtures/upgrade/filesystem-v1/store");
const RAW_KEYS = ["nodekey-alpha-0001", "nodekey-beta-0002", "nodekey-gamma-0003"];
const logger = pino({ level: "silent" });
const work = mkdtempSync(path.join(tmpdir(), "carve-upgrade-"));

function copyFixture(): string {
  const dir = mkdtempSync(path.join(work, "dir-"));
  cpSync(FIXTURE, dir, { recursive: true, verbatimSymlinks: true });
  return dir;
}

/** Every file under dir (symlinks as such), relative, sorted. */
function tree(dir: string, sub = ""): string[] {
  const out: string[] = [];
  for (const name of readdirSync(path.join(dir, sub)).sort()) {
    const rel = path.join(sub, name);
    if (lstatSync(path.join(dir, rel)).isDirectory()) out.push(...tree(dir, rel));
    else out.push(rel);
  }
  return out;
}

function digestOf(file: string): string {
  return createHash("sha256").update(readFileSync(file)).digest("hex");
}

/** Both tables in full, as rows: what "nothing lost, nothing duplicated" compares. */
function dump(dir: string): { carves: unknown[]; audit: unknown[] } {
  const db = new Database(path.join(dir, CATALOG_FILE), { readonly: true });
  try {
    return {
      carves: db.prepare("SELECT * FROM carves ORDER BY carve_id").all(),
      audit: db.prepare("SELECT * FROM audit ORDER BY id").all(),
    };
  } finally {
    db.close();
  }
}

const id = (n: number): string => `0b1c9a52-0000-4000-8000-00000000000${n}`;
const agentCert: AgentInfo = {
  address: "10.1.2.3",
  userAgent: "osquery/5.23.0",
  certificate: { subjectDn: "CN=host-1,O=Example", fingerprintSha256: "AA:BB:CC:DD", source: "proxy" },
};
const d = (iso: string): Date => new Date(iso);
const base = (n: number, over: Partial<CatalogEntry>): CatalogEntry => ({
  carveId: id(n),
  sessionId: `5e55000000000000000000000000a00${n}`,
  requestId: `req-000${n}`,
  nodeKeySha256: null,
  blockCount: 3,
  blockSize: 4096,
  carveSize: 10240,
  agent: agentCert,
  createdAt: d("2026-11-02T09:00:00.000Z"),
  state: "complete",
  stateSince: d("2026-11-02T09:00:00.000Z"),
  claim: null,
  completedAt: null,
  sha256: null,
  compression: null,
  hold: null,
  origin: "agent",
  imported: null,
  verifications: [],
  ...over,
});

/** What the fixture's meta files say (its README), in catalog terms. */
const EXPECTED: CatalogEntry[] = [
  base(1, {
    completedAt: d("2026-11-02T09:00:03.000Z"),
    stateSince: d("2026-11-02T09:00:03.000Z"),
    sha256: "66a26b6623f5e0bf13c4490d7f80ece4d0b2d7748735c7d75510b4993c43c37b",
    compression: "none",
  }),
  base(2, {
    blockCount: 13,
    blockSize: 256,
    carveSize: 3161,
    createdAt: d("2026-11-02T09:01:03.000Z"),
    completedAt: d("2026-11-02T09:01:16.000Z"),
    stateSince: d("2026-11-02T09:01:16.000Z"),
    sha256: "c6c447669600e74765785d2572298c945effe984cfc63f90f757733b3d487176",
    compression: "zstd",
  }),
  base(3, {
    state: "receiving",
    blockCount: 5,
    blockSize: 1024,
    carveSize: 5120,
    agent: { address: "10.1.2.4", userAgent: "osquery/5.22.1", certificate: null },
    createdAt: d("2026-11-02T09:02:16.000Z"),
    stateSince: d("2026-11-02T09:02:16.000Z"),
  }),
  base(4, {
    blockCount: 2,
    blockSize: 8192,
    createdAt: d("2026-11-02T09:03:19.000Z"),
    completedAt: d("2026-11-02T09:03:21.000Z"),
    stateSince: d("2026-11-02T09:03:21.000Z"),
    sha256: "b01403f0968c975dcd7b2b5eb842b8eae2bf1303a48015696517904a5d4048a3",
    compression: "none",
    hold: { by: "Jane Responder", reason: "case IR-2026-17", at: d("2026-11-02T09:03:26.000Z") },
  }),
  base(5, {
    createdAt: d("2026-11-02T09:04:26.000Z"),
    completedAt: d("2026-11-02T09:04:29.000Z"),
    stateSince: d("2026-11-02T09:04:29.000Z"),
    sha256: "7b0f290358d772a82bac662ffa8962d5288271e314ddb4494feb87c988713b15",
    compression: "none",
    verifications: [
      {
        claimedSha256: "7b0f290358d772a82bac662ffa8962d5288271e314ddb4494feb87c988713b15",
        match: true,
        by: "token-responder",
        at: d("2026-11-02T09:04:34.000Z"),
      },
      { claimedSha256: "0".repeat(64), match: false, by: null, at: d("2026-11-02T09:04:39.000Z") },
    ],
  }),
  base(6, {
    sessionId: "7a8b9c0d-0000-4000-8000-00000000a006",
    requestId: "import",
    blockCount: 1,
    blockSize: 10240,
    agent: { address: "10.9.9.9", userAgent: "curl/8.5.0", certificate: null },
    createdAt: d("2026-11-02T09:05:39.000Z"),
    completedAt: d("2026-11-02T09:05:39.000Z"),
    stateSince: d("2026-11-02T09:05:39.000Z"),
    sha256: "98ea51d6790fd73bfd0ee2d673e75d8abe4579609ec3cde1b9ddb877fdf5a12d",
    compression: "none",
    origin: "import",
    imported: {
      host: "ws-0042",
      originalPath: "/var/tmp/evidence.tar",
      description: "collected by hand",
      importedBy: { displayName: "token-responder", entityId: "ent-9" },
    },
  }),
  base(7, {
    state: "deleting",
    createdAt: d("2026-11-02T09:06:39.000Z"),
    stateSince: d("2026-11-03T15:00:00.000Z"),
    completedAt: d("2026-11-02T09:06:42.000Z"),
    sha256: "f4184786356126082be4068a994921e4fb958e7691d9b84e0538333de3964df1",
    compression: "none",
  }),
  base(8, {
    state: "importing",
    sessionId: "7a8b9c0d-0000-4000-8000-00000000a008",
    requestId: "import",
    blockCount: 1,
    blockSize: 1,
    carveSize: 0,
    agent: { address: "10.9.9.8", userAgent: null, certificate: null },
    createdAt: d("2026-11-03T15:00:00.000Z"),
    stateSince: d("2026-11-03T15:00:00.000Z"),
    origin: "import",
    imported: { host: null, originalPath: null, description: null, importedBy: { displayName: "token-importer", entityId: null } },
  }),
  base(9, {
    state: "receiving",
    blockCount: 2,
    blockSize: 1024,
    carveSize: 2048,
    createdAt: d("2026-11-02T09:07:42.000Z"),
    stateSince: d("2026-11-02T09:07:42.000Z"),
  }),
];
const NODE_OF: Record<number, string | null> = {
  1: "nodekey-alpha-0001",
  2: "nodekey-beta-0002",
  3: "nodekey-alpha-0001",
  4: "nodekey-gamma-0003",
  5: "nodekey-beta-0002",
  6: null,
  7: "nodekey-gamma-0003",
  8: null,
  9: null,
};
for (const [i, e] of EXPECTED.entries()) {
  const key = NODE_OF[i + 1];
  e.nodeKeySha256 = key ? createHash("sha256").update(key, "utf8").digest("hex") : null;
}

const AUDIT_IDS = Array.from({ length: 7 }, (_, i) => `a0000000-0000-4000-8000-00000000000${i}`);

async function upgraded(dir: string): Promise<{ catalog: SqliteCatalog; audit: SqliteAuditLog }> {
  return { catalog: await SqliteCatalog.open({ dataDir: dir }), audit: await SqliteAuditLog.open({ dataDir: dir }) };
}

afterAll(() => rmSync(work, { recursive: true, force: true }));

describe("upgrade of a filesystem data directory (meta files) to the SQLite catalog", () => {
  it("moves every record, with the node key hashed as the ingest hashes it", async () => {
    const dir = copyFixture();
    const report = await upgradeFilesystemDataDir({ dataDir: dir, logger });
    expect(report).toEqual({ carves: 9, auditEvents: 7, kept: [], skippedAuditLines: 0 });
    for (const key of RAW_KEYS) expect(createHash("sha256").update(key, "utf8").digest("hex")).toBe(nodeKeyDigest(key));
    const { catalog, audit } = await upgraded(dir);
    try {
      for (const e of EXPECTED) {
        expect(await catalog.get(e.carveId), e.carveId).toEqual(e);
        expect(await catalog.getBySession(e.sessionId), e.sessionId).toEqual(e);
      }
      for (const n of [1, 2, 4, 5, 6]) {
        const e = EXPECTED[n - 1] as CatalogEntry;
        const ext = e.compression === "zstd" ? ".tar.zst" : ".tar";
        expect(digestOf(path.join(dir, "carves", `${e.carveId}${ext}`)), e.carveId).toBe(e.sha256);
      }
      const page = await catalog.list({ limit: 100 });
      expect(page.entries.map((e) => e.carveId)).toEqual([9, 6, 5, 4, 3, 2, 1].map(id));
      expect(await catalog.count()).toEqual({ receiving: 2, complete: 5 });
      const alpha = nodeKeyDigest("nodekey-alpha-0001") as string;
      expect((await catalog.list({ limit: 10, nodeSha256Prefix: alpha.slice(0, 8) })).entries.map((e) => e.carveId)).toEqual([id(3), id(1)]);
      const far = new Date("2030-01-01T00:00:00Z");
      const sweep = await catalog.sweep({ completedBefore: far, idleBefore: far, staleDeleteBefore: far }, 100);
      expect(sweep.stale.map((e) => e.carveId)).toEqual([id(7), id(8)]);
      expect(sweep.retention.map((e) => e.carveId)).toEqual([id(1), id(2), id(5), id(6)]); // 4 is held
      expect(sweep.idle.map((e) => e.carveId)).toEqual([id(3), id(9)]);

      const events = (await audit.query({ limit: 100 })).events;
      expect(events.map((e) => e.id)).toEqual([6, 5, 4, 3, 2, 1, 0].map((i) => AUDIT_IDS[i]));
      const download = events.find((e) => e.action === "carve.download") as AuditEvent;
      expect(download).toEqual({
        id: AUDIT_IDS[1],
        at: d("2026-11-02T10:05:00.000Z"),
        action: "carve.download",
        result: "allowed",
        actor: { displayName: "token-responder", entityId: "ent-9", tokenFingerprint: "f1f2f3f4" },
        client: { address: "10.0.0.7", certificateSubject: "CN=responder,O=Example", requestId: "rq-1" },
        carveId: id(1),
        detail: { bytesSent: 10240, range: null },
      });
      expect(events.find((e) => e.id === AUDIT_IDS[2])).toEqual({
        id: AUDIT_IDS[2],
        at: d("2026-11-02T10:05:00.000Z"),
        action: "carve.read",
        result: "denied",
        actor: { displayName: null, entityId: null, tokenFingerprint: "e0e0" },
        client: { address: "10.0.0.7", certificateSubject: "CN=responder,O=Example", requestId: "rq-2" },
        carveId: id(2),
        detail: { reason: "ACCESS_DENIED" },
      });
      expect(events.find((e) => e.id === AUDIT_IDS[3])?.detail).toEqual({ reason: "ARCHIVE_NOT_TAR", partial: true });
      expect(events.find((e) => e.id === AUDIT_IDS[0])?.carveId).toBeNull();
      const second = await audit.query({ limit: 100, since: d("2026-11-03T00:00:00.000Z") });
      expect(second.events.map((e) => e.id)).toEqual([6, 5, 4].map((i) => AUDIT_IDS[i]));
    } finally {
      await catalog.close();
      await audit.close();
    }
  });

  it("leaves no raw node key, meta file, index link or audit file, and the blob layout as it was", async () => {
    const dir = copyFixture();
    await upgradeFilesystemDataDir({ dataDir: dir, logger });
    const after = tree(dir);
    for (const file of after) {
      const bytes = readFileSync(path.join(dir, file));
      for (const key of RAW_KEYS) expect(bytes.includes(key), `${key} in ${file}`).toBe(false);
    }
    for (const gone of ["meta", "index", "audit"]) expect(existsSync(path.join(dir, gone)), gone).toBe(false);
    expect(after.filter((f) => f.startsWith("tmp/") && f.endsWith(".json"))).toEqual([]);
    const blobs = tree(FIXTURE).filter((f) => f.startsWith("carves/") || f.startsWith("sessions/") || f.startsWith("tmp/"));
    expect(after.filter((f) => !f.startsWith(CATALOG_FILE))).toEqual(blobs);
    for (const f of blobs) expect(digestOf(path.join(dir, f)), f).toBe(digestOf(path.join(FIXTURE, f)));
    // And the fixture itself holds the keys, or the search above proves nothing.
    expect(tree(FIXTURE).some((f) => f.startsWith("meta/") && readFileSync(path.join(FIXTURE, f)).includes(RAW_KEYS[0] as string))).toBe(true);
  });

  it("gives the filesystem blob store the archives and partial uploads of the upgraded directory", async () => {
    const dir = copyFixture();
    await upgradeFilesystemDataDir({ dataDir: dir, logger });
    const blobs = await FilesystemBlobs.create({ dataDir: dir, logger });
    try {
      const plain = EXPECTED[0] as CatalogEntry;
      const reader = await blobs.read({ carveId: plain.carveId, sessionId: plain.sessionId, compression: "none", size: plain.carveSize });
      const bytes = await readAll(reader.stream);
      expect(createHash("sha256").update(bytes).digest("hex")).toBe(plain.sha256);
      const progress = await blobs.progress(sessionOf(EXPECTED[2] as CatalogEntry), 10);
      expect(progress).toMatchObject({ blocksReceived: 3, bytesReceived: 3072, missing: [2, 4] });
    } finally {
      await blobs.close();
    }
  });

  it("is idempotent: a second run changes nothing", async () => {
    const dir = copyFixture();
    await upgradeFilesystemDataDir({ dataDir: dir, logger });
    const first = dump(dir);
    expect(await upgradeFilesystemDataDir({ dataDir: dir, logger })).toEqual({ carves: 0, auditEvents: 0, kept: [], skippedAuditLines: 0 });
    expect(dump(dir)).toEqual(first);
    expect(first.carves).toHaveLength(9);
    expect(first.audit).toHaveLength(7);
  });

  it("skips a torn audit line, and keeps a meta file it cannot read (with its index link) or whose ids are taken", async () => {
    const dir = copyFixture();
    appendFileSync(path.join(dir, "audit", "2026-11-03.jsonl"), '{"id":"torn","at":"2026-11-03T09:');
    writeFileSync(path.join(dir, "meta", `${id(9).slice(0, -1)}a.json`), '{"version":1,"carveId":');
    symlinkSync(`${id(9).slice(0, -1)}a`, path.join(dir, "index", "5e55000000000000000000000000a00a"));
    // A record claiming carve 1's session id (no release wrote one: two index links cannot share a name).
    const twin = JSON.parse(readFileSync(path.join(dir, "meta", `${id(1)}.json`), "utf8")) as Record<string, unknown>;
    writeFileSync(path.join(dir, "meta", `${id(9).slice(0, -1)}b.json`), JSON.stringify({ ...twin, carveId: `${id(9).slice(0, -1)}b` }));
    const report = await upgradeFilesystemDataDir({ dataDir: dir, logger });
    expect(report).toEqual({
      carves: 9,
      auditEvents: 7,
      kept: [
        { file: `meta/${id(9).slice(0, -1)}a.json`, reason: "not JSON" },
        { file: `meta/${id(9).slice(0, -1)}b.json`, reason: "its carve id or session id belongs to another entry" },
      ],
      skippedAuditLines: 1,
    });
    expect(readdirSync(path.join(dir, "meta"))).toEqual([`${id(9).slice(0, -1)}a.json`, `${id(9).slice(0, -1)}b.json`]);
    expect(readdirSync(path.join(dir, "index"))).toEqual(["5e55000000000000000000000000a00a"]);
    expect(existsSync(path.join(dir, "audit"))).toBe(false);
    const catalog = await SqliteCatalog.open({ dataDir: dir });
    expect(await catalog.getBySession(`5e55000000000000000000000000a001`)).toEqual(EXPECTED[0]);
    await catalog.close();
    const again = await upgradeFilesystemDataDir({ dataDir: dir, logger });
    expect(again.kept).toHaveLength(2);
    expect(again.carves).toBe(0);
  });

  describe("kill -9 during the upgrade", () => {
    let script: string;
    let clean: { carves: unknown[]; audit: unknown[] };
    beforeAll(async () => {
      // The child runs the built module, as the service would.
      const build = spawnSync("bash", [path.join(ROOT, "scripts/build.sh"), "--if-stale"], { cwd: ROOT, encoding: "utf8" });
      expect(build.status, build.stderr).toBe(0);
      script = path.join(work, "upgrade-child.mjs");
      writeFileSync(
        script,
        [
          `const { upgradeFilesystemDataDir } = await import(${JSON.stringify(path.join(ROOT, "dist/src/storage/sqlite/migrate-filesystem.js"))});`,
          "const logger = { info() {}, warn() {} };",
          "const report = await upgradeFilesystemDataDir({ dataDir: process.argv[2], logger, batchSize: Number(process.argv[3]) });",
          "process.stdout.write(JSON.stringify(report));",
        ].join("\n"),
      );
      const dir = copyFixture();
      await upgradeFilesystemDataDir({ dataDir: dir, logger });
      clean = dump(dir);
    });

    const child = (dir: string, crashAt: string | null, batchSize = 2): Promise<{ code: number | null; signal: string | null; out: string }> =>
      new Promise((resolve, reject) => {
        const env = { ...process.env };
        delete env.CARVE_CRASH_AT;
        if (crashAt) env.CARVE_CRASH_AT = crashAt;
        const p = spawn(process.execPath, [script, dir, String(batchSize)], { env, stdio: ["ignore", "pipe", "pipe"] });
        let out = "";
        p.stdout.on("data", (c: Buffer) => (out += c.toString()));
        p.on("error", reject);
        p.on("close", (code, signal) => resolve({ code, signal, out }));
      });

    const finishedLikeClean = async (dir: string): Promise<void> => {
      const last = await child(dir, null);
      expect(last.code).toBe(0);
      expect(dump(dir)).toEqual(clean);
      for (const gone of ["meta", "index", "audit"]) expect(existsSync(path.join(dir, gone)), gone).toBe(false);
    };

    it("keeps every file until the rows are committed", async () => {
      const dir = copyFixture();
      const crashed = await child(dir, "migrate.mid:1");
      expect(crashed.signal).toBe("SIGKILL");
      expect(dump(dir).carves).toHaveLength(2);
      expect(tree(dir).filter((f) => f.startsWith("meta/"))).toHaveLength(9);
      expect(tree(dir).filter((f) => f.startsWith("index/"))).toHaveLength(7);
      await finishedLikeClean(dir);
    });

    it("loses and duplicates nothing, killed at any hit of the crash point", async () => {
      let hits = 0;
      for (let n = 1; ; n++) {
        const dir = copyFixture();
        const run = await child(dir, `migrate.mid:${n}`);
        if (run.signal !== "SIGKILL") {
          // n is past the last hit: the run finished by itself.
          expect(run.code).toBe(0);
          expect(dump(dir)).toEqual(clean);
          break;
        }
        hits = n;
        await finishedLikeClean(dir);
      }
      // 5 batches of meta files, 4 of audit events, 9 of removals (18 files by 2).
      expect(hits).toBe(18);
    });

    it("survives being killed again while finishing, and two upgrades at once", async () => {
      const dir = copyFixture();
      expect((await child(dir, "migrate.mid:3")).signal).toBe("SIGKILL");
      expect((await child(dir, "migrate.mid:7")).signal).toBe("SIGKILL");
      const [a, b] = await Promise.all([child(dir, null, 1), child(dir, null, 1)]);
      expect([a.code, b.code]).toEqual([0, 0]);
      expect(dump(dir)).toEqual(clean);
      await finishedLikeClean(dir);
    });
  });
});
