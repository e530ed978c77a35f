import { randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCarve } from "../../scripts/emulator/index.js";
import { Metrics } from "../../src/metrics.js";
import { ROOT, startTestService, type TestService } from "../support/service.js";
import { startVaultDouble } from "../support/vault-double.js";

let svc: TestService;
let work: string;

function value(text: string, name: string, labels = ""): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name}${labels} `));
  return line ? Number(line.split(" ").pop()) : Number.NaN;
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-metrics-"));
  svc = await startTestService({ LOG_LEVEL: "warn" });
});
afterAll(async () => {
  await svc.dispose();
  await rm(work, { recursive: true, force: true });
});

describe("GET /metrics", () => {
  it("counts sessions, blocks by outcome, bytes and completions, in Prometheus format without identifiers", async () => {
    const bytes = randomBytes(10 * 1024);
    const archivePath = path.join(work, "a.bin");
    await writeFile(archivePath, bytes);
    const nodeKey = `nk-${randomUUID()}`;
    const result = await runCarve({
      baseUrl: svc.url,
      startEndpoint: "/start_uploads",
      continueEndpoint: "/upload_blocks",
      archivePath,
      blockSize: 1024,
      nodeKey,
      retryDelaysMs: [5, 5],
      agentVersion: "5.12.0", // an old agent: a refused block is skipped, then re-sent below
      inject: { duplicate: [2, 3], badBase64: [4] },
    });
    expect(result.status).toBe("SUCCESS");
    // the gap (block 4) filled by a genuine re-send completes the carve
    const session = await svc.store.findSession(result.sessionId as string);
    await fetch(`${svc.url}/upload_blocks`, {
      method: "POST",
      body: JSON.stringify({ block_id: 4, session_id: session.sessionId, request_id: session.requestId, data: bytes.subarray(4096, 5120).toString("base64") }),
    });
    const res = await fetch(`${svc.url}/metrics`);
    expect(res.headers.get("content-type")).toMatch(/text\/plain/);
    const text = await res.text();
    expect(value(text, "carve_sessions_started_total")).toBe(1);
    expect(value(text, "carve_sessions_completed_total")).toBe(1);
    expect(value(text, "carve_blocks_received_total")).toBe(10);
    expect(value(text, "carve_blocks_duplicate_total")).toBe(2);
    expect(value(text, "carve_blocks_refused_total", '{reason="INVALID_BASE64"}')).toBe(1);
    expect(value(text, "carve_bytes_stored_total")).toBe(bytes.length);
    expect(value(text, "carve_completion_seconds_count")).toBe(1);
    expect(value(text, "process_resident_memory_bytes")).toBeGreaterThan(0);
    expect(text).not.toContain(result.carveId);
    expect(text).not.toContain(nodeKey);
  });

  it("counts downloads, bytes sent and Vault decisions by outcome", async () => {
    const vault = await startVaultDouble();
    const token = `hvs.${randomBytes(10).toString("hex")}`;
    vault.addToken(token, { policies: ["osquery-carve-download"] });
    const responder = await startTestService({ LOG_LEVEL: "warn", VAULT_ADDR: vault.url, CARVE_VAULT_CACHE_SECONDS: "0" });
    try {
      const bytes = randomBytes(5000);
      const archivePath = path.join(work, "d.bin");
      await writeFile(archivePath, bytes);
      const carve = await runCarve({ baseUrl: responder.url, startEndpoint: "/start_uploads", continueEndpoint: "/upload_blocks", archivePath, blockSize: 1024 });
      const url = `${responder.url}/api/v1/carves/${carve.carveId}/archive`;
      expect((await (await fetch(url, { headers: { "x-vault-token": token } })).arrayBuffer()).byteLength).toBe(5000);
      expect((await fetch(url, { headers: { "x-vault-token": "hvs.unknown" } })).status).toBe(401);
      const text = await (await fetch(`${responder.url}/metrics`)).text();
      expect(value(text, "carve_downloads_total", '{result="complete"}')).toBe(1);
      expect(value(text, "carve_download_bytes_total")).toBe(5000);
      expect(value(text, "carve_vault_decisions_total", '{outcome="allowed"}')).toBe(1);
      expect(value(text, "carve_vault_decisions_total", '{outcome="invalid-token"}')).toBe(1);
      expect(text).not.toContain(token);
    } finally {
      await responder.dispose();
      await vault.close();
    }
  });

  it("documents every metric in the README", () => {
    const readme = readFileSync(path.join(ROOT, "README.md"), "utf8");
    const names = new Metrics({ processMetrics: false }).registry.getMetricsAsArray().map((m) => m.name);
    expect(names.length).toBeGreaterThan(10);
    for (const name of names) expect(readme, name).toContain(`\`${name}\``);
  });
});
