import { existsSync } from "node:fs";
import { mkdtemp, readFile, readdir, rm, writeFile, open } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { makeCarve, sha256 } from "../support/carve-data.js";
import { openFilesystemStore } from "../support/deployment.js";

const FilesystemCarveStore = { create: (o: { dataDir: string }) => openFilesystemStore(o.dataDir) };

async function listTree(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    out.push(rel);
    if (entry.isDirectory()) out.push(...(await listTree(path.join(dir, entry.name), rel)));
  }
  return out.sort();
}

function journalOf(ids: number[]): Buffer {
  const buf = Buffer.alloc(ids.length * 8);
  ids.forEach((id, i) => {
    buf.writeUInt32LE(id, i * 8);
    buf.writeUInt32LE((id ^ 0xc4a7e5b1) >>> 0, i * 8 + 4);
  });
  return buf;
}

describe("filesystem store layout and recovery", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "carve-fsl-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("puts completed carves at carves/<carve_id>.tar and .tar.zst, and nothing there before completion", async () => {
    const store = await FilesystemCarveStore.create({ dataDir: dir });
    const plain = makeCarve({ size: 3000, blockSize: 1000 });
    const zstdBytes = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.alloc(996, 7)]);
    const zst = makeCarve({ size: 1000, blockSize: 1000, bytes: zstdBytes });
    const { session } = await store.createSession(plain.spec, "layout01");
    await store.putBlock(session, 0, plain.blocks[0]!);
    await store.putBlock(session, 2, plain.blocks[2]!);
    expect(await readdir(path.join(dir, "carves"))).toEqual([]);
    expect(existsSync(path.join(dir, "sessions", plain.spec.carveId, "data.part"))).toBe(true);
    await store.putBlock(session, 1, plain.blocks[1]!);
    const zs = (await store.createSession(zst.spec, "layout02")).session;
    await store.putBlock(zs, 0, zst.blocks[0]!);

    expect((await readdir(path.join(dir, "carves"))).sort()).toEqual(
      [`${plain.spec.carveId}.tar`, `${zst.spec.carveId}.tar.zst`].sort(),
    );
    expect(sha256(await readFile(path.join(dir, "carves", `${plain.spec.carveId}.tar`)))).toBe(sha256(plain.bytes));
    // the in-progress area is cleaned up after completion
    expect(await readdir(path.join(dir, "sessions"))).toEqual([]);
    const tree = await listTree(dir);
    expect(tree).toEqual(
      [
        ".lock",
        "carves",
        `carves/${plain.spec.carveId}.tar`,
        `carves/${zst.spec.carveId}.tar.zst`,
        "catalog.sqlite",
        "catalog.sqlite-shm",
        "catalog.sqlite-wal",
        "custody.reserve",
        "sessions",
        "tmp",
      ].sort(),
    );
    await store.close();
  });

  it("finishes a completion interrupted after the archive was moved but before the record was updated", async () => {
    let store = await FilesystemCarveStore.create({ dataDir: dir });
    const carve = makeCarve({ size: 2500, blockSize: 1000 });
    const { session } = await store.createSession(carve.spec, "crash001");
    for (let i = 0; i < 3; i++) await store.putBlock(session, i, carve.blocks[i]!);
    await store.close();
    // Rebuild the state a crash between the rename and the catalog update leaves behind: the archive published,
    // the entry still claimed by the dead process.
    const raw = await openFilesystemStore(dir);
    await raw.services.storage.catalog.update(
      carve.spec.carveId,
      {},
      { state: "completing", claim: "dead-process", stateSince: new Date(), completedAt: null, sha256: null, compression: null },
    );
    await raw.close();

    store = await FilesystemCarveStore.create({ dataDir: dir });
    const record = await store.getCarve(carve.spec.carveId);
    expect(record.status).toBe("complete");
    expect(record.sha256).toBe(sha256(carve.bytes));
    expect(await readdir(path.join(dir, "sessions"))).toEqual([]);
    await store.close();
  });

  it("finishes a completion interrupted right after the last block was journaled", async () => {
    let store = await FilesystemCarveStore.create({ dataDir: dir });
    const carve = makeCarve({ size: 2500, blockSize: 1000 });
    const { session } = await store.createSession(carve.spec, "crash002");
    for (let i = 0; i < 2; i++) await store.putBlock(session, i, carve.blocks[i]!);
    await store.close();
    const sessionDir = path.join(dir, "sessions", carve.spec.carveId);
    const fd = await open(path.join(sessionDir, "data.part"), "r+");
    await fd.write(carve.blocks[2]!, 0, 500, 2000);
    await fd.close();
    // a torn trailing record must be ignored
    await writeFile(path.join(sessionDir, "journal"), Buffer.concat([journalOf([0, 1, 2]), Buffer.from([1, 2, 3])]));

    store = await FilesystemCarveStore.create({ dataDir: dir });
    const record = await store.getCarve(carve.spec.carveId);
    expect(record.status).toBe("complete");
    expect(record.sha256).toBe(sha256(carve.bytes));
    expect(sha256(await readFile(path.join(dir, "carves", `${carve.spec.carveId}.tar`)))).toBe(sha256(carve.bytes));
    await store.close();
  });

  it("ignores journal records that fail their check", async () => {
    let store = await FilesystemCarveStore.create({ dataDir: dir });
    const carve = makeCarve({ size: 3000, blockSize: 1000 });
    const { session } = await store.createSession(carve.spec, "crash003");
    await store.putBlock(session, 0, carve.blocks[0]!);
    await store.close();
    const bad = journalOf([0, 1]);
    bad.writeUInt32LE(0, 12); // corrupt the check of block 1's record
    await writeFile(path.join(dir, "sessions", carve.spec.carveId, "journal"), bad);
    store = await FilesystemCarveStore.create({ dataDir: dir });
    expect(await store.missingBlocks(carve.spec.carveId, 10)).toEqual([1, 2]);
    await store.close();
  });

  it("lists a receiving carve's progress exactly after a restart and as blocks arrive after it", async () => {
    let store = await FilesystemCarveStore.create({ dataDir: dir });
    const carve = makeCarve({ size: 3500, blockSize: 1000 });
    const { session } = await store.createSession(carve.spec, "progress1");
    await store.putBlock(session, 3, carve.blocks[3]!);
    await store.close();

    const listed = async (): Promise<unknown> => {
      const page = await store.listCarves({ status: "receiving", limit: 10 });
      return page.carves.map((c) => [c.carveId, c.blocksReceived, c.bytesReceived]);
    };
    store = await FilesystemCarveStore.create({ dataDir: dir });
    // twice: the second answer is the store's cached reading of the journal
    expect(await listed()).toEqual([[carve.spec.carveId, 1, 500]]);
    expect(await listed()).toEqual([[carve.spec.carveId, 1, 500]]);
    await store.putBlock(session, 0, carve.blocks[0]!);
    expect(await listed()).toEqual([[carve.spec.carveId, 2, 1500]]);
    await store.close();

    store = await FilesystemCarveStore.create({ dataDir: dir });
    expect(await listed()).toEqual([[carve.spec.carveId, 2, 1500]]);
    expect((await store.getCarve(carve.spec.carveId)).blocksReceived).toBe(2);
    await store.close();
  });

  it("owns its data directory: a live owner is refused, a dead owner's lock is taken over", async () => {
    const store = await FilesystemCarveStore.create({ dataDir: dir });
    await expect(FilesystemCarveStore.create({ dataDir: dir })).rejects.toThrow(/already open/);
    await store.close();

    await writeFile(path.join(dir, ".lock"), "1\n"); // pid 1 is always alive
    await expect(FilesystemCarveStore.create({ dataDir: dir })).rejects.toThrow(/in use by process 1/);

    await writeFile(path.join(dir, ".lock"), "999999999\n"); // no such process
    const taken = await FilesystemCarveStore.create({ dataDir: dir });
    expect((await readFile(path.join(dir, ".lock"), "utf8")).trim()).toBe(String(process.pid));
    await taken.close();
    expect(existsSync(path.join(dir, ".lock"))).toBe(false);
  });

  it("empties its staging directory at start-up", async () => {
    const store = await FilesystemCarveStore.create({ dataDir: dir });
    await store.close();
    await writeFile(path.join(dir, "tmp", "leftover.json"), "{}");
    const again = await FilesystemCarveStore.create({ dataDir: dir });
    expect(await readdir(path.join(dir, "tmp"))).toEqual([]);
    await again.close();
  });
});
