/**
 * Done-when of the foundation issue: a 50 MB random file carved with 1 MB blocks and with 8 KB blocks
 * (osquery's default) arrives byte-exact on disk, through the built service run as `npm start` runs it.
 */
import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildCarveArchive, runCarve } from "../../scripts/emulator/index.js";
import { spawnService, type ChildService } from "../support/service.js";

async function fileSha(file: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest("hex");
}

describe("a 50 MB random file, as real agents send it", () => {
  let work: string;
  let dataDir: string;
  let svc: ChildService;
  let source: string;

  beforeAll(async () => {
    work = await mkdtemp(path.join(tmpdir(), "carve-large-"));
    dataDir = path.join(work, "data");
    source = path.join(work, "evidence.bin");
    await writeFile(source, randomBytes(50 * 1024 * 1024));
    svc = await spawnService({ CARVE_PORT: "0", CARVE_DATA_DIR: dataDir, LOG_LEVEL: "warn" });
  });
  afterAll(async () => {
    svc.proc.kill("SIGTERM");
    await svc.exited;
    await rm(work, { recursive: true, force: true });
  });

  it.each([
    ["1 MB", 1024 * 1024],
    ["8 KB", 8192],
  ])("arrives byte-exact with %s blocks", async (_label, blockSize) => {
    const carveId = crypto.randomUUID();
    const archive = await buildCarveArchive({
      paths: [source],
      carveId,
      outFile: path.join(work, `${carveId}.tar`),
      paxTimes: true,
    });
    expect(archive.size).toBeGreaterThan(50 * 1024 * 1024);
    const result = await runCarve({
      baseUrl: svc.url,
      startEndpoint: "/start_uploads",
      continueEndpoint: "/upload_blocks",
      archivePath: archive.path,
      carveId,
      blockSize,
    });
    expect(result.status).toBe("SUCCESS");
    expect(result.blockCount).toBe(Math.ceil(archive.size / blockSize));
    const stored = path.join(dataDir, "carves", `${carveId}.tar`);
    expect(await fileSha(stored)).toBe(archive.sha256);
    expect(result.sha256).toBe(archive.sha256);
    // and the tar inside holds the original file, byte-exact
    const extractDir = path.join(work, `x-${carveId}`);
    await import("node:fs/promises").then((f) => f.mkdir(extractDir));
    const { execFileSync } = await import("node:child_process");
    execFileSync("tar", ["-xf", stored, "-C", extractDir]);
    const member = path.join(extractDir, "tmp", `osquery_carve_${carveId}`, source.slice(1));
    expect(await fileSha(member)).toBe(await fileSha(source));
  });
});
