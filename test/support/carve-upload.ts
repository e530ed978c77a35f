import { randomUUID } from "node:crypto";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { runCarve } from "../../scripts/emulator/index.js";
import { sha256 } from "./carve-data.js";

export interface UploadedCarve {
  carveId: string;
  bytes: Buffer;
  sha256: string;
}

/** Uploads `bytes` as an osquery agent would (the emulator, real HTTP), as carve `carveId` (default: new). */
export async function uploadCarve(
  baseUrl: string,
  bytes: Buffer,
  options: { dir: string; carveId?: string; blockSize?: number; nodeKey?: string },
): Promise<UploadedCarve> {
  const carveId = options.carveId ?? randomUUID();
  const file = path.join(options.dir, `${carveId}.upload`);
  await writeFile(file, bytes);
  const result = await runCarve({
    baseUrl,
    startEndpoint: "/start_uploads",
    continueEndpoint: "/upload_blocks",
    archivePath: file,
    blockSize: options.blockSize ?? 64 * 1024,
    carveId,
    nodeKey: options.nodeKey ?? "node-key-upload",
    retryDelaysMs: [20, 40],
  });
  if (result.status !== "SUCCESS") throw new Error(`upload of ${carveId} failed: ${result.status}`);
  return { carveId, bytes, sha256: sha256(bytes) };
}
