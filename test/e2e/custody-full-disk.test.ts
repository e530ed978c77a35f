/**
 * Issue 15 item 6: on a full disk, custody keeps working. The data directory is a small tmpfs in a user namespace
 * (kernel ENOSPC for real, test/support/tmpfs-namespace.ts); the service runs there as `npm start` runs it, with the
 * Vault double. A legal hold, a verification and their audit events are recorded although the disk is full (the
 * custody reserve, src/storage/filesystem/space-reserve.ts, is released for them), block writes are refused with the
 * non-JSON 503 agents retry until space is freed, and nothing stored is lost.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { runCarve } from "../../scripts/emulator/index.js";
import { spawnServiceWith, stopChild } from "../support/child-service.js";
import { freePort } from "../support/service.js";
import { openTmpfsNamespace, tmpfsNamespaceProblem } from "../support/tmpfs-namespace.js";
import { startVaultDouble, type VaultDouble } from "../support/vault-double.js";

const ADMIN = `hvs.admin${randomBytes(8).toString("hex")}`;
const sha256 = (b: Buffer): string => createHash("sha256").update(b).digest("hex");
let vault: VaultDouble;
let work: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-custody-"));
  vault = await startVaultDouble();
  vault.addToken(ADMIN, { policies: ["osquery-carve-admin", "osquery-carve-download"], displayName: "ldap-alice" });
});
afterAll(async () => {
  await vault?.close();
  await rm(work, { recursive: true, force: true });
});

const tmpfsProblem = await tmpfsNamespaceProblem();

it("can mount a small tmpfs in a user namespace for the full-disk custody test", () => {
  expect(tmpfsProblem).toBeNull();
});

it("places a hold, records a verification and audits both on a full disk; blocks wait for space; nothing is lost", async ({ onTestFinished }) => {
  const ns = await openTmpfsNamespace(16 * 1024 * 1024);
  const env = {
    CARVE_DATA_DIR: ns.mountPoint,
    CARVE_PORT: String(await freePort()),
    LOG_LEVEL: "info",
    CARVE_RETENTION_ENABLED: "false",
    VAULT_ADDR: vault.url,
    CARVE_VAULT_CACHE_SECONDS: "0",
  };
  const svc = await spawnServiceWith({ env, wrapper: ns.wrapper });
  onTestFinished(async () => {
    await stopChild(svc, "SIGKILL");
    await ns.close();
  });
  const api = async (method: string, p: string, body?: unknown) => {
    const r = await fetch(svc.url + p, {
      method,
      headers: { "x-vault-token": ADMIN, "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: r.status, json: (await r.json()) as Record<string, unknown> };
  };
  const common = { baseUrl: svc.url, startEndpoint: "/start_uploads", continueEndpoint: "/upload_blocks", agentVersion: "5.23.0" } as const;
  const bytes = randomBytes(200_000);
  const file = path.join(work, `${randomUUID()}.bin`);
  await writeFile(file, bytes);
  const done = await runCarve({ ...common, archivePath: file, blockSize: 16384 });
  expect(done.status).toBe("SUCCESS");

  // The disk fills up completely, as a carve in progress (or anything else on the volume) would fill it.
  ns.fill("filler");
  expect(ns.freeBytes()).toBe(0);

  const hold = await api("PUT", `/api/v1/carves/${done.carveId}/hold`, { reason: "case IR-9 (disk full)" });
  expect(hold.status, JSON.stringify(hold.json)).toBe(200);
  const afterHold = await api("GET", `/api/v1/carves/${done.carveId}`);
  expect(afterHold.json.hold, "right after the hold").toMatchObject({ reason: "case IR-9 (disk full)" });
  const verify = await api("POST", `/api/v1/carves/${done.carveId}/verify`, { sha256: sha256(bytes) });
  expect(verify.status, JSON.stringify(verify.json)).toBe(200);
  const shown = await api("GET", `/api/v1/carves/${done.carveId}`);
  expect(shown.json.hold, JSON.stringify(hold.json) + svc.output.slice(-15).join("\n")).toMatchObject({ reason: "case IR-9 (disk full)" });
  const audit = await api("GET", `/api/v1/audit?carve_id=${done.carveId}&limit=50`);
  expect(audit.status).toBe(200);
  const actions = (audit.json.events as Array<{ action: string; result: string }>).map((e) => `${e.action}:${e.result}`);
  expect(actions).toEqual(expect.arrayContaining(["carve.hold:allowed", "carve.verify:allowed"]));
  expect(svc.output.join("\n")).toMatch(/custody reserve released/);

  // Agents cannot eat what custody was given: a new carve's blocks get the non-JSON 503 and the agent gives up.
  const other = randomBytes(50_000);
  const otherFile = path.join(work, `${randomUUID()}.bin`);
  await writeFile(otherFile, other);
  const refused = await runCarve({ ...common, archivePath: otherFile, blockSize: 16384 });
  expect(refused.status).not.toBe("SUCCESS");
  const answers = refused.requests.filter((r) => !r.ok).map((r) => r.body);
  expect(answers.length).toBeGreaterThan(0);
  for (const a of answers) expect(a).toMatch(/^refused: STORAGE_UNAVAILABLE: /);

  // Space is freed: blocks resume (the reserve is written back first) and the same carve completes byte-exact.
  ns.free("filler");
  const deadline = Date.now() + 30_000;
  let again = await runCarve({ ...common, archivePath: otherFile, blockSize: 16384 });
  while (again.status !== "SUCCESS" && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 500));
    again = await runCarve({ ...common, archivePath: otherFile, blockSize: 16384 });
  }
  expect(again.status).toBe("SUCCESS");
  expect((await api("GET", `/api/v1/carves/${again.carveId}`)).json).toMatchObject({ status: "complete", sha256: sha256(other) });
  expect((await api("GET", `/api/v1/carves/${done.carveId}`)).json).toMatchObject({ status: "complete", sha256: sha256(bytes) });
  expect(svc.output.join("\n")).toMatch(/custody reserve restored/);
});
