/**
 * The agent endpoints against a real listening service, driven by the protocol-exact emulator and by raw
 * requests for what an agent would never send. Each case follows a statement of
 * ../shared/docs/osquery-carver-protocol.md sections 1-3.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildCarveArchive, runCarve, type RunCarveOptions } from "../../scripts/emulator/index.js";
import { sha256 } from "../support/carve-data.js";
import { filesContaining, storedCounts, type StoredCounts } from "../support/data-dir.js";
import { startTestService, type TestService } from "../support/service.js";

let svc: TestService;
let work: string;

const FAST_RETRIES = [20, 40];

async function post(p: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; text: string; json: unknown }> {
  const res = await fetch(svc.url + p, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, text, json };
}

function isJson(text: string): boolean {
  if (text === "") return true;
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

async function randomFile(size: number): Promise<{ file: string; bytes: Buffer }> {
  const bytes = randomBytes(size);
  const file = path.join(work, `src-${randomUUID()}.bin`);
  await writeFile(file, bytes);
  return { file, bytes };
}

/** Uploads raw bytes as the archive, so the stored carve can be compared with them exactly. */
async function carveBytes(bytes: Buffer, opts: Partial<RunCarveOptions> = {}) {
  const archivePath = path.join(work, `arch-${randomUUID()}.bin`);
  await writeFile(archivePath, bytes);
  return runCarve({
    baseUrl: svc.url,
    startEndpoint: "/start_uploads",
    continueEndpoint: "/upload_blocks",
    archivePath,
    blockSize: 1024,
    retryDelaysMs: FAST_RETRIES,
    timeoutMs: 10_000,
    ...opts,
  });
}

function startBody(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    block_count: 2,
    block_size: 1024,
    carve_size: 2000,
    carve_id: randomUUID(),
    request_id: randomUUID(),
    node_key: "nk",
    ...overrides,
  };
}

/** Catalog entries, staged uploads and published archives: a refused start adds to none of them. */
async function stored(): Promise<StoredCounts> {
  return storedCounts(svc.dataDir);
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-agent-"));
  svc = await startTestService({ CARVE_MAX_BLOCK_SIZE: "4MiB", CARVE_MAX_CARVE_SIZE: "64MiB" });
});
afterAll(async () => {
  await svc.dispose();
  await rm(work, { recursive: true, force: true });
});

describe("health", () => {
  it("answers GET /status in the seed server's shape and /ready with storage health", async () => {
    const status = await fetch(`${svc.url}/status`);
    expect(status.status).toBe(200);
    expect(await status.json()).toEqual({ success: true });
    const ready = await fetch(`${svc.url}/ready`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ status: "ready", storage: { ok: true, backend: "filesystem" } });
  });
});

describe("1. start request", () => {
  it("opens a session and records what the agent sent and who sent it", async () => {
    const { bytes } = { bytes: randomBytes(3000) };
    const nodeKey = `node-key-${randomUUID()}`;
    const result = await carveBytes(bytes, { nodeKey, agentVersion: "5.23.0" });
    expect(result.status).toBe("SUCCESS");
    expect(result.sessionId).toMatch(/^[0-9a-f]{32}$/);
    const record = await svc.store.getCarve(result.carveId);
    expect(record).toMatchObject({
      carveId: result.carveId,
      requestId: result.requestId,
      // the node key is the node's enrollment secret: only its SHA-256 is kept, the key itself is written nowhere
      nodeKeySha256: createHash("sha256").update(nodeKey).digest("hex"),
      sessionId: result.sessionId,
      blockCount: 3,
      blockSize: 1024,
      carveSize: 3000,
      status: "complete",
      agent: { userAgent: "osquery/5.23.0" },
    });
    expect(record.agent.address).toMatch(/127\.0\.0\.1/);
    expect(await filesContaining(svc.dataDir, nodeKey)).toEqual([]);
  });

  it("takes the node key from `Authorization: NodeKey` (5.23+) when the body's is empty", async () => {
    const body = startBody({ node_key: "" });
    const res = await post("/start_uploads", body, { authorization: "NodeKey header-key-1" });
    expect(res.status).toBe(200);
    const record = await svc.store.getCarve(body.carve_id as string);
    expect(record.nodeKeySha256).toBe(createHash("sha256").update("header-key-1").digest("hex"));
  });

  it("parses JSON whatever the Content-Type says", async () => {
    const body = startBody();
    const res = await fetch(`${svc.url}/start_uploads`, {
      method: "POST",
      headers: { "content-type": "text/plain" },
      body: JSON.stringify(body),
    });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { session_id: string }).session_id).toMatch(/^[0-9a-f]{32}$/);
  });

  it("answers a retried start (5.22+) with the same session and keeps one carve", async () => {
    const body = startBody();
    const before = await stored();
    const first = await post("/start_uploads", body);
    const second = await post("/start_uploads", body);
    expect(first.json).toEqual(second.json);
    expect(await stored()).toEqual({ ...before, entries: before.entries + 1, staged: before.staged + 1 });
  });

  it("refuses a start reusing a carve_id with another request_id: JSON without session_id, nothing stored", async () => {
    const body = startBody();
    await post("/start_uploads", body);
    const before = await stored();
    const res = await post("/start_uploads", { ...body, request_id: randomUUID() });
    expect(res.status).toBe(409);
    expect(res.json).toEqual({ error: { code: "CARVE_ID_CONFLICT", message: expect.any(String) as string } });
    expect(await stored()).toEqual(before);
  });

  it.each([
    ["block_count that is not ceil(carve_size/block_size)", { block_count: 3 }, 400, "INVALID_START"],
    ["zero block_count", { block_count: 0 }, 400, "INVALID_START"],
    ["negative carve_size", { carve_size: -5 }, 400, "INVALID_START"],
    ["fractional block_size", { block_size: 1024.5 }, 400, "INVALID_START"],
    ["numbers as strings", { block_count: "2" }, 400, "INVALID_START"],
    ["huge carve_size", { carve_size: 1e300, block_count: 1, block_size: 1024 }, 400, "INVALID_START"],
    ["carve_size over the maximum", { carve_size: 65 * 1024 * 1024, block_size: 1024 * 1024, block_count: 65 }, 413, "CARVE_TOO_LARGE"],
    ["block_size over the maximum", { carve_size: 8 * 1024 * 1024, block_size: 8 * 1024 * 1024, block_count: 1 }, 413, "BLOCK_SIZE_TOO_LARGE"],
    ["path-like carve_id", { carve_id: "../../etc/passwd" }, 400, "INVALID_START"],
    ["carve_id with a slash", { carve_id: "a/b" }, 400, "INVALID_START"],
    ["dot carve_id", { carve_id: ".." }, 400, "INVALID_START"],
    ["unicode carve_id", { carve_id: "carvé" }, 400, "INVALID_START"],
    ["over-long request_id", { request_id: "r".repeat(200) }, 400, "INVALID_START"],
    ["missing carve_id", { carve_id: undefined }, 400, "INVALID_START"],
    ["node_key of the wrong type", { node_key: 12 }, 400, "INVALID_START"],
  ])("refuses a start with %s so the agent fails at once", async (_label, override, status, code) => {
    const before = await stored();
    const res = await post("/start_uploads", startBody(override));
    expect(res.status).toBe(status);
    expect(res.json).toMatchObject({ error: { code } });
    expect(JSON.stringify(res.json)).not.toContain("session_id");
    expect(await stored()).toEqual(before);
  });

  it("refuses non-JSON and non-object start bodies without a session_id", async () => {
    for (const body of ["not json", "[1,2]", "null", '"str"', "{"]) {
      const res = await post("/start_uploads", body);
      expect(res.status).toBe(400);
      expect(res.text).not.toContain("session_id");
    }
  });

  it("makes the emulated agent fail the carve at once on a refused start (no retry)", async () => {
    const body = startBody();
    await post("/start_uploads", body);
    const archive = await randomFile(100);
    const result = await runCarve({
      baseUrl: svc.url,
      startEndpoint: "/start_uploads",
      continueEndpoint: "/upload_blocks",
      archivePath: archive.file,
      carveId: body.carve_id as string, // taken by another request_id
      retryDelaysMs: FAST_RETRIES,
    });
    expect(result.status).toBe("START FAILED");
    expect(result.requests).toHaveLength(1);
  });
});

describe("2. block requests", () => {
  it("stores an in-order carve byte-exact and places it at carves/<carve_id>.tar", async () => {
    const bytes = randomBytes(10 * 1024 + 300);
    const result = await carveBytes(bytes);
    expect(result.status).toBe("SUCCESS");
    expect(result.sha256).toBe(sha256(bytes));
    const file = path.join(svc.dataDir, "carves", `${result.carveId}.tar`);
    expect(sha256(await readFile(file))).toBe(sha256(bytes));
    const record = await svc.store.getCarve(result.carveId);
    expect(record.sha256).toBe(sha256(bytes));
    // every block answered with JSON success
    expect(result.requests.filter((r) => r.kind === "block").every((r) => r.statusCode === 200 && r.body === '{"success":true}')).toBe(true);
  });

  it.each([
    ["duplicates", { duplicate: [0, 3, 9] }],
    ["reverse order", { order: "reverse" as const }],
    ["shuffled order", { order: "shuffle" as const }],
    ["a block sent six times", { order: [0, 1, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9] }],
  ])("stores a carve byte-exact despite %s", async (_label, inject) => {
    const bytes = randomBytes(10 * 1024);
    const result = await carveBytes(bytes, { inject });
    expect(result.status).toBe("SUCCESS");
    const record = await svc.store.getCarve(result.carveId);
    expect(record.status).toBe("complete");
    expect(record.sha256).toBe(sha256(bytes));
  });

  it("keeps a carve with a gap (old agent skipped a block) receiving, with the gap reported", async () => {
    const bytes = randomBytes(6 * 1024);
    const result = await carveBytes(bytes, { agentVersion: "5.12.1", inject: { skip: [2, 4] } });
    expect(result.status).toBe("SUCCESS"); // what the host believes
    const record = await svc.store.getCarve(result.carveId);
    expect(record.status).toBe("receiving");
    expect(record.blocksReceived).toBe(4);
    expect(await svc.store.missingBlocks(result.carveId, 10)).toEqual([2, 4]);
    expect(existsSync(path.join(svc.dataDir, "carves", `${result.carveId}.tar`))).toBe(false);
  });

  it("refuses a conflicting re-send with a non-JSON reply and keeps the stored bytes", async () => {
    const bytes = randomBytes(4 * 1024);
    const result = await carveBytes(bytes, { inject: { corrupt: [1] } });
    const conflict = result.requests.find((r) => r.variant === "corrupt");
    expect(conflict?.statusCode).toBe(409);
    expect(isJson(conflict?.body ?? "")).toBe(false);
    expect(result.status).toBe("DATA POST FAILED"); // a 5.22+ agent stops
    const record = await svc.store.getCarve(result.carveId);
    expect(record.blocksReceived).toBe(2);
    // the genuine block 1 is what is stored: finishing the carve yields the original bytes
    const session = await svc.store.findSession(result.sessionId as string);
    for (const id of [2, 3]) await svc.store.putBlock(session, id, bytes.subarray(id * 1024, (id + 1) * 1024));
    expect((await svc.store.getCarve(result.carveId)).sha256).toBe(sha256(bytes));
  });

  it("refuses invalid base64 with a non-JSON reply: a 5.22+ agent retries 3 times then aborts", async () => {
    const bytes = randomBytes(3 * 1024);
    const result = await carveBytes(bytes, { inject: { badBase64: [1] } });
    const tries = result.requests.filter((r) => r.blockId === 1);
    expect(tries).toHaveLength(3);
    expect(tries.every((r) => r.statusCode === 400 && !isJson(r.body) && r.body.includes("INVALID_BASE64"))).toBe(true);
    expect(result.status).toBe("DATA POST FAILED");
    expect((await svc.store.getCarve(result.carveId)).blocksReceived).toBe(1);
  });

  it("refuses a wrong decoded length with a non-JSON reply (an old agent leaves a gap)", async () => {
    const bytes = randomBytes(3 * 1024);
    const result = await carveBytes(bytes, { agentVersion: "4.9.0", inject: { wrongLength: [0] } });
    const r0 = result.requests.find((r) => r.blockId === 0);
    expect(r0?.statusCode).toBe(400);
    expect(r0?.body).toContain("BLOCK_LENGTH_MISMATCH");
    expect(result.status).toBe("SUCCESS");
    const record = await svc.store.getCarve(result.carveId);
    expect(record.status).toBe("receiving");
    expect(await svc.store.missingBlocks(result.carveId, 10)).toEqual([0]);
  });

  it("refuses unknown sessions, mismatched request ids, out-of-range ids and malformed bodies, non-JSON", async () => {
    const body = startBody({ block_count: 2, block_size: 4, carve_size: 6 });
    const sid = ((await post("/start_uploads", body)).json as { session_id: string }).session_id;
    const good = { block_id: 0, session_id: sid, request_id: body.request_id, data: Buffer.from("abcd").toString("base64") };
    const cases: Array<[unknown, number, string]> = [
      [{ ...good, session_id: "0123456789abcdef0123456789abcdef" }, 404, "UNKNOWN_SESSION"],
      [{ ...good, session_id: "../../meta/x" }, 400, "INVALID_BLOCK"],
      [{ ...good, request_id: "someone-else" }, 403, "REQUEST_ID_MISMATCH"],
      [{ ...good, block_id: 2 }, 400, "BLOCK_OUT_OF_RANGE"],
      [{ ...good, block_id: -1 }, 400, "INVALID_BLOCK"],
      [{ ...good, block_id: 1e20 }, 400, "INVALID_BLOCK"],
      [{ ...good, block_id: "0" }, 400, "INVALID_BLOCK"],
      [{ ...good, data: "YWJj ZA==" }, 400, "INVALID_BASE64"],
      [{ ...good, data: "YWJjZA" }, 400, "INVALID_BASE64"],
      [{ ...good, data: "YWJjZGVm" }, 400, "BLOCK_LENGTH_MISMATCH"],
      [{ ...good, data: 12 }, 400, "INVALID_BLOCK"],
      [{ block_id: 0 }, 400, "INVALID_BLOCK"],
      ["{not json", 400, "INVALID_JSON"],
      ["", 400, "INVALID_JSON"],
    ];
    for (const [payload, status, code] of cases) {
      const res = await post("/upload_blocks", payload);
      expect({ payload, status: res.status }).toEqual({ payload, status });
      expect(res.text).toContain(code);
      expect(isJson(res.text)).toBe(false);
    }
    expect((await svc.store.getCarve(body.carve_id as string)).blocksReceived).toBe(0);
    // and the genuine block is still accepted afterwards
    expect((await post("/upload_blocks", good)).json).toEqual({ success: true });
  });

  it("answers a duplicate arriving after completion with JSON success", async () => {
    const body = startBody({ block_count: 1, block_size: 8, carve_size: 5 });
    const sid = ((await post("/start_uploads", body)).json as { session_id: string }).session_id;
    const block = { block_id: 0, session_id: sid, request_id: body.request_id, data: Buffer.from("hello").toString("base64") };
    expect((await post("/upload_blocks", block)).json).toEqual({ success: true });
    expect((await svc.store.getCarve(body.carve_id as string)).status).toBe("complete");
    const again = await post("/upload_blocks", block);
    expect(again.status).toBe(200);
    expect(again.json).toEqual({ success: true });
    const conflicting = await post("/upload_blocks", { ...block, data: Buffer.from("HELLO").toString("base64") });
    expect(conflicting.status).toBe(409);
    expect(isJson(conflicting.text)).toBe(false);
  });

  it("refuses a body over the limit derived from the maximum block size, non-JSON", async () => {
    const body = startBody({ block_count: 1, block_size: 4 * 1024 * 1024, carve_size: 4 * 1024 * 1024 });
    const sid = ((await post("/start_uploads", body)).json as { session_id: string }).session_id;
    const tooBig = { block_id: 0, session_id: sid, request_id: body.request_id, data: "A".repeat(6 * 1024 * 1024) };
    const res = await post("/upload_blocks", tooBig);
    expect(res.status).toBe(413);
    expect(isJson(res.text)).toBe(false);
    expect((await svc.store.getCarve(body.carve_id as string)).blocksReceived).toBe(0);
  });

  it("routes POST / by body keys for agents whose endpoint flags are empty", async () => {
    const bytes = randomBytes(5000);
    const result = await carveBytes(bytes, { startEndpoint: "", continueEndpoint: "" });
    expect(result.status).toBe("SUCCESS");
    expect((await svc.store.getCarve(result.carveId)).sha256).toBe(sha256(bytes));
    const neither = await post("/", { hello: "world" });
    expect(neither.status).toBe(400);
    expect(isJson(neither.text)).toBe(false);
  });

  it("answers an unknown POST path non-JSON so a misconfigured agent notices", async () => {
    const res = await post("/start_uploads%20", startBody());
    expect(res.status).toBe(404);
    expect(isJson(res.text)).toBe(false);
    const get = await fetch(`${svc.url}/nope`);
    expect(get.status).toBe(404);
    expect(await get.json()).toMatchObject({ error: { code: "NOT_FOUND" } });
  });
});

describe("3. the archive", () => {
  it("stores a real osquery tar (5.5+ names, pax times) and a zstd one as .tar.zst", async () => {
    const src = await randomFile(50_000);
    for (const compression of [false, true]) {
      const carveId = randomUUID();
      const archive = await buildCarveArchive({
        paths: [src.file],
        carveId,
        outFile: path.join(work, `${carveId}.out`),
        compression,
        paxTimes: true,
      });
      const result = await runCarve({
        baseUrl: svc.url,
        startEndpoint: "/start_uploads",
        continueEndpoint: "/upload_blocks",
        archivePath: archive.path,
        carveId,
        blockSize: 8192,
        retryDelaysMs: FAST_RETRIES,
      });
      expect(result.status).toBe("SUCCESS");
      const record = await svc.store.getCarve(carveId);
      expect(record.sha256).toBe(archive.sha256);
      expect(record.compression).toBe(compression ? "zstd" : "none");
      const file = path.join(svc.dataDir, "carves", `${carveId}${compression ? ".tar.zst" : ".tar"}`);
      expect(sha256(await readFile(file))).toBe(archive.sha256);
    }
  });

  it("stores osquery's empty carve (1024 zero bytes, one block)", async () => {
    const carveId = randomUUID();
    const archive = await buildCarveArchive({ paths: [], carveId, outFile: path.join(work, `${carveId}.tar`) });
    expect(archive.size).toBe(1024);
    const result = await runCarve({
      baseUrl: svc.url,
      startEndpoint: "/start_uploads",
      continueEndpoint: "/upload_blocks",
      archivePath: archive.path,
      carveId,
      retryDelaysMs: FAST_RETRIES,
    });
    expect(result.blockCount).toBe(1);
    expect((await svc.store.getCarve(carveId)).sha256).toBe(sha256(Buffer.alloc(1024)));
  });
});

describe("logging", () => {
  // At debug every request is logged (the Express path): the scan covers the most log output there is.
  let production: TestService;
  beforeAll(async () => {
    production = svc;
    svc = await startTestService({ CARVE_MAX_BLOCK_SIZE: "4MiB", CARVE_MAX_CARVE_SIZE: "64MiB", LOG_LEVEL: "debug" });
  });
  afterAll(async () => {
    await svc.dispose();
    svc = production;
  });

  it("never writes node keys, Authorization headers or block data to the log", async () => {
    const secretKey = `NODEKEY-${randomUUID()}`;
    const bytes = randomBytes(2048);
    const result = await carveBytes(bytes, { nodeKey: secretKey, agentVersion: "5.23.0", blockSize: 1024 });
    expect(result.status).toBe("SUCCESS");
    await post("/start_uploads", startBody({ node_key: secretKey }), { authorization: `NodeKey ${secretKey}` });
    const text = svc.logs.text;
    expect(text).toContain(result.carveId); // the carve was logged...
    expect(text).not.toContain(secretKey); // ...but not its secrets
    expect(text).not.toContain(bytes.subarray(0, 1024).toString("base64").slice(0, 40));
    const withIds = svc.logs.entries().filter((e) => typeof e.req === "object");
    expect(withIds.length).toBeGreaterThan(0);
    expect(withIds.every((e) => typeof (e.req as { id?: unknown }).id === "string")).toBe(true);
  });

  it("reuses a sane X-Request-Id and replaces a hostile one", async () => {
    const ok = await fetch(`${svc.url}/status`, { headers: { "x-request-id": "nginx-req-123" } });
    expect(ok.headers.get("x-request-id")).toBe("nginx-req-123");
    const bad = await fetch(`${svc.url}/status`, { headers: { "x-request-id": "bad id\u00e9<script>" } });
    expect(bad.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
  });
});
