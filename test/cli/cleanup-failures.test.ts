/**
 * The built cleanup command's failure exit codes, each from a real cause (test/cli/cleanup.test.ts has the others):
 *  1: some carves could not be deleted: the archive directory is read-only for the user cron runs cleanup as
 *     (root ignores permissions, so as root the command runs as `nobody` over a directory handed to it);
 *     the carves it could not delete are left for a later run, which finishes them once the directory is writable.
 *  4: the run itself failed: the catalog's retention index damaged on disk (SQLite: database disk image is
 *     malformed), and with GridFS the MongoDB server going away in the middle of the run.
 */
import { execFile } from "node:child_process";
import { chmod, chown, mkdtemp, open, readdir, rm, utimes } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import Database from "better-sqlite3";
import { MongoClient } from "mongodb";
import { afterEach, beforeEach, describe, expect, inject, it } from "vitest";
import { makeCarve } from "../support/carve-data.js";
import { openFilesystemStore, openGridfsStore } from "../support/deployment.js";
import { startMongoHoldProxy } from "../support/mongo-hold-proxy.js";
import { ROOT } from "../support/service.js";

const run = promisify(execFile);
const CLI = path.join(ROOT, "dist/src/cli/cleanup.js");
const DAY = 86_400_000;
const NOBODY = 65534;
const asRoot = process.getuid?.() === 0;

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

async function cleanup(env: Record<string, string>, options: { unprivileged?: boolean } = {}): Promise<Result> {
  // setpriv execs node as the unprivileged user, as cron would run the command as the service's user
  const argv =
    options.unprivileged && asRoot
      ? ["setpriv", `--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", "--", process.execPath, CLI]
      : [process.execPath, CLI];
  try {
    const { stdout, stderr } = await run(argv[0] as string, argv.slice(1), {
      env: { PATH: process.env.PATH ?? "", CARVE_CONFIG: path.join(ROOT, "conf/carve-server.yml"), LOG_LEVEL: "info", ...env },
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** Two carves completed 40 days ago and one abandoned 40 days ago (one block of three). */
async function prepareFilesystem(dir: string): Promise<{ complete: string[]; abandoned: string }> {
  const past = Date.now() - 40 * DAY;
  const store = await openFilesystemStore(dir, { now: () => new Date(past) });
  const complete: string[] = [];
  let abandoned = "";
  for (let i = 0; i < 3; i++) {
    const c = makeCarve({ size: 3072, blockSize: 1024 });
    const { session } = await store.createSession(c.spec, `fail000${i}`);
    for (const [n, b] of c.blocks.entries()) if (i < 2 || n === 0) await store.putBlock(session, n, b);
    if (i < 2) complete.push(c.spec.carveId);
    else abandoned = c.spec.carveId;
  }
  await store.close();
  await utimes(path.join(dir, "sessions", abandoned, "journal"), new Date(past), new Date(past));
  return { complete, abandoned };
}

describe("exit code 1: some carves could not be deleted", () => {
  let work: string;
  let dir: string;
  beforeEach(async () => {
    work = await mkdtemp(path.join(tmpdir(), "carve-cli-fail-"));
    await chmod(work, 0o755);
    dir = path.join(work, "data");
  });
  afterEach(async () => {
    await chmod(path.join(dir, "carves"), 0o755).catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  });

  it("reports the carves whose archives it cannot remove, deletes the rest, and a later run finishes them", async () => {
    const { complete, abandoned } = await prepareFilesystem(dir);
    if (asRoot) {
      for (const entry of await readdir(dir, { recursive: true })) await chown(path.join(dir, entry), NOBODY, NOBODY);
      await chown(dir, NOBODY, NOBODY);
    }
    await chmod(path.join(dir, "carves"), 0o555);
    const env = { CARVE_DATA_DIR: dir };

    const res = await cleanup(env, { unprivileged: true });
    expect(res.code, res.stderr).toBe(1);
    expect(res.stdout.trim()).toBe(
      "cleanup: deleted 1 carve(s) (0 expired, 1 abandoned, 0 unfinished deletes), freed 1 KiB, 0 kept, 2 failed",
    );
    const failures = res.stderr
      .split("\n")
      .filter((l) => l.includes("could not expire a carve"))
      .map((l) => JSON.parse(l) as { carveId: string; err: Record<string, unknown> });
    expect(failures.map((f) => f.carveId).sort()).toEqual([...complete].sort());
    // the log says what failed underneath, not only "storage temporarily unavailable"
    for (const f of failures) {
      expect(f.err.code).toBe("STORAGE_UNAVAILABLE");
      expect(f.err.message).toMatch(new RegExp(`^storage temporarily unavailable: delete ${f.carveId}: EACCES: permission denied`));
    }
    expect((await readdir(path.join(dir, "carves"))).sort()).toEqual(complete.map((id) => `${id}.tar`).sort());
    expect(await readdir(path.join(dir, "sessions"))).not.toContain(abandoned);

    // The two were marked deleting before their bytes: nobody sees them now, and retention finishes what a
    // failed delete left once it is older than retention.staleDeleteAfterMinutes (10, the default). Their
    // marks are aged 11 minutes in the catalog, as time would, instead of the test waiting for a short period.
    const catalog = (fn: (db: Database.Database) => void): void => {
      const db = new Database(path.join(dir, "catalog.sqlite"));
      try {
        fn(db);
      } finally {
        db.close(); // before cleanup runs: it is the only user of the catalog then, as in production
      }
    };
    catalog((db) => {
      const marked = db.prepare("SELECT carve_id FROM carves WHERE state = 'deleting' ORDER BY carve_id").all() as Array<{ carve_id: string }>;
      expect(marked.map((r) => r.carve_id)).toEqual([...complete].sort());
    });
    // young marks are left alone: a delete that may still be running elsewhere is not taken over
    const early = await cleanup(env, { unprivileged: true });
    expect(early.code, early.stderr).toBe(0);
    expect(early.stdout.trim()).toBe("cleanup: deleted 0 carve(s) (0 expired, 0 abandoned, 0 unfinished deletes), freed 0 B, 0 kept, 0 failed");
    catalog((db) => db.prepare("UPDATE carves SET state_since = state_since - ? WHERE state = 'deleting'").run(11 * 60_000));
    await chmod(path.join(dir, "carves"), 0o755);
    const again = await cleanup(env, { unprivileged: true });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout.trim()).toBe(
      "cleanup: deleted 2 carve(s) (0 expired, 0 abandoned, 2 unfinished deletes), freed 6 KiB, 0 kept, 0 failed",
    );
    expect(await readdir(path.join(dir, "carves"))).toEqual([]);
  });
});

describe("exit code 4: the run itself failed", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "carve-cli-fail4-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("filesystem: the catalog's retention index is damaged on disk", async () => {
    const { complete } = await prepareFilesystem(dir);
    const file = path.join(dir, "catalog.sqlite");
    const db = new Database(file);
    db.pragma("wal_checkpoint(TRUNCATE)"); // every page in the main file, where the damage is done
    const pageSize = db.pragma("page_size", { simple: true }) as number;
    const { rootpage } = db.prepare("SELECT rootpage FROM sqlite_master WHERE name = 'carves_retention'").get() as { rootpage: number };
    db.close();
    const handle = await open(file, "r+");
    await handle.write(Buffer.alloc(pageSize, 0xff), 0, pageSize, (rootpage - 1) * pageSize);
    await handle.close();

    const res = await cleanup({ CARVE_DATA_DIR: dir });
    expect(res.code, res.stderr).toBe(4);
    expect(res.stderr).toMatch(/^cleanup: run failed: storage temporarily unavailable: sweep: database disk image is malformed$/m);
    expect(res.stdout).toBe(""); // no summary: the run did not happen
    expect((await readdir(path.join(dir, "carves"))).sort()).toEqual(complete.map((id) => `${id}.tar`).sort());
  });

  it("GridFS: the MongoDB server goes away during the run", async () => {
    const uri = inject("mongoUri");
    const database = `carve_cli4_${Date.now().toString(36)}`;
    const past = Date.now() - 40 * DAY;
    const store = await openGridfsStore(uri, database, { now: () => new Date(past) });
    for (let i = 0; i < 2; i++) {
      const c = makeCarve({ size: 2048, blockSize: 1024 });
      const { session } = await store.createSession(c.spec, `gone000${i}`);
      for (const [n, b] of c.blocks.entries()) await store.putBlock(session, n, b);
    }
    await store.close();
    const proxy = await startMongoHoldProxy(uri);
    try {
      // storage opens (indexes, server checks); the run's first catalog read is where the server goes away
      const cut = proxy.cutAt((c) => c.name === "find" && c.collection === "carves.carves");
      const res = await cleanup({ CARVE_STORAGE: "gridfs", CARVE_MONGODB_URI: proxy.uri, CARVE_MONGODB_DATABASE: database });
      await cut;
      expect(res.code, res.stderr).toBe(4);
      expect(res.stderr).toMatch(/^cleanup: run failed: storage temporarily unavailable: find expired entries: .+$/m);
      expect(res.stdout).toBe("");
    } finally {
      await proxy.close();
      const client = await MongoClient.connect(uri);
      const left = await client.db(database).collection("carves.carves").countDocuments();
      await client.db(database).dropDatabase();
      await client.close();
      expect(left).toBe(2);
    }
  });
});
