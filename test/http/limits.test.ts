/** Limits that protect the server (issue 7): a nearly full disk refuses new carves, deliberately and counted. */
import { randomUUID } from "node:crypto";
import { readdir } from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestService, type TestService } from "../support/service.js";

let svc: TestService;
beforeAll(async () => {
  svc = await startTestService({ CARVE_MIN_FREE_DISK: "1000TiB", LOG_LEVEL: "warn" });
});
afterAll(async () => {
  await svc.dispose();
});

describe("minimum free disk", () => {
  it("refuses a new carve with a JSON 507 (no session_id: the agent fails it at once), stores nothing, counts it", async () => {
    const res = await fetch(`${svc.url}/start_uploads`, {
      method: "POST",
      body: JSON.stringify({ block_count: 1, block_size: 1024, carve_size: 1024, carve_id: randomUUID(), request_id: randomUUID(), node_key: "" }),
    });
    expect(res.status).toBe(507);
    const body = (await res.json()) as Record<string, unknown>;
    expect(body).toMatchObject({ error: { code: "INSUFFICIENT_STORAGE" } });
    expect(body).not.toHaveProperty("session_id");
    expect(await readdir(path.join(svc.dataDir, "meta"))).toEqual([]);
    const metrics = await (await fetch(`${svc.url}/metrics`)).text();
    expect(metrics).toContain('carve_sessions_refused_total{reason="INSUFFICIENT_STORAGE"} 1');
  });
});
