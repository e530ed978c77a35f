/**
 * A single-file download out of a zstd carve whose member is 512 MiB (a ~20 KB upload) from the built service
 * as a child process: the bytes are right, the service's peak memory grows by a bounded amount (the
 * decompressor's slices and the socket's buffers, not the member), and nothing is written to disk for it.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { uploadCarve, type UploadedCarve } from "../support/carve-upload.js";
import { memoryOf, spawnServiceWith, stopChild, type WrappedChildService } from "../support/child-service.js";
import { craftTar, zstd } from "../support/tar-writer.js";
import { startVaultDouble, type VaultDouble } from "../support/vault-double.js";

const SIZE = 512 * 1024 * 1024;
let vault: VaultDouble;
let svc: WrappedChildService;
let dataDir: string;
let carve: UploadedCarve;
const TOKEN = `hvs.CAESImemory${randomBytes(8).toString("hex")}`;

/** Every file under the data directory, with its size. */
async function files(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) if (e.isFile()) out.push(path.join(e.parentPath, e.name));
  return out.sort();
}

beforeAll(async () => {
  vault = await startVaultDouble();
  vault.addToken(TOKEN, { policies: ["osquery-carve-download"], displayName: "ldap-erin" });
  dataDir = await mkdtemp(path.join(tmpdir(), "member-memory-"));
  svc = await spawnServiceWith({ env: { CARVE_DATA_DIR: dataDir, VAULT_ADDR: vault.url, CARVE_MIN_FREE_DISK: "0", LOG_LEVEL: "warn" } });
  // Zeros with a marker at both ends, so that an off-by-a-block stream would not hash the same.
  const content = Buffer.alloc(SIZE);
  content.write("first", 0);
  content.write("last", SIZE - 4);
  const archive = zstd(craftTar([{ name: "small.txt", content: "s" }, { name: "huge.bin", content }]));
  carve = await uploadCarve(svc.url, archive, { dir: dataDir });
}, 120_000);

afterAll(async () => {
  await stopChild(svc);
  await vault.close();
  await rm(dataDir, { recursive: true, force: true });
});

describe("single-file download of a large member", () => {
  it("streams 512 MiB out of a zstd carve with bounded memory and no file written", async () => {
    const headers = { "X-Vault-Token": TOKEN };
    expect((await fetch(`${svc.url}/api/v1/carves/${carve.carveId}/files`, { headers })).status).toBe(200);
    const before = await files(dataDir);
    const base = memoryOf(svc.proc.pid as number).rss;
    let peak = 0;
    const timer = setInterval(() => (peak = Math.max(peak, memoryOf(svc.proc.pid as number).rss)), 50);
    const res = await fetch(`${svc.url}/api/v1/carves/${carve.carveId}/files/1`, { headers });
    expect(res.status).toBe(200);
    const hash = createHash("sha256");
    let bytes = 0;
    for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
      hash.update(chunk);
      bytes += chunk.length;
    }
    clearInterval(timer);
    expect(bytes).toBe(SIZE);
    expect(hash.digest("hex")).toBe(res.headers.get("x-content-sha256"));
    expect(peak - base, `rss grew from ${base} to ${peak}`).toBeLessThan(96 * 1024 * 1024);
    expect(await files(dataDir)).toEqual(before);
  }, 120_000);
});
