/**
 * `npm run cleanup` as cron runs it: the built command in a child process, real data directory, exit codes
 * and the one-line summary.
 */
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { openFilesystemStore } from "../support/deployment.js";
import { makeCarve } from "../support/carve-data.js";
import { ROOT } from "../support/service.js";

const run = promisify(execFile);
const CLI = path.join(ROOT, "dist/src/cli/cleanup.js");

async function cleanup(env: Record<string, string>, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], {
      env: { PATH: process.env.PATH ?? "", CARVE_CONFIG: path.join(ROOT, "conf/carve-server.yml"), LOG_LEVEL: "info", ...env },
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe("cleanup command", () => {
  let dir: string;
  const ids: string[] = [];

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "carve-cli-"));
    const past = Date.now() - 40 * 86_400_000;
    const store = await openFilesystemStore(dir, { now: () => new Date(past) });
    ids.length = 0;
    for (let i = 0; i < 3; i++) {
      const c = makeCarve({ size: 2048, blockSize: 1024 });
      ids.push(c.spec.carveId);
      const { session } = await store.createSession(c.spec, `cli0000${i}`);
      for (const [n, b] of c.blocks.entries()) if (i < 2 || n === 0) await store.putBlock(session, n, b);
    }
    await store.close();
    // the abandoned carve's journal was last written 40 days ago, as far as the filesystem knows
    const journal = path.join(dir, "sessions", ids[2]!, "journal");
    await utimes(journal, new Date(past), new Date(past));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("lists what would go in a dry run and deletes nothing", async () => {
    const res = await cleanup({ CARVE_DATA_DIR: dir }, "--dry-run");
    expect(res.code).toBe(0);
    const lines = res.stdout.trim().split("\n");
    expect(lines).toHaveLength(4);
    expect(lines.slice(0, 3).map((l) => l.split("\t")[0]).sort()).toEqual([...ids].sort());
    expect(lines[3]).toBe("cleanup (dry run): would delete 3 carve(s), 5 KiB");
    const again = await cleanup({ CARVE_DATA_DIR: dir }, "--dry-run");
    expect(again.stdout).toBe(res.stdout);
  });

  it("deletes expired and abandoned carves with a one-line summary, then finds nothing", async () => {
    const res = await cleanup({ CARVE_DATA_DIR: dir });
    expect(res.code).toBe(0);
    expect(res.stdout.trim()).toBe(
      "cleanup: deleted 3 carve(s) (2 expired, 1 abandoned, 0 unfinished deletes), freed 5 KiB, 0 kept, 0 failed",
    );
    expect(res.stderr).toContain("carve expired"); // logs go to stderr
    // ... in the service's own format: level names and ISO times, not pino's numbers and epoch milliseconds.
    const logged = JSON.parse(res.stderr.split("\n").find((l) => l.includes("carve expired")) ?? "{}") as Record<string, unknown>;
    expect(logged).toMatchObject({ level: "info", service: "osquery-carve-server", component: "cleanup" });
    expect(String(logged.time)).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    const json = await cleanup({ CARVE_DATA_DIR: dir }, "--json");
    expect(JSON.parse(json.stdout)).toMatchObject({ deleted: 0, failed: 0 });
  });

  it("exits 1 when a carve cannot be deleted, after deleting the others", async () => {
    // A directory (not empty) where the zstd archive of the first carve would be: removing it fails.
    const blocker = path.join(dir, "carves", `${ids[0]}.tar.zst`);
    await mkdir(blocker);
    await writeFile(path.join(blocker, "keep"), "x");
    const res = await cleanup({ CARVE_DATA_DIR: dir });
    expect(res.code, res.stderr).toBe(1);
    expect(res.stdout.trim()).toBe(
      "cleanup: deleted 2 carve(s) (1 expired, 1 abandoned, 0 unfinished deletes), freed 3 KiB, 0 kept, 1 failed",
    );
    expect(res.stderr).toContain("could not expire a carve");
  });

  it("keeps carves younger than CARVE_RETENTION_DAYS", async () => {
    const res = await cleanup({ CARVE_DATA_DIR: dir, CARVE_RETENTION_DAYS: "60", CARVE_ABANDONED_AFTER_HOURS: "2000" });
    expect(res.stdout.trim()).toMatch(/^cleanup: deleted 0 carve/);
  });

  it("exits 2 on bad configuration or arguments, 3 when the data directory is owned by a running service", async () => {
    expect((await cleanup({ CARVE_DATA_DIR: dir, CARVE_RETENTION_DAYS: "soon" })).code).toBe(2);
    expect((await cleanup({ CARVE_DATA_DIR: dir }, "--frobnicate")).code).toBe(2);
    const owner = await openFilesystemStore(dir);
    try {
      // this test process owns the directory now, as the service would
      const res = await cleanup({ CARVE_DATA_DIR: dir });
      expect(res.code).toBe(3);
      expect(res.stderr).toMatch(/in use by process \d+/);
    } finally {
      await owner.close();
    }
  });
});
