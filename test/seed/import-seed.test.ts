/**
 * `npm run import-seed` (dist/src/cli/import-seed.js, run as a child process as cron or an operator would):
 * the seed Go server's stored carves, in the layouts its code writes them (pkg/upload/fileUpload.go: one
 * `<carve_id>.tar` per carve in Storage.File.location, blocks appended in arrival order;
 * pkg/upload/mongoUpload.go: GridFS bucket `fs`, one file named `<carve_id>` per finished upload), come into
 * this service's store through importCarve with their SHA-256 computed; a second run imports nothing twice.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { GridFSBucket, MongoClient, ObjectId } from "mongodb";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { openFilesystemStore, openGridfsStore } from "../support/deployment.js";
import { ROOT } from "../support/service.js";

const run = promisify(execFile);
const CLI = path.join(ROOT, "dist/src/cli/import-seed.js");
const sha256 = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

async function importSeed(env: Record<string, string>, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], {
      env: { PATH: process.env.PATH ?? "", CARVE_CONFIG: path.join(ROOT, "conf/carve-server.yml"), LOG_LEVEL: "info", CARVE_MIN_FREE_DISK: "0", ...env },
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** A tar the way the seed stored it: whatever the agent sent, here a real (small) tar made by GNU tar. */
async function realTar(work: string, name: string, content: Buffer): Promise<Buffer> {
  const src = path.join(work, `src-${name}`);
  await mkdir(src, { recursive: true });
  await writeFile(path.join(src, name), content);
  const out = path.join(work, `${name}.tar`);
  await run("tar", ["-cf", out, "-C", src, name]);
  return readFile(out);
}

let work: string;
beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "import-seed-"));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe("from the seed's disk store", () => {
  it("imports every <carve_id>.tar, hashed, leaves other files alone, and skips them the second time", async () => {
    const seedDir = path.join(work, "seed-disk"); // the seed's Storage.File.location (its default is /tmp)
    const dataDir = path.join(work, "data-disk");
    await mkdir(seedDir, { recursive: true });
    const carves = new Map<string, Buffer>();
    const one = randomUUID();
    carves.set(one, await realTar(work, "hosts", Buffer.from("127.0.0.1 localhost\n")));
    const two = randomUUID();
    carves.set(two, await realTar(work, "big.bin", randomBytes(300_000)));
    // A zstd carve: the seed named it .tar all the same.
    const three = randomUUID();
    const { stdout: zst } = await run("sh", ["-c", `zstd -q -c < ${JSON.stringify(path.join(work, "hosts.tar"))} | base64 -w0`]);
    carves.set(three, Buffer.from(zst, "base64"));
    for (const [id, bytes] of carves) await writeFile(path.join(seedDir, `${id}.tar`), bytes);
    // What else lives in /tmp is not a carve.
    await writeFile(path.join(seedDir, "backup.tar"), "not a carve");
    await writeFile(path.join(seedDir, "notes.txt"), "hello");

    const first = await importSeed({ CARVE_DATA_DIR: dataDir }, "--dir", seedDir);
    expect(first.code, first.stderr).toBe(0);
    const lines = first.stdout.trim().split("\n");
    expect(lines.at(-1)).toBe("import-seed: 3 imported, 0 skipped, 0 failed");
    for (const [id, bytes] of carves) expect(lines).toContain(`${id}\timported\t${bytes.length}\t${sha256(bytes)}`);

    const again = await importSeed({ CARVE_DATA_DIR: dataDir }, "--dir", seedDir);
    expect(again.code).toBe(0);
    expect(again.stdout.trim().split("\n").at(-1)).toBe("import-seed: 0 imported, 3 skipped, 0 failed");

    const store = await openFilesystemStore(dataDir);
    try {
      for (const [id, bytes] of carves) {
        const record = await store.getCarve(id);
        expect(record).toMatchObject({ status: "complete", origin: "import", sha256: sha256(bytes), carveSize: bytes.length });
        expect(record.compression).toBe(id === three ? "zstd" : "none");
        expect(record.imported?.originalPath).toBe(path.join(seedDir, `${id}.tar`));
        const handle = await store.openArchive(id);
        const chunks: Buffer[] = [];
        for await (const c of handle.stream) chunks.push(c as Buffer);
        expect(Buffer.concat(chunks).equals(bytes)).toBe(true);
      }
      const audit = await store.listAudit({ action: "carve.import", limit: 10 });
      expect(audit.events.map((e) => e.carveId).sort()).toEqual([...carves.keys()].sort());
      expect(audit.events[0]?.actor.displayName).toBe("import-seed");
    } finally {
      await store.close();
    }
  });

  it("answers bad arguments with exit code 2", async () => {
    expect((await importSeed({})).code).toBe(2);
    expect((await importSeed({}, "--gridfs", "mongodb://127.0.0.1:1/")).code).toBe(2); // no --database
    expect((await importSeed({}, "--bogus")).code).toBe(2);
  });
});

describe("from the seed's GridFS bucket", () => {
  it("imports every finished upload of bucket fs into this service's GridFS store, not interrupted ones", async () => {
    const uri = inject("mongoUri");
    const seedDb = `seed_${randomBytes(4).toString("hex")}`;
    const ourDb = `ours_${randomBytes(4).toString("hex")}`;
    const client = new MongoClient(uri);
    await client.connect();
    const carves = new Map<string, Buffer>();
    try {
      // As the seed's Go code does: gridfs.NewBucket(db) (bucket "fs", 255 KiB chunks), OpenUploadStream(carveId),
      // one Write per decoded block, Close at the last block.
      const bucket = new GridFSBucket(client.db(seedDb));
      for (const size of [20_000, 700_000]) {
        const id = randomUUID();
        const bytes = randomBytes(size);
        carves.set(id, bytes);
        await new Promise<void>((resolve, reject) => {
          const up = bucket.openUploadStream(id);
          up.on("error", reject);
          up.on("finish", () => resolve());
          for (let o = 0; o < bytes.length; o += 100_000) up.write(bytes.subarray(o, o + 100_000));
          up.end();
        });
      }
      // An upload the seed never finished: chunks, no files document.
      await client.db(seedDb).collection("fs.chunks").insertOne({ files_id: new ObjectId(), n: 0, data: randomBytes(1000) });
    } finally {
      await client.close();
    }

    const env = { CARVE_STORAGE: "gridfs", CARVE_MONGODB_URI: uri, CARVE_MONGODB_DATABASE: ourDb };
    const res = await importSeed(env, "--gridfs", uri, "--database", seedDb);
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout.trim().split("\n").at(-1)).toBe("import-seed: 2 imported, 0 skipped, 0 failed");
    const dry = await importSeed(env, "--gridfs", uri, "--database", seedDb, "--dry-run");
    expect(dry.stdout.trim().split("\n").at(-1)).toBe("import-seed: 0 imported, 2 skipped, 0 failed");

    const store = await openGridfsStore(uri, ourDb);
    try {
      for (const [id, bytes] of carves) {
        expect(await store.getCarve(id)).toMatchObject({ status: "complete", sha256: sha256(bytes), carveSize: bytes.length });
        const handle = await store.openArchive(id);
        const chunks: Buffer[] = [];
        for await (const c of handle.stream) chunks.push(c as Buffer);
        expect(Buffer.concat(chunks).equals(bytes)).toBe(true);
      }
      expect((await store.listCarves({ limit: 10 })).carves).toHaveLength(2);
    } finally {
      await store.close();
    }
  });
});
