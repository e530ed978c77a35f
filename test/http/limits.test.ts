/** Limits that protect the server (issue 7): a nearly full disk refuses new carves, deliberately and counted. */
import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { readdir } from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { peekEntries } from "../support/catalog-peek.js";
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
    // nothing stored: no catalog entry (in a catalog that is there to hold one), no staged or published bytes
    expect(existsSync(path.join(svc.dataDir, "catalog.sqlite"))).toBe(true);
    expect(peekEntries(svc.dataDir)).toEqual([]);
    expect(await readdir(path.join(svc.dataDir, "sessions"))).toEqual([]);
    expect(await readdir(path.join(svc.dataDir, "carves"))).toEqual([]);
    const metrics = await (await fetch(`${svc.url}/metrics`)).text();
    expect(metrics).toContain('carve_sessions_refused_total{reason="INSUFFICIENT_STORAGE"} 1');
  });
});

describe("carves being received at once", () => {
  let capped: TestService;
  beforeAll(async () => {
    capped = await startTestService({ CARVE_MAX_RECEIVING_CARVES: "2", CARVE_MAX_RECEIVING_CARVES_PER_AGENT: "1", LOG_LEVEL: "warn" });
  });
  afterAll(async () => {
    await capped.dispose();
  });

  // Agents are told apart by their address (as a trusted local NGINX reports it), never by their node key.
  const addressOf: Record<string, string> = { "node-a": "10.0.0.1", "node-b": "10.0.0.2", "node-c": "10.0.0.3" };
  const start = (body: Record<string, unknown>) =>
    fetch(`${capped.url}/start_uploads`, {
      method: "POST",
      headers: { "x-real-ip": addressOf[body.node_key as string] ?? "10.9.9.9" },
      body: JSON.stringify(body),
    }).then(async (r) => ({
      status: r.status,
      json: (await r.json()) as Record<string, unknown>,
    }));
  const startBody = (nodeKey: string) => ({
    block_count: 1,
    block_size: 4,
    carve_size: 4,
    carve_id: randomUUID(),
    request_id: randomUUID(),
    node_key: nodeKey,
  });

  it("caps them per agent and in all with a JSON 429, never refuses a retried start, and frees a slot on completion", async () => {
    const a = startBody("node-a");
    const first = await start(a);
    expect(first.status).toBe(200);
    expect(await start(startBody("node-a"))).toMatchObject({ status: 429, json: { error: { code: "TOO_MANY_CARVES_FOR_AGENT" } } });
    expect(await start(a)).toEqual(first); // the agent's retry of its own start
    expect((await start(startBody("node-b"))).status).toBe(200);
    const third = await start(startBody("node-c"));
    expect(third).toMatchObject({ status: 429, json: { error: { code: "TOO_MANY_CARVES" } } });
    expect(third.json).not.toHaveProperty("session_id");
    // node-a's carve completes: a slot frees up
    const block = { block_id: 0, session_id: first.json.session_id, request_id: a.request_id, data: Buffer.from("abcd").toString("base64") };
    expect(await (await fetch(`${capped.url}/upload_blocks`, { method: "POST", body: JSON.stringify(block) })).text()).toBe('{"success":true}');
    expect((await start(startBody("node-c"))).status).toBe(200);
    const metrics = await (await fetch(`${capped.url}/metrics`)).text();
    expect(metrics).toContain('carve_sessions_refused_total{reason="TOO_MANY_CARVES_FOR_AGENT"} 1');
    expect(metrics).toContain('carve_sessions_refused_total{reason="TOO_MANY_CARVES"} 1');
  });
});
