/**
 * The temporary service adapter over the current CarveStore (src/services/legacy-store-adapter.ts), on a real
 * filesystem store: records leave it with the node key only as its SHA-256, the node filter matches a prefix of
 * that hash, and custody keeps the first hold. The HTTP suites exercise the rest through the responder API.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { isAppError } from "../../src/errors.js";
import { legacyServices, type LegacyServices } from "../../src/services/legacy-store-adapter.js";
import type { CarveStore } from "../../src/storage/carve-store.js";
import { FilesystemCarveStore } from "../../src/storage/filesystem/filesystem-carve-store.js";

let dir: string;
let store: CarveStore;
let services: LegacyServices;

const agent = { address: "127.0.0.1", userAgent: "osquery/5.23.0", certificate: null };

/** A complete one-block carve of `bytes`, started with `nodeKey`. */
async function carve(carveId: string, nodeKey: string, bytes = randomBytes(100)): Promise<void> {
  const spec = { carveId, requestId: `req-${carveId}`, nodeKey, blockCount: 1, blockSize: bytes.length, carveSize: bytes.length, agent };
  const { session } = await store.createSession(spec, `s${carveId}`.replaceAll("-", ""));
  await store.putBlock(session, 0, bytes);
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    return isAppError(err) ? err.code : String(err);
  }
  return "resolved";
}

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "legacy-adapter-"));
  store = await FilesystemCarveStore.create({ dataDir: dir, logger: pino({ level: "silent" }) });
  services = legacyServices(store);
});

afterEach(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

describe("legacy store adapter", () => {
  it("hands out records with the node key's SHA-256, never the key, and null for an empty one", async () => {
    await carve("with-key", "node-secret-1");
    await carve("no-key", "");
    const hash = createHash("sha256").update("node-secret-1", "utf8").digest("hex");

    const withKey = await services.reads.get("with-key");
    expect(withKey.nodeKeySha256).toBe(hash);
    expect(withKey).not.toHaveProperty("nodeKey");
    expect((await services.reads.get("no-key")).nodeKeySha256).toBeNull();

    const page = await services.reads.list({ limit: 10 });
    expect(page.carves.map((c) => c.carveId).sort()).toEqual(["no-key", "with-key"]);
    for (const c of page.carves) expect(c).not.toHaveProperty("nodeKey");

    const handle = await services.reads.openArchive("with-key");
    handle.stream.destroy();
    expect(handle.record.nodeKeySha256).toBe(hash);
    expect(handle.record).not.toHaveProperty("nodeKey");
    expect(JSON.stringify([withKey, page, handle.record])).not.toContain("node-secret-1");
  });

  it("filters by a prefix of the node key's SHA-256, resuming from the cursor it returns", async () => {
    for (let i = 0; i < 5; i++) await carve(`a-${i}`, "node-a");
    for (let i = 0; i < 5; i++) await carve(`b-${i}`, "node-b");
    const prefix = createHash("sha256").update("node-a", "utf8").digest("hex").slice(0, 12);
    const seen: string[] = [];
    let cursor: string | undefined;
    for (let pages = 0; pages < 10; pages++) {
      const page = await services.reads.list({ limit: 2, nodeSha256Prefix: prefix, ...(cursor ? { cursor } : {}) });
      expect(page.carves.length).toBeLessThanOrEqual(2);
      seen.push(...page.carves.map((c) => c.carveId));
      if (page.nextCursor === null) break;
      cursor = page.nextCursor;
    }
    expect(seen.sort()).toEqual(["a-0", "a-1", "a-2", "a-3", "a-4"]);
  });

  it("keeps the first hold (HOLD_EXISTS), refuses to delete a held carve, and deletes it once lifted", async () => {
    await carve("held", "k");
    const first = { by: "alice", reason: "case 1", at: new Date("2024-05-01T00:00:00Z") };
    expect((await services.custody.placeHold("held", first)).hold).toEqual(first);
    expect(await codeOf(services.custody.placeHold("held", { ...first, by: "mallory", reason: "replace" }))).toBe("HOLD_EXISTS");
    expect((await services.reads.get("held")).hold).toEqual(first);
    expect(await codeOf(services.custody.delete("held"))).toBe("CARVE_ON_HOLD");
    expect((await services.custody.releaseHold("held")).hold).toBeNull();
    expect(await services.custody.delete("held")).toEqual({ bytesFreed: 100 });
    expect(await codeOf(services.reads.get("held"))).toBe("CARVE_NOT_FOUND");
    expect(await codeOf(services.custody.placeHold("held", first))).toBe("CARVE_NOT_FOUND");
  });
});
