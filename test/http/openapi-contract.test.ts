/**
 * The responder API's contract: docs/openapi.json is what the code generates, it is served without a token,
 * its schemas are valid JSON Schema 2020-12, and real replies of a real listening service (the Vault double
 * deciding) conform to it: every operation, its successes and its errors, bodies and headers.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildCarveArchive } from "../../scripts/emulator/index.js";
import { operations } from "../../src/http/api-operations.js";
import { openApiText } from "../../src/http/openapi.js";
import { uploadCarve, type UploadedCarve } from "../support/carve-upload.js";
import { fetchReply, OPENAPI_PATH, OpenApiChecker, type Reply } from "../support/openapi-check.js";
import { startTestService, type TestService } from "../support/service.js";
import { craftTar } from "../support/tar-writer.js";
import { startVaultDouble, type VaultDouble } from "../support/vault-double.js";

let vault: VaultDouble;
let svc: TestService;
let work: string;
let checker: OpenApiChecker;
const READER = `hvs.CAESIcontractReader${randomBytes(8).toString("hex")}`;
const ADMIN = `hvs.CAESIcontractAdmin${randomBytes(8).toString("hex")}`;
const IMPORTER = `hvs.CAESIcontractImport${randomBytes(8).toString("hex")}`;

let plain: UploadedCarve;
let compressed: UploadedCarve;
let crafted: UploadedCarve;
let notTar: UploadedCarve;
let receivingId: string;

beforeAll(async () => {
  vault = await startVaultDouble();
  vault.addToken(READER, { policies: ["osquery-carve-download"], displayName: "ldap-reader" });
  vault.addToken(ADMIN, { policies: ["osquery-carve-admin", "osquery-carve-download"], displayName: "ldap-admin" });
  vault.addToken(IMPORTER, { policies: ["osquery-carve-import"], displayName: "ldap-importer" });
  svc = await startTestService({ VAULT_ADDR: vault.url });
  work = await mkdtemp(path.join(tmpdir(), "contract-"));
  checker = new OpenApiChecker();
  await mkdir(path.join(work, "src/etc"), { recursive: true });
  const files = [path.join(work, "src/etc/hosts"), path.join(work, "src/big.bin")];
  await writeFile(files[0] as string, "127.0.0.1 localhost\n");
  await writeFile(files[1] as string, randomBytes(200_000));
  const archive = async (compression: boolean): Promise<Buffer> => {
    const id = randomUUID();
    const built = await buildCarveArchive({ paths: files, carveId: id, outFile: path.join(work, `${id}.tar${compression ? ".zst" : ""}`), paxTimes: true, compression });
    return readFile(built.path);
  };
  plain = await uploadCarve(svc.url, await archive(false), { dir: work });
  compressed = await uploadCarve(svc.url, await archive(true), { dir: work });
  crafted = await uploadCarve(svc.url, craftTar([{ name: "dir/", typeflag: "5" }, { name: 'dir/we"ird\nname.txt', content: "x" }]), { dir: work });
  notTar = await uploadCarve(svc.url, randomBytes(3000), { dir: work });
  receivingId = randomUUID();
  const start = { block_count: 3, block_size: 1024, carve_size: 2500, carve_id: receivingId, request_id: randomUUID(), node_key: "nk" };
  const res = await fetch(`${svc.url}/start_uploads`, { method: "POST", body: JSON.stringify(start) });
  expect(res.status).toBe(200);
}, 60_000);

afterAll(async () => {
  await svc.dispose();
  await vault.close();
  await rm(work, { recursive: true, force: true });
});

interface Call {
  method?: string;
  path: string;
  token?: string;
  headers?: Record<string, string>;
  body?: string | FormData;
}

/** One request; its reply must conform to the document. */
async function conforming(call: Call, expectedStatus: number): Promise<Reply> {
  const headers: Record<string, string> = { ...call.headers };
  if (call.token !== undefined) headers["X-Vault-Token"] = call.token;
  const reply = await fetchReply(`${svc.url}${call.path}`, { method: call.method ?? "GET", headers, ...(call.body !== undefined ? { body: call.body } : {}) });
  expect(reply.status, `${call.method ?? "GET"} ${call.path}: ${reply.body.toString("utf8").slice(0, 300)}`).toBe(expectedStatus);
  expect(checker.problems(reply)).toEqual([]);
  return reply;
}

describe("the document", () => {
  it("is checked in exactly as the contract generates it (npm run openapi rewrites it)", async () => {
    expect(await readFile(OPENAPI_PATH, "utf8"), "docs/openapi.json is stale: run npm run openapi").toBe(openApiText());
  });

  it("is served at /api/v1/openapi.json without a token", async () => {
    const reply = await conforming({ path: "/api/v1/openapi.json" }, 200);
    expect(JSON.parse(reply.body.toString("utf8"))).toEqual(checker.doc);
    expect(vault.requests.filter((r) => r.path.includes("lookup-self"))).toHaveLength(0);
  });

  it("has a valid JSON Schema for every component, parameter, header and body, and one operation per contract entry", () => {
    const doc = checker.doc as { components: { schemas: Record<string, object> }; paths: Record<string, Record<string, unknown>> };
    for (const name of Object.keys(doc.components.schemas)) checker.validator({ $ref: `#/components/schemas/${name}` });
    const text = JSON.stringify(doc.paths);
    for (const m of text.matchAll(/"schema":(\{[^{}]*\})/g)) checker.validator(JSON.parse(m[1] as string) as Record<string, unknown>);
    expect(checker.operationIds().sort()).toEqual(operations.map((o) => o.operationId).sort());
    expect(new Set(checker.operationIds()).size).toBe(operations.length);
  });

  it("rejects what it does not describe: an extra field, a wrong type, an undocumented status or a missing header", () => {
    const headers = new Headers({ "content-type": "application/json", "x-request-id": "r", "cache-control": "no-store" });
    const ok = { method: "POST", path: `/api/v1/carves/${plain.carveId}/verify`, status: 200, headers };
    const body = { carveId: "c", match: true, storedSha256: "a".repeat(64), claimedSha256: "a".repeat(64) };
    expect(checker.problems({ ...ok, body: Buffer.from(JSON.stringify(body)) })).toEqual([]);
    expect(checker.problems({ ...ok, body: Buffer.from(JSON.stringify({ ...body, extra: 1 })) })).not.toEqual([]);
    expect(checker.problems({ ...ok, body: Buffer.from(JSON.stringify({ ...body, match: "yes" })) })).not.toEqual([]);
    expect(checker.problems({ ...ok, status: 418, body: Buffer.from("{}") })).not.toEqual([]);
    expect(checker.problems({ ...ok, headers: new Headers({ "content-type": "application/json" }), body: Buffer.from(JSON.stringify(body)) })).not.toEqual([]);
  });
});

describe("real replies conform", () => {
  it("listing and metadata", async () => {
    await conforming({ path: "/api/v1/carves", token: READER }, 200);
    await conforming({ path: "/api/v1/carves?status=complete&limit=2", token: READER }, 200);
    await conforming({ path: "/api/v1/carves?limit=0", token: READER }, 400);
    await conforming({ path: "/api/v1/carves?bogus=1", token: READER }, 400);
    await conforming({ path: "/api/v1/carves" }, 401);
    await conforming({ path: "/api/v1/carves", token: "hvs.not-a-token" }, 401);
    await conforming({ path: "/api/v1/carves", token: IMPORTER }, 403);
    for (const id of [plain.carveId, compressed.carveId, receivingId]) await conforming({ path: `/api/v1/carves/${id}`, token: READER }, 200);
    await conforming({ path: `/api/v1/carves/${randomUUID()}`, token: READER }, 404);
    await conforming({ path: "/api/v1/carves/-bad", token: READER }, 404);
    await conforming({ path: `/api/v1/carves/${plain.carveId}?x=1`, token: READER }, 400);
  });

  it("archive downloads: whole, ranges, HEAD, decompressed, not ready", async () => {
    const whole = await conforming({ path: `/api/v1/carves/${plain.carveId}/archive`, token: READER }, 200);
    expect(whole.body.equals(plain.bytes)).toBe(true);
    await conforming({ path: `/api/v1/carves/${plain.carveId}/archive`, token: READER, headers: { Range: "bytes=0-9" } }, 206);
    await conforming({ path: `/api/v1/carves/${plain.carveId}/archive`, token: READER, headers: { Range: "bytes=99999999-" } }, 416);
    await conforming({ method: "HEAD", path: `/api/v1/carves/${plain.carveId}/archive`, token: READER }, 200);
    await conforming({ method: "HEAD", path: `/api/v1/carves/${randomUUID()}/archive`, token: READER }, 404);
    await conforming({ path: `/api/v1/carves/${compressed.carveId}/archive?format=tar`, token: READER }, 200);
    await conforming({ path: `/api/v1/carves/${compressed.carveId}/archive?format=zip`, token: READER }, 400);
    await conforming({ path: `/api/v1/carves/${receivingId}/archive`, token: READER }, 409);
    await conforming({ method: "POST", path: "/file_request", body: JSON.stringify({ file_carve_guid: plain.carveId, token: READER }) }, 200);
    await conforming({ method: "POST", path: "/file_request", headers: { Range: "bytes=5-" }, body: JSON.stringify({ file_carve_guid: plain.carveId, token: READER }) }, 206);
    await conforming({ method: "POST", path: "/file_request", body: JSON.stringify({ file_carve_guid: plain.carveId }) }, 401);
    await conforming({ method: "POST", path: "/file_request", body: "null" }, 400);
  });

  it("file listings and single files", async () => {
    for (const c of [plain, compressed, crafted]) await conforming({ path: `/api/v1/carves/${c.carveId}/files`, token: READER }, 200);
    await conforming({ path: `/api/v1/carves/${notTar.carveId}/files`, token: READER }, 422);
    await conforming({ path: `/api/v1/carves/${receivingId}/files`, token: READER }, 409);
    for (const c of [plain, compressed]) {
      await conforming({ path: `/api/v1/carves/${c.carveId}/files/0`, token: READER }, 200);
      await conforming({ method: "HEAD", path: `/api/v1/carves/${c.carveId}/files/1`, token: READER }, 200);
    }
    await conforming({ path: `/api/v1/carves/${crafted.carveId}/files/1`, token: READER }, 200);
    await conforming({ path: `/api/v1/carves/${crafted.carveId}/files/0`, token: READER }, 422);
    await conforming({ path: `/api/v1/carves/${plain.carveId}/files/7`, token: READER }, 404);
    await conforming({ path: `/api/v1/carves/${plain.carveId}/files/x`, token: READER }, 404);
    await conforming({ path: `/api/v1/carves/${notTar.carveId}/files/0`, token: READER }, 422);
    await conforming({ path: `/api/v1/carves/${receivingId}/files/0`, token: READER }, 409);
    await conforming({ path: `/api/v1/carves/${plain.carveId}/files/0` }, 401);
  });

  it("holds, verification, deletion and the audit trail", async () => {
    const hold = (body: string, status: number): Promise<Reply> =>
      conforming({ method: "PUT", path: `/api/v1/carves/${plain.carveId}/hold`, token: ADMIN, headers: { "content-type": "application/json" }, body }, status);
    await hold("null", 400);
    await hold('{"reason": " "}', 400);
    await hold('{"reason": "case 42"}', 200);
    await hold('{"reason": "again"}', 409);
    await conforming({ method: "DELETE", path: `/api/v1/carves/${plain.carveId}`, token: ADMIN }, 409);
    await conforming({ method: "DELETE", path: `/api/v1/carves/${plain.carveId}/hold`, token: ADMIN }, 200);
    await conforming({ method: "PUT", path: `/api/v1/carves/${plain.carveId}/hold`, token: READER, body: "{}" }, 403);

    const verify = (id: string, body: string, status: number): Promise<Reply> =>
      conforming({ method: "POST", path: `/api/v1/carves/${id}/verify`, token: READER, body }, status);
    await verify(plain.carveId, JSON.stringify({ sha256: plain.sha256 }), 200);
    await verify(plain.carveId, JSON.stringify({ sha256: "0".repeat(64) }), 200);
    await verify(plain.carveId, JSON.stringify({ sha256: "-1" }), 422);
    await verify(plain.carveId, "{", 400);
    await verify(receivingId, JSON.stringify({ sha256: "0".repeat(64) }), 409);

    await conforming({ method: "DELETE", path: `/api/v1/carves/${notTar.carveId}`, token: ADMIN }, 200);
    await conforming({ method: "DELETE", path: `/api/v1/carves/${notTar.carveId}`, token: ADMIN }, 404);
    await conforming({ path: "/api/v1/audit", token: ADMIN }, 200);
    await conforming({ path: `/api/v1/audit?carve_id=${plain.carveId}&action=carve.download&limit=5`, token: ADMIN }, 200);
    await conforming({ path: "/api/v1/audit?cursor=forged", token: ADMIN }, 400);
    await conforming({ path: "/api/v1/audit", token: READER }, 403);
  });

  it("imports", async () => {
    const form = new FormData();
    form.append("source_host", "ws-1");
    form.append("file", new Blob([craftTar([{ name: "a.txt", content: "a" }])]), "evidence.tar");
    const created = await conforming({ method: "POST", path: "/api/v1/carves/import", token: IMPORTER, body: form }, 201);
    expect(created.headers.get("location")).toMatch(/^\/api\/v1\/carves\//);
    await conforming({ method: "POST", path: "/api/v1/carves/import", token: IMPORTER, headers: { "content-type": "text/plain" }, body: "x" }, 415);
    const empty = new FormData();
    empty.append("source_host", "ws-1");
    await conforming({ method: "POST", path: "/api/v1/carves/import", token: IMPORTER, body: empty }, 400);
    await conforming({ method: "POST", path: "/api/v1/carves/import", token: READER, body: form }, 403);
  });

  it("covered every operation of the document with a success", () => {
    const missing = checker.operationIds().filter((id) => ![...(checker.seen.get(id) ?? [])].some((s) => s < 300));
    expect(missing).toEqual([]);
  });
});
