/**
 * The embedded catalog (catalog.sqlite, WAL) shared with another process while the service runs: an operator's
 * `sqlite3` reading it and quitting must leave the service's write-ahead log alone. The service opens the file
 * twice (catalog and audit log); a raw open and close of the file for the second used to drop the first
 * connection's POSIX locks, so the sqlite3 shell took itself for the last connection and deleted the WAL: every
 * start acknowledged afterwards went to an unlinked file, invisible to other processes and lost at a crash.
 */
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawnService } from "../support/service.js";

const run = promisify(execFile);
let work: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-sqlite-beside-"));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function carveIds(file: string): Promise<string[]> {
  const { stdout } = await run("sqlite3", [file, "SELECT carve_id FROM carves ORDER BY carve_id"]);
  return stdout.split("\n").filter(Boolean);
}

describe("catalog.sqlite read by sqlite3 while the service runs", () => {
  it("keeps the service's WAL: later starts are visible to other processes and survive kill -9", async () => {
    const dataDir = path.join(work, "data");
    const file = path.join(dataDir, "catalog.sqlite");
    const svc = await spawnService({ CARVE_DATA_DIR: dataDir, CARVE_RETENTION_ENABLED: "false", LOG_LEVEL: "warn" });
    const start = async (carveId: string): Promise<void> => {
      const res = await fetch(`${svc.url}/start_uploads`, {
        method: "POST",
        body: JSON.stringify({ block_count: 1, block_size: 5, carve_size: 5, carve_id: carveId, request_id: `r-${carveId}`, node_key: "" }),
      });
      expect(res.status).toBe(200);
    };
    try {
      const ids = [randomUUID(), randomUUID(), randomUUID()].sort();
      await start(ids[0] as string);
      expect(await carveIds(file)).toEqual([ids[0]]); // sqlite3 opens, reads and quits
      expect(await readdir(dataDir)).toEqual(expect.arrayContaining(["catalog.sqlite-wal", "catalog.sqlite-shm"]));
      await start(ids[1] as string);
      await start(ids[2] as string);
      expect(await carveIds(file)).toEqual(ids);
      svc.proc.kill("SIGKILL");
      await svc.exited;
      expect(await carveIds(file)).toEqual(ids); // acknowledged starts outlive the crash
    } finally {
      svc.proc.kill("SIGKILL");
      await svc.exited;
    }
  });
});
