/**
 * CARVE_FSYNC_EACH_BLOCK: with it on, every block's bytes and journal record are flushed with fdatasync before
 * the agent is answered; off (the default), blocks cost no sync at all. Observed from outside with strace
 * attached to the running service, counting fdatasync calls while three blocks of a four-block carve arrive
 * (the fourth would complete the carve, which syncs in any case).
 */
import { spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawnServiceWith, stopChild } from "../support/child-service.js";

let work: string;
beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-fsync-"));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function syncsForThreeBlocks(fsyncEachBlock: boolean): Promise<number> {
  const svc = await spawnServiceWith({
    env: { CARVE_DATA_DIR: path.join(work, randomUUID()), LOG_LEVEL: "info", CARVE_FSYNC_EACH_BLOCK: String(fsyncEachBlock) },
  });
  try {
    const data = randomBytes(4 * 4096);
    const carveId = randomUUID();
    const requestId = randomUUID();
    const start = await fetch(`${svc.url}/start_uploads`, {
      method: "POST",
      body: JSON.stringify({ block_count: 4, block_size: 4096, carve_size: data.length, carve_id: carveId, request_id: requestId, node_key: "" }),
    });
    const { session_id } = (await start.json()) as { session_id: string };
    const trace = path.join(work, `${randomUUID()}.strace`);
    const strace = spawn("strace", ["-f", "-e", "trace=fdatasync,fsync", "-o", trace, "-p", String(svc.proc.pid)], { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    strace.stderr.on("data", (c: Buffer) => (err += c.toString()));
    const straceExit = new Promise<number | null>((resolve) => strace.once("exit", resolve));
    // strace says so on stderr once it is attached to the process and its threads.
    const deadline = Date.now() + 30_000;
    while (!/attached/.test(err)) {
      if (strace.exitCode !== null) throw new Error(`strace exited: ${err}`);
      if (Date.now() > deadline) throw new Error(`strace did not attach: ${err}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    for (let id = 0; id < 3; id++) {
      const body = JSON.stringify({ block_id: id, session_id, request_id: requestId, data: data.subarray(id * 4096, (id + 1) * 4096).toString("base64") });
      const res = await fetch(`${svc.url}/upload_blocks`, { method: "POST", body });
      expect(await res.text()).toBe('{"success":true}');
    }
    strace.kill("SIGINT"); // detaches, the service runs on
    await straceExit;
    const lines = (await readFile(trace, "utf8")).split("\n");
    return lines.filter((l) => /\b(fdatasync|fsync)\(/.test(l)).length;
  } finally {
    await stopChild(svc);
  }
}

describe("CARVE_FSYNC_EACH_BLOCK", () => {
  it("on: the bytes and the journal record of every block are synced (2 syncs a block)", async () => {
    expect(await syncsForThreeBlocks(true)).toBeGreaterThanOrEqual(6);
  });
  it("off: storing blocks syncs nothing", async () => {
    expect(await syncsForThreeBlocks(false)).toBe(0);
  });
});
