/**
 * Every carve_* metric of src/metrics.ts read back from GET /metrics after real traffic, each moving as README
 * "Metrics" says (test/http/metrics.test.ts covers the basic counts and that every metric is documented):
 * starts (a retried start not counted again), refusals by code, blocks by outcome, bytes, completions and their
 * duration (the service's clock stepped 100 s), downloads complete and aborted with the bytes actually sent,
 * Vault decisions by each outcome, storage failures (catalog.sqlite locked by another process), the in-flight
 * body gauge (bytes received, not declared) and expiries by each reason.
 */
import { randomBytes, randomUUID } from "node:crypto";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Metrics } from "../../src/metrics.js";
import { makeCarve } from "../support/carve-data.js";
import { startTestService, type TestService } from "../support/service.js";
import { holdWriteLock } from "../support/sqlite-lock.js";
import { startVaultDouble, type VaultDouble } from "../support/vault-double.js";

const DAY = 86_400_000;

/** name{labels} -> value, for every sample of the scrape. */
async function scrape(svc: TestService): Promise<Map<string, number>> {
  const res = await fetch(`${svc.url}/metrics`);
  expect(res.status).toBe(200);
  const samples = new Map<string, number>();
  for (const line of (await res.text()).split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const at = line.lastIndexOf(" ");
    samples.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return samples;
}

const get = (m: Map<string, number>, key: string): number => m.get(key) ?? 0;

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Every carve_* metric this file reads back; checked against src/metrics.ts at the end. */
const COVERED = new Set<string>();
const cover = (...names: string[]): void => names.forEach((n) => COVERED.add(n));

describe("agent and responder traffic", () => {
  let svc: TestService;
  let vault: VaultDouble;
  let offsetMs = 0;
  const reader = `hvs.${randomBytes(12).toString("hex")}`;
  const nobody = `hvs.${randomBytes(12).toString("hex")}`;

  beforeAll(async () => {
    vault = await startVaultDouble();
    vault.addToken(reader, { policies: ["osquery-carve-download"] });
    vault.addToken(nobody, { policies: [] });
    svc = await startTestService(
      {
        VAULT_ADDR: vault.url,
        CARVE_VAULT_CACHE_SECONDS: "0", // every request is one decision
        CARVE_VAULT_TIMEOUT_MS: "1000",
        CARVE_RETENTION_ENABLED: "false",
        CARVE_MAX_BLOCK_SIZE: "1MiB",
        LOG_LEVEL: "warn",
      },
      { now: () => new Date(Date.now() + offsetMs) },
    );
  });
  afterAll(async () => {
    await svc.dispose();
    await vault.close();
  });

  const post = async (route: string, body: unknown): Promise<{ status: number; text: string }> => {
    const res = await fetch(`${svc.url}${route}`, { method: "POST", body: JSON.stringify(body) });
    return { status: res.status, text: await res.text() };
  };

  it("counts starts, refusals, blocks by outcome, bytes, completions and how long they took", async () => {
    cover("carve_sessions_started_total", "carve_sessions_refused_total", "carve_blocks_received_total", "carve_blocks_duplicate_total");
    cover("carve_blocks_refused_total", "carve_bytes_stored_total", "carve_sessions_completed_total", "carve_completion_seconds");
    const before = await scrape(svc);
    const bytes = randomBytes(1500);
    const start = { block_count: 2, block_size: 1000, carve_size: 1500, carve_id: randomUUID(), request_id: randomUUID(), node_key: "nk" };
    const started = await post("/start_uploads", start);
    expect(started.status).toBe(200);
    expect(await post("/start_uploads", start)).toEqual(started); // the retry: the same session, not a new one
    expect((await post("/start_uploads", { ...start, carve_id: randomUUID(), block_count: 3 })).status).toBe(400);
    expect((await post("/start_uploads", { ...start, carve_id: randomUUID(), block_size: 2 * 1024 * 1024, block_count: 1 })).status).toBe(413);
    expect((await post("/start_uploads", { ...start, request_id: randomUUID() })).status).toBe(409);
    const sessionId = (JSON.parse(started.text) as { session_id: string }).session_id;
    const block = (id: number, data: Buffer) => ({ block_id: id, session_id: sessionId, request_id: start.request_id, data: data.toString("base64") });
    expect((await post("/upload_blocks", block(0, bytes.subarray(0, 1000)))).text).toBe('{"success":true}');
    expect((await post("/upload_blocks", block(0, bytes.subarray(0, 1000)))).text).toBe('{"success":true}'); // duplicate
    expect((await post("/upload_blocks", block(0, randomBytes(1000)))).status).toBe(409); // other bytes
    expect((await post("/upload_blocks", { ...block(0, bytes.subarray(0, 1000)), session_id: "f".repeat(32) })).status).toBe(404);
    offsetMs += 100_000; // the carve completes 100 s after its start, by the service's clock
    expect((await post("/upload_blocks", block(1, bytes.subarray(1000)))).text).toBe('{"success":true}');

    const after = await scrape(svc);
    const delta = (key: string): number => get(after, key) - get(before, key);
    expect(delta("carve_sessions_started_total")).toBe(1);
    expect(delta('carve_sessions_refused_total{reason="INVALID_START"}')).toBe(1);
    expect(delta('carve_sessions_refused_total{reason="BLOCK_SIZE_TOO_LARGE"}')).toBe(1);
    expect(delta('carve_sessions_refused_total{reason="CARVE_ID_CONFLICT"}')).toBe(1);
    expect(delta("carve_blocks_received_total")).toBe(2);
    expect(delta("carve_blocks_duplicate_total")).toBe(1);
    expect(delta('carve_blocks_refused_total{reason="BLOCK_CONFLICT"}')).toBe(1);
    expect(delta('carve_blocks_refused_total{reason="UNKNOWN_SESSION"}')).toBe(1);
    expect(delta("carve_bytes_stored_total")).toBe(1500); // the duplicate and the refused block add nothing
    expect(delta("carve_sessions_completed_total")).toBe(1);
    expect(delta("carve_completion_seconds_count")).toBe(1);
    expect(delta("carve_completion_seconds_sum")).toBeGreaterThanOrEqual(100);
    expect(delta("carve_completion_seconds_sum")).toBeLessThan(130);
    expect(delta('carve_completion_seconds_bucket{le="60"}')).toBe(0);
    expect(delta('carve_completion_seconds_bucket{le="300"}')).toBe(1);
  });

  it("counts downloads complete and aborted with the bytes actually sent, and Vault decisions by outcome", async () => {
    cover("carve_downloads_total", "carve_download_bytes_total", "carve_vault_decisions_total");
    const small = makeCarve({ size: 3000, blockSize: 1000 });
    const large = makeCarve({ size: 32 * 1024 * 1024, blockSize: 1024 * 1024 });
    for (const c of [small, large]) {
      const { session } = await svc.store.createSession(c.spec, randomUUID().replaceAll("-", ""));
      for (const [i, b] of c.blocks.entries()) await svc.store.putBlock(session, i, b);
    }
    const before = await scrape(svc);
    const archive = (c: typeof small): string => `${svc.url}/api/v1/carves/${c.spec.carveId}/archive`;

    const full = await fetch(archive(small), { headers: { "x-vault-token": reader } });
    expect(Buffer.from(await full.arrayBuffer()).equals(small.bytes)).toBe(true);
    // a responder that hangs up after the first chunk of 32 MiB
    const firstChunk = await new Promise<number>((resolve, reject) => {
      const req = http.get(archive(large), { headers: { "x-vault-token": reader } }, (res) => {
        expect(res.statusCode).toBe(200);
        res.once("data", (chunk: Buffer) => {
          req.destroy();
          resolve(chunk.length);
        });
      });
      req.on("error", (e: NodeJS.ErrnoException) => (e.code === "ECONNRESET" ? undefined : reject(e)));
    });
    expect(firstChunk).toBeGreaterThan(0);
    await until("the aborted download to be counted", async () => get(await scrape(svc), 'carve_downloads_total{result="aborted"}') > get(before, 'carve_downloads_total{result="aborted"}'));

    expect((await fetch(archive(small), { headers: { "x-vault-token": nobody } })).status).toBe(403);
    expect((await fetch(archive(small), { headers: { "x-vault-token": "hvs.not-a-token" } })).status).toBe(401);
    vault.setDown(true);
    try {
      expect((await fetch(archive(small), { headers: { "x-vault-token": reader } })).status).toBe(503);
    } finally {
      vault.setDown(false);
    }

    const after = await scrape(svc);
    const delta = (key: string): number => get(after, key) - get(before, key);
    expect(delta('carve_downloads_total{result="complete"}')).toBe(1);
    expect(delta('carve_downloads_total{result="aborted"}')).toBe(1);
    const sent = delta("carve_download_bytes_total") - small.bytes.length;
    expect(sent, "bytes sent of the aborted download").toBeGreaterThanOrEqual(firstChunk);
    expect(sent).toBeLessThan(large.bytes.length);
    expect(delta('carve_vault_decisions_total{outcome="allowed"}')).toBe(2);
    expect(delta('carve_vault_decisions_total{outcome="denied"}')).toBe(1);
    expect(delta('carve_vault_decisions_total{outcome="invalid-token"}')).toBe(1);
    expect(delta('carve_vault_decisions_total{outcome="unavailable"}')).toBe(1);
  });

  it("counts requests that failed on storage: a start while another process holds catalog.sqlite's write lock", async () => {
    cover("carve_store_errors_total");
    const before = await scrape(svc);
    const lock = await holdWriteLock(path.join(svc.dataDir, "catalog.sqlite"));
    try {
      const start = { block_count: 1, block_size: 10, carve_size: 10, carve_id: randomUUID(), request_id: randomUUID(), node_key: "" };
      const res = await post("/start_uploads", start);
      expect(res.status).toBe(503);
      expect(res.text).toMatch(/^refused: STORAGE_UNAVAILABLE/); // non-JSON: a 5.22+ agent retries the start
    } finally {
      await lock.release();
    }
    const after = await scrape(svc);
    expect(get(after, "carve_store_errors_total") - get(before, "carve_store_errors_total")).toBe(1);
    expect(get(after, 'carve_sessions_refused_total{reason="STORAGE_UNAVAILABLE"}') - get(before, 'carve_sessions_refused_total{reason="STORAGE_UNAVAILABLE"}')).toBe(1);
  });

  it("gauges agent body bytes received and not yet released, not the declared length", async () => {
    cover("carve_inflight_body_bytes");
    expect(get(await scrape(svc), "carve_inflight_body_bytes")).toBe(0);
    const socket = net.connect(svc.port, "127.0.0.1");
    await new Promise<void>((resolve) => socket.once("connect", resolve));
    const sent = 10_000;
    socket.write(`POST /upload_blocks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40000\r\n\r\n`);
    const head = `{"block_id":0,"session_id":"${"a".repeat(32)}","request_id":"r","data":"`;
    socket.write(head + "A".repeat(sent - head.length));
    try {
      await until("the gauge to show the bytes sent", async () => get(await scrape(svc), "carve_inflight_body_bytes") === sent);
    } finally {
      socket.destroy();
    }
    await until("the gauge to fall back to 0", async () => get(await scrape(svc), "carve_inflight_body_bytes") === 0);
  });
});

describe("expiries by reason", () => {
  it("counts each carve retention deletes under its reason", async () => {
    cover("carve_sessions_expired_total");
    let offsetMs = 0;
    const svc = await startTestService(
      { CARVE_RETENTION_ENABLED: "true", CARVE_RETENTION_INTERVAL_MINUTES: "0.01", LOG_LEVEL: "warn" },
      { now: () => new Date(Date.now() + offsetMs) },
    );
    try {
      const complete = makeCarve({ size: 2000, blockSize: 1000 });
      const abandoned = makeCarve({ size: 2000, blockSize: 1000 });
      const dead = makeCarve({ size: 2000, blockSize: 1000 });
      for (const [c, blocks] of [[complete, 2], [abandoned, 1], [dead, 2]] as const) {
        const { session } = await svc.store.createSession(c.spec, randomUUID().replaceAll("-", ""));
        for (let i = 0; i < blocks; i++) await svc.store.putBlock(session, i, c.blocks[i] as Buffer);
      }
      // a delete whose process died right after marking the carve (what a crash there leaves)
      const catalog = svc.services.storage.catalog;
      expect(await catalog.update(dead.spec.carveId, {}, { state: "deleting", claim: "dead-process", stateSince: new Date(Date.now()) })).not.toBeNull();
      const before = await scrape(svc);
      offsetMs = 31 * DAY;
      const key = (reason: string): string => `carve_sessions_expired_total{reason="${reason}"}`;
      await until("three expiries", async () => {
        const m = await scrape(svc);
        return ["retention", "abandoned", "unfinished-delete"].every((r) => get(m, key(r)) - get(before, key(r)) === 1);
      });
      const after = await scrape(svc);
      for (const r of ["retention", "abandoned", "unfinished-delete"]) expect(get(after, key(r)) - get(before, key(r))).toBe(1);
    } finally {
      await svc.dispose();
    }
  });
});

describe("coverage", () => {
  it("reads back every carve_* metric the service defines", () => {
    const names = new Metrics({ processMetrics: false }).registry
      .getMetricsAsArray()
      .map((m) => m.name)
      .filter((n) => n.startsWith("carve_"));
    expect([...COVERED].sort()).toEqual(names.sort());
  });
});
