/**
 * Legal holds through the responder API (issue 6): an admin places and lifts them, a held carve can be
 * neither deleted nor expired, a reader cannot touch them, and each step is audited.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCarve } from "../../scripts/emulator/index.js";
import { startTestService, type TestService } from "../support/service.js";
import { startVaultDouble, type VaultDouble } from "../support/vault-double.js";

let vault: VaultDouble;
let svc: TestService;
let work: string;
const ADMIN = `hvs.admin${randomBytes(8).toString("hex")}`;
const READER = `hvs.reader${randomBytes(8).toString("hex")}`;

async function api(method: string, p: string, token: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(svc.url + p, {
    method,
    headers: { "x-vault-token": token, "content-type": "application/json" },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

async function carve(): Promise<string> {
  const file = path.join(work, `${randomUUID()}.bin`);
  await writeFile(file, randomBytes(3000));
  const result = await runCarve({
    baseUrl: svc.url,
    startEndpoint: "/start_uploads",
    continueEndpoint: "/upload_blocks",
    archivePath: file,
    blockSize: 1024,
  });
  expect(result.status).toBe("SUCCESS");
  return result.carveId;
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-hold-"));
  vault = await startVaultDouble();
  vault.addToken(ADMIN, { policies: ["osquery-carve-admin", "osquery-carve-download"], displayName: "ldap-bob" });
  vault.addToken(READER, { policies: ["osquery-carve-download"], displayName: "ldap-alice" });
  svc = await startTestService({ VAULT_ADDR: vault.url, CARVE_VAULT_CACHE_SECONDS: "0" });
});
afterAll(async () => {
  await svc.dispose();
  await vault.close();
  await rm(work, { recursive: true, force: true });
});

describe("legal hold", () => {
  it("is placed and lifted by an admin, blocks deletion meanwhile, and is audited", async () => {
    const id = await carve();
    const placed = await api("PUT", `/api/v1/carves/${id}/hold`, ADMIN, { reason: "case IR-2026-17" });
    expect(placed.status).toBe(200);
    expect(placed.json.hold).toMatchObject({ by: "ldap-bob", reason: "case IR-2026-17" });
    expect((await svc.store.getCarve(id)).hold?.reason).toBe("case IR-2026-17");

    const del = await api("DELETE", `/api/v1/carves/${id}`, ADMIN);
    expect(del.status).toBe(409);
    expect(del.json).toMatchObject({ error: { code: "CARVE_ON_HOLD" } });
    expect((await svc.store.getCarve(id)).status).toBe("complete");

    const lifted = await api("DELETE", `/api/v1/carves/${id}/hold`, ADMIN);
    expect(lifted).toEqual({ status: 200, json: { carveId: id, hold: null } });
    expect((await api("DELETE", `/api/v1/carves/${id}`, ADMIN)).status).toBe(200);

    const audit = await api("GET", `/api/v1/audit?carve_id=${id}`, ADMIN);
    const actions = (audit.json.events as Array<{ action: string; result: string; actor: { displayName: string } }>).map(
      (e) => `${e.action}:${e.result}`,
    );
    expect(actions).toEqual(["carve.delete:allowed", "carve.release:allowed", "carve.delete:error", "carve.hold:allowed"]);
  });

  it("keeps the hold in place: another is refused naming it, and of PUTs at once exactly one places its hold", async () => {
    const id = await carve();
    const first = await api("PUT", `/api/v1/carves/${id}/hold`, ADMIN, { reason: "case IR-1" });
    expect(first.status).toBe(200);
    const at = (first.json.hold as { at: string }).at;
    const again = await api("PUT", `/api/v1/carves/${id}/hold`, ADMIN, { reason: "case IR-2" });
    expect(again).toMatchObject({ status: 409, json: { error: { code: "HOLD_EXISTS", message: expect.stringContaining(`placed by ldap-bob at ${at}; lift it first`) as unknown } } });
    expect((await svc.store.getCarve(id)).hold?.reason).toBe("case IR-1");
    const audit = await api("GET", `/api/v1/audit?carve_id=${id}&action=carve.hold`, ADMIN);
    expect(audit.json.events).toMatchObject([
      { result: "error", detail: { code: "HOLD_EXISTS", existingHoldBy: "ldap-bob", existingHoldAt: at, status: 409 } },
      { result: "allowed", detail: { reason: "case IR-1" } },
    ]);

    const raced = await carve();
    const replies = await Promise.all(
      Array.from({ length: 8 }, (_, i) => api("PUT", `/api/v1/carves/${raced}/hold`, ADMIN, { reason: `race ${i}` })),
    );
    const won = replies.filter((r) => r.status === 200);
    expect(replies.map((r) => r.status).sort()).toEqual([200, 409, 409, 409, 409, 409, 409, 409]);
    expect((await svc.store.getCarve(raced)).hold?.reason).toBe((won[0]?.json.hold as { reason: string }).reason);
  });

  it("is refused to a reader, and needs a reason", async () => {
    const id = await carve();
    const denied = await api("PUT", `/api/v1/carves/${id}/hold`, READER, { reason: "mine" });
    expect(denied.status).toBe(403);
    expect((await svc.store.getCarve(id)).hold).toBeNull();
    expect((await api("PUT", `/api/v1/carves/${id}/hold`, ADMIN, {})).status).toBe(400);
    expect((await api("PUT", `/api/v1/carves/${id}/hold`, ADMIN, { reason: "   " })).status).toBe(400);
    expect((await api("PUT", `/api/v1/carves/${randomUUID()}/hold`, ADMIN, { reason: "x" })).status).toBe(404);
  });
});
