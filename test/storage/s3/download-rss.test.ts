/**
 * A 1 GiB archive downloaded from S3 keeps the reader's memory flat: the ranged GET is streamed, never buffered.
 * Measured in a child process (the built store, dist/) so that nothing of the test runner counts: its resident
 * set after the first 32 MiB is the baseline, and the peak over the remaining ~1 GiB must stay within 64 MiB of
 * it. The figures are printed for the README.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { afterAll, beforeAll, expect, it } from "vitest";
import { startSeaweedFs, type SeaweedFs } from "../../support/seaweedfs.js";
import { runWithBlobs } from "./child.js";
import { s3Harness, type S3Harness } from "./harness.js";

const MIB = 1024 * 1024;
const SIZE = 1024 * MIB;
let server: SeaweedFs;
let h: S3Harness;
beforeAll(async () => {
  server = await startSeaweedFs();
  h = await s3Harness(server);
}, 30 * 60_000);
afterAll(async () => {
  await h?.destroy();
  await server?.destroy();
});

/** 1 GiB that never repeats a MiB: a random MiB with the MiB's index written into it. */
async function* gibibyte(hash: ReturnType<typeof createHash>): AsyncGenerator<Buffer> {
  const base = randomBytes(MIB);
  for (let i = 0; i < SIZE / MIB; i++) {
    const chunk = Buffer.from(base);
    chunk.writeUInt32BE(i, (i * 4096) % (MIB - 4));
    hash.update(chunk);
    yield await Promise.resolve(chunk);
  }
}

const DOWNLOAD = `
  let peak = 0, baseline = 0, bytes = 0;
  const hash = (await import("node:crypto")).createHash("sha256");
  const sample = () => { const rss = process.memoryUsage.rss(); if (baseline && rss > peak) peak = rss; };
  const timer = setInterval(sample, 20);
  const started = Date.now();
  const reader = await blobs.read(input.ref);
  for await (const chunk of reader.stream) {
    hash.update(chunk);
    bytes += chunk.length;
    if (!baseline && bytes >= 32 * 1024 * 1024) { baseline = process.memoryUsage.rss(); peak = baseline; }
    sample();
  }
  clearInterval(timer);
  console.log(JSON.stringify({ bytes, sha256: hash.digest("hex"), baseline, peak, ms: Date.now() - started }));
`;

it(
  "downloads 1 GiB from S3 with flat resident memory",
  async () => {
    const blobs = await h.open({ partSize: 8 * MIB });
    const target = { carveId: randomUUID(), sessionId: randomBytes(16).toString("hex") };
    const hash = createHash("sha256");
    const uploadStarted = Date.now();
    const facts = await blobs.importArchive(target, gibibyte(hash), { maxBytes: SIZE });
    const uploadMs = Date.now() - uploadStarted;
    await blobs.close();
    expect(facts).toEqual({ sha256: hash.digest("hex"), compression: "none", size: SIZE });

    const result = await runWithBlobs(server, h, DOWNLOAD, {
      input: { ref: { ...target, compression: "none", size: SIZE } },
    });
    expect(result.code, result.stderr).toBe(0);
    const m = JSON.parse(result.stdout) as {
      bytes: number;
      sha256: string;
      baseline: number;
      peak: number;
      ms: number;
    };
    expect(m.bytes).toBe(SIZE);
    expect(m.sha256).toBe(facts.sha256);
    const mb = (n: number): string => (n / MIB).toFixed(1);
    console.log(
      `S3 1 GiB: import ${uploadMs} ms (${(SIZE / MIB / (uploadMs / 1000)).toFixed(0)} MiB/s); download ${m.ms} ms ` +
        `(${(SIZE / MIB / (m.ms / 1000)).toFixed(0)} MiB/s), RSS after 32 MiB ${mb(m.baseline)} MiB, peak ${mb(m.peak)} MiB ` +
        `(+${mb(m.peak - m.baseline)} MiB)`,
    );
    expect(m.peak - m.baseline).toBeLessThan(64 * MIB);
  },
  20 * 60_000,
);

it("completes a 256 MiB carve from the staging into S3 (figures for the README)", async () => {
  const blobs = await h.open({ partSize: 8 * MIB });
  const size = 256 * MIB;
  const block = randomBytes(MIB);
  const hash = createHash("sha256");
  const session = {
    carveId: randomUUID(),
    sessionId: randomBytes(16).toString("hex"),
    requestId: randomUUID(),
    nodeKeySha256: null,
    blockCount: size / MIB,
    blockSize: MIB,
    carveSize: size,
    agent: { address: "127.0.0.1", userAgent: "osquery/5.23.0", certificate: null },
    createdAt: new Date(),
  };
  await blobs.begin(session);
  const stageStarted = Date.now();
  for (let id = 0; id < session.blockCount; id++) {
    const data = Buffer.from(block);
    data.writeUInt32BE(id, 0);
    hash.update(data);
    await blobs.putBlock(session, id, data);
  }
  const stageMs = Date.now() - stageStarted;
  const started = Date.now();
  const cpu = process.cpuUsage();
  const facts = await blobs.complete(session);
  const ms = Date.now() - started;
  const used = process.cpuUsage(cpu);
  expect(facts).toEqual({ sha256: hash.digest("hex"), compression: "none", size });
  await blobs.close();
  console.log(
    `S3 completion of 256 MiB (1 MiB blocks staged on the filesystem in ${stageMs} ms): ${ms} ms, ` +
      `${(256 / (ms / 1000)).toFixed(0)} MiB/s (staging hash + multipart upload of 8 MiB parts + HEAD), ` +
      `service CPU ${((used.user + used.system) / 1000).toFixed(0)} ms`,
  );
}, 10 * 60_000);
