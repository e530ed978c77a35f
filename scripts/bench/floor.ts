/**
 * The floor under the service's cost per block: the CPU of the work a carve server that keeps osquery's
 * guarantees cannot skip, measured on this machine with the service's own functions, one block at a time, in this
 * process. Per block: decoding its base64 (src/carves/base64.ts, strict), feeding the archive's SHA-256, writing its
 * bytes at their offset and its 8-byte journal record (positional writes into the page cache, as
 * src/storage/filesystem/ does: synchronous up to 64 KiB, through the libuv pool above), and parsing the small JSON
 * head. Added to the bare Node server's CPU per request (what node:http costs, measured by the upload matrix in the
 * same conditions), it is the least any implementation on Node can spend per block; issue 16's goals are compared
 * with it in the README.
 *
 *   npm run bench -- --scenario floor       (or node dist/scripts/bench/floor.js)
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { decodeBase64InPlace } from "../../src/carves/base64.js";
import { writeFully } from "../../src/storage/filesystem/fs-io.js";
import { journalRecord } from "../../src/storage/filesystem/upload-journal.js";

interface FloorRow {
  blockSize: number;
  decodeUs: number;
  sha256Us: number;
  writeUs: number;
  journalUs: number;
  headUs: number;
  totalUs: number;
}

/** CPU microseconds (user + system, all threads: the pool's writes too) per call of `fn`, after a warm-up. */
async function cpuPerCall(n: number, fn: (i: number) => unknown): Promise<number> {
  for (let i = 0; i < Math.max(10, n / 10); i++) await fn(i);
  const start = process.cpuUsage();
  for (let i = 0; i < n; i++) await fn(i);
  const used = process.cpuUsage(start);
  return (used.user + used.system) / n;
}

export async function measureFloor(blockSizes: number[] = [8 * 1024, 1024 * 1024]): Promise<FloorRow[]> {
  const dir = await mkdtemp(path.join(tmpdir(), "carve-floor-"));
  const rows: FloorRow[] = [];
  try {
    for (const blockSize of blockSizes) {
      const n = blockSize <= 64 * 1024 ? 20_000 : 300;
      const block = randomBytes(blockSize);
      const text = Buffer.from(block.toString("base64"), "latin1");
      const work = Buffer.allocUnsafe(text.length);
      const copyUs = await cpuPerCall(n, () => text.copy(work));
      const decodeUs =
        (await cpuPerCall(n, () => {
          text.copy(work);
          return decodeBase64InPlace(work, blockSize);
        })) - copyUs; // the copy restores the text the decoder overwrote; it is not the decoder's
      const sha256Us = await cpuPerCall(n, () => createHash("sha256").update(block));
      const data = await open(path.join(dir, `${blockSize}.part`), "w");
      const journal = await open(path.join(dir, `${blockSize}.journal`), "w");
      const slots = Math.max(1, Math.floor((256 * 1024 * 1024) / blockSize));
      const writeUs = await cpuPerCall(n, (i) => writeFully(data, block, (i % slots) * blockSize));
      const journalUs = await cpuPerCall(n, (i) => writeFully(journal, journalRecord(i), (i % 100_000) * 8));
      await data.close();
      await journal.close();
      const head = `{"block_id":12,"session_id":"${randomBytes(16).toString("hex")}","request_id":"${randomUUID()}"}`;
      const headUs = await cpuPerCall(20_000, () => JSON.parse(head));
      const totalUs = decodeUs + sha256Us + writeUs + journalUs + headUs;
      rows.push({ blockSize, decodeUs, sha256Us, writeUs, journalUs, headUs, totalUs });
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return rows;
}

export function floorTable(rows: FloorRow[]): string {
  const f = (us: number): string => (us >= 100 ? `${(us / 1000).toFixed(2)} ms` : `${us.toFixed(2)} us`);
  const lines = [
    "| block | base64 decode | SHA-256 | write bytes | journal record | JSON head | floor over bare, per block |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const r of rows) {
    const size = r.blockSize >= 1024 * 1024 ? `${r.blockSize / 1024 / 1024} MiB` : `${r.blockSize / 1024} KiB`;
    lines.push(`| ${size} | ${f(r.decodeUs)} | ${f(r.sha256Us)} | ${f(r.writeUs)} | ${f(r.journalUs)} | ${f(r.headUs)} | **${f(r.totalUs)}** |`);
  }
  return lines.join("\n");
}

const isMain = process.argv[1] !== undefined && import.meta.url === new URL(`file://${path.resolve(process.argv[1])}`).href;
if (isMain) {
  const rows = await measureFloor();
  process.stdout.write(`${floorTable(rows)}\n`);
}
