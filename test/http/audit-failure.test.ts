/**
 * A responder request whose audit event cannot be stored (docs/responder-api.md, "Read the audit trail": if
 * storing one fails, the log line is written at error level with the whole event). The cause is real: another
 * process (the sqlite3 shell) holds a write transaction on the data directory's catalog.sqlite for longer than the
 * service's busy timeout (5 s), so every write fails while reads go on (WAL).
 *  - a read (carve.read) is answered in full; its event exists only in the log, at error level, whole;
 *  - a write (placing a legal hold) fails itself, with the JSON 503 STORAGE_UNAVAILABLE and no hold placed, and
 *    its event (result error) also only in the log.
 * The service is the built one in a child process, so its stalls do not stall the test.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawnService, type ChildService } from "../support/service.js";
import { holdWriteLock } from "../support/sqlite-lock.js";
import { startVaultDouble, type VaultDouble } from "../support/vault-double.js";

let work: string;
let vault: VaultDouble;
let svc: ChildService;
let carveId: string;
const admin = `hvs.${randomBytes(12).toString("hex")}`;

const logEntries = (): Array<Record<string, unknown>> =>
  svc.output
    .join("\n")
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Record<string, unknown>);

async function waitForLog(pred: (e: Record<string, unknown>) => boolean, what: string): Promise<Record<string, unknown>> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const hit = logEntries().find(pred);
    if (hit) return hit;
    if (Date.now() > deadline) throw new Error(`no log line: ${what}\n${svc.output.join("\n").slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const api = (p: string, init: RequestInit = {}): Promise<Response> =>
  fetch(`${svc.url}/api/v1${p}`, { ...init, headers: { "x-vault-token": admin, "content-type": "application/json", ...init.headers } });

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-audit-fail-"));
  vault = await startVaultDouble();
  vault.addToken(admin, { policies: ["osquery-carve-download", "osquery-carve-admin"] });
  svc = await spawnService({
    CARVE_DATA_DIR: path.join(work, "data"),
    VAULT_ADDR: vault.url,
    CARVE_VAULT_CACHE_SECONDS: "0",
    CARVE_RETENTION_ENABLED: "false", // nothing but the requests below writes
    LOG_LEVEL: "info",
  });
  carveId = randomUUID();
  const start = { block_count: 1, block_size: 5, carve_size: 5, carve_id: carveId, request_id: randomUUID(), node_key: "" };
  const started = (await (await fetch(`${svc.url}/start_uploads`, { method: "POST", body: JSON.stringify(start) })).json()) as { session_id: string };
  const block = { block_id: 0, session_id: started.session_id, request_id: start.request_id, data: Buffer.from("hello").toString("base64") };
  expect(await (await fetch(`${svc.url}/upload_blocks`, { method: "POST", body: JSON.stringify(block) })).text()).toBe('{"success":true}');
});

afterAll(async () => {
  svc?.proc.kill("SIGTERM");
  await svc?.exited;
  await vault?.close();
  await rm(work, { recursive: true, force: true });
});

/** The trail's events for a request id (read back once the lock is gone). */
async function trailFor(requestId: string): Promise<unknown[]> {
  const res = await api(`/audit?carve_id=${carveId}&limit=500`);
  expect(res.status).toBe(200);
  const { events } = (await res.json()) as { events: Array<{ client: { requestId: string } }> };
  return events.filter((e) => e.client.requestId === requestId);
}

describe("the audit log cannot be written (catalog.sqlite locked by another process)", () => {
  it("a read is answered in full; its event is logged at error level, whole, and is not in the trail", async () => {
    const lock = await holdWriteLock(path.join(work, "data", "catalog.sqlite"));
    let released = false;
    try {
      const requestId = randomUUID();
      const res = await api(`/carves/${carveId}`, { headers: { "x-request-id": requestId } });
      expect(res.status).toBe(200);
      expect(await res.json()).toMatchObject({ carveId, status: "complete", sha256: expect.any(String) as string });
      // the reply was sent before the audit write began: that write is still waiting for the lock (5 s)
      expect(logEntries().some((e) => e.msg === "audit event could not be stored")).toBe(false);
      const failed = await waitForLog((e) => e.msg === "audit event could not be stored" && (e.audit as { client?: { requestId?: string } }).client?.requestId === requestId, "the failed audit write");
      expect(failed.level).toBe("error");
      expect(failed.audit).toMatchObject({
        action: "carve.read",
        result: "allowed",
        carveId,
        actor: { tokenFingerprint: expect.any(String) as string },
        detail: { method: "GET", status: 200 },
        at: expect.any(String) as string,
        id: expect.any(String) as string,
      });
      expect(failed.err).toMatchObject({ code: "STORAGE_UNAVAILABLE", message: expect.stringMatching(/database is locked/) as string });
      expect(JSON.stringify(failed)).not.toContain(admin);
      await lock.release();
      released = true;
      expect(await trailFor(requestId)).toEqual([]);
    } finally {
      if (!released) await lock.release();
    }
  });

  it("a legal hold is not placed: JSON 503 STORAGE_UNAVAILABLE, and its event (result error) is only in the log", async () => {
    const lock = await holdWriteLock(path.join(work, "data", "catalog.sqlite"));
    let released = false;
    try {
      const requestId = randomUUID();
      const res = await api(`/carves/${carveId}/hold`, { method: "PUT", body: JSON.stringify({ reason: "case 42" }), headers: { "x-request-id": requestId } });
      expect(res.status).toBe(503);
      expect(await res.json()).toMatchObject({ error: { code: "STORAGE_UNAVAILABLE" } });
      const failed = await waitForLog((e) => e.msg === "audit event could not be stored" && (e.audit as { client?: { requestId?: string } }).client?.requestId === requestId, "the failed audit write");
      expect(failed.audit).toMatchObject({ action: "carve.hold", result: "error", carveId, detail: { code: "STORAGE_UNAVAILABLE", status: 503 } });
      await lock.release();
      released = true;
      expect(await trailFor(requestId)).toEqual([]);
      const after = (await (await api(`/carves/${carveId}`)).json()) as { hold: unknown };
      expect(after.hold).toBeNull();
      // with the lock gone the same request works and is audited
      const again = await api(`/carves/${carveId}/hold`, { method: "PUT", body: JSON.stringify({ reason: "case 42" }), headers: { "x-request-id": `${requestId}-2` } });
      expect(again.status).toBe(200);
      expect(await trailFor(`${requestId}-2`)).toHaveLength(1);
    } finally {
      if (!released) await lock.release();
    }
  });
});
