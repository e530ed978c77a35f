/**
 * GET /api/v1/carves/{carve_id}/files/{n} on a real listening service: member n's bytes out of plain and
 * zstd archives (the emulator's osquery archives and crafted ones), its SHA-256 in X-Content-SHA256 and
 * Repr-Digest, a Content-Disposition that is safe whatever the member's name, HEAD, the audit event of a
 * complete and of an aborted download, and a download cut short when the stored bytes no longer match.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { buildCarveArchive } from "../../scripts/emulator/index.js";
import { ERROR_CODES } from "../../src/errors.js";
import type { AuditPageView, FilesListingView } from "../../src/http/api-contract.js";
import { sha256 } from "../support/carve-data.js";
import { CUT_SHORT, readToEnd } from "../support/raw-http.js";
import { uploadCarve, type UploadedCarve } from "../support/carve-upload.js";
import { startTestService, type TestService } from "../support/service.js";
import { craftTar, zstd } from "../support/tar-writer.js";
import { startVaultDouble, type VaultDouble } from "../support/vault-double.js";

let vault: VaultDouble;
let svc: TestService;
let work: string;
const READER = `hvs.CAESImember${randomBytes(8).toString("hex")}`;
const ADMIN = `hvs.CAESImemberAdmin${randomBytes(8).toString("hex")}`;
let contents: Buffer[];
let plain: UploadedCarve;
let compressed: UploadedCarve;

beforeAll(async () => {
  vault = await startVaultDouble();
  vault.addToken(READER, { policies: ["osquery-carve-download"], displayName: "ldap-carol" });
  vault.addToken(ADMIN, { policies: ["osquery-carve-admin"], displayName: "ldap-admin" });
  svc = await startTestService({ VAULT_ADDR: vault.url });
  work = await mkdtemp(path.join(tmpdir(), "member-"));
  await mkdir(path.join(work, "src"));
  contents = [randomBytes(1_500_000), Buffer.alloc(0), Buffer.from("a small file\n")];
  const files = ["a.bin", "b.empty", "c.txt"].map((f) => path.join(work, "src", f));
  for (const [i, f] of files.entries()) await writeFile(f, contents[i] as Buffer);
  for (const compression of [false, true]) {
    const id = randomUUID();
    const built = await buildCarveArchive({ paths: files, carveId: id, outFile: path.join(work, `${id}.out`), compression, paxTimes: true });
    const carve = await uploadCarve(svc.url, await readFile(built.path), { dir: work });
    if (compression) compressed = carve;
    else plain = carve;
  }
}, 60_000);

afterAll(async () => {
  await svc.dispose();
  await vault.close();
  await rm(work, { recursive: true, force: true });
});

const get = (p: string, init: RequestInit = {}): Promise<Response> => fetch(`${svc.url}${p}`, { ...init, headers: { "X-Vault-Token": READER, ...init.headers } });

async function lastDownload(carveId: string): Promise<Record<string, unknown>> {
  const deadline = Date.now() + 30_000; // generous: the event is written after the response ends
  for (;;) {
    const res = await fetch(`${svc.url}/api/v1/audit?carve_id=${carveId}&action=carve.download&limit=1`, { headers: { "X-Vault-Token": ADMIN } });
    const page = (await res.json()) as AuditPageView;
    const e = page.events[0];
    if (e && e.detail.format === "member") return e.detail;
    if (Date.now() > deadline) throw new Error("no audit event");
    await sleep(25);
  }
}

describe("single-file download", () => {
  it("equals the member's bytes, for plain and zstd archives, with its SHA-256 and size up front", async () => {
    for (const carve of [plain, compressed]) {
      const listing = (await (await get(`/api/v1/carves/${carve.carveId}/files`)).json()) as FilesListingView;
      expect(listing.members.map((m) => path.basename(m.name))).toEqual(["a.bin", "b.empty", "c.txt"]);
      for (const [n, content] of contents.entries()) {
        const res = await get(`/api/v1/carves/${carve.carveId}/files/${n}`);
        expect(res.status).toBe(200);
        const body = Buffer.from(await res.arrayBuffer());
        expect(body.equals(content), `member ${n} of ${carve.carveId}`).toBe(true);
        expect(res.headers.get("x-content-sha256")).toBe(sha256(content));
        expect(res.headers.get("x-content-sha256")).toBe(listing.members[n]?.sha256);
        expect(res.headers.get("repr-digest")).toBe(`sha-256=:${createHash("sha256").update(content).digest("base64")}:`);
        expect(res.headers.get("content-length")).toBe(String(content.length));
        expect(res.headers.get("content-type")).toBe("application/octet-stream");
        expect(res.headers.get("content-disposition")).toBe(`attachment; filename="${path.basename(listing.members[n]?.name ?? "")}"; filename*=UTF-8''${path.basename(listing.members[n]?.name ?? "")}`);
        expect(res.headers.get("cache-control")).toBe("no-store");
      }
      expect(await lastDownload(carve.carveId)).toMatchObject({ member: 2, bytesSent: contents[2]?.length, completed: true, memberSha256: sha256(contents[2] as Buffer), status: 200 });
    }
  });

  it("answers HEAD with the same headers and no body", async () => {
    const res = await get(`/api/v1/carves/${compressed.carveId}/files/0`, { method: "HEAD" });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-length")).toBe(String(contents[0]?.length));
    expect(res.headers.get("x-content-sha256")).toBe(sha256(contents[0] as Buffer));
    expect((await res.arrayBuffer()).byteLength).toBe(0);
  });

  it("proposes a safe file name whatever the member is called", async () => {
    const names = ['dir/we"ird\nname;.txt', "dir/résumé.pdf", "dir/..", "dir/$(rm -rf)", "\u202eexe.txt"];
    const carve = await uploadCarve(svc.url, zstd(craftTar(names.map((name) => ({ name, content: name, pax: true })))), { dir: work });
    const got: string[] = [];
    for (const [n, name] of names.entries()) {
      const res = await get(`/api/v1/carves/${carve.carveId}/files/${n}`);
      expect(Buffer.from(await res.arrayBuffer()).toString()).toBe(name);
      got.push(res.headers.get("content-disposition") ?? "");
    }
    expect(got).toEqual([
      `attachment; filename="we_irdname_.txt"; filename*=UTF-8''we%22irdname%3B.txt`,
      `attachment; filename="r_sum_.pdf"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf`,
      `attachment; filename="member-2"; filename*=UTF-8''member-2`,
      `attachment; filename="__rm_-rf_"; filename*=UTF-8''$%28rm%20-rf%29`,
      `attachment; filename="exe.txt"; filename*=UTF-8''exe.txt`,
    ]);
  });

  it("audits a download the client abandons as not completed", async () => {
    const big = randomBytes(40 * 1024 * 1024);
    const carve = await uploadCarve(svc.url, craftTar([{ name: "big.bin", content: big }]), { dir: work, blockSize: 4 * 1024 * 1024 });
    expect((await get(`/api/v1/carves/${carve.carveId}/files`)).status).toBe(200);
    const controller = new AbortController();
    const res = await get(`/api/v1/carves/${carve.carveId}/files/0`, { signal: controller.signal });
    const reader = res.body?.getReader();
    await reader?.read();
    controller.abort();
    await reader?.cancel().catch(() => undefined);
    const detail = await lastDownload(carve.carveId);
    expect(detail).toMatchObject({ completed: false, aborted: true });
    expect(detail.bytesSent as number).toBeLessThan(big.length);
  });

  it("cuts the download short of Content-Length when the stored bytes no longer match the listing", async () => {
    const content = randomBytes(300_000);
    const carve = await uploadCarve(svc.url, craftTar([{ name: "f.bin", content }]), { dir: work });
    expect((await get(`/api/v1/carves/${carve.carveId}/files`)).status).toBe(200); // listing cached
    const fh = await open(path.join(svc.dataDir, "carves", `${carve.carveId}.tar`), "r+");
    await fh.write(Buffer.from([(content[1000] ?? 0) ^ 0xff]), 0, 1, 512 + 1000);
    await fh.close();
    const res = await get(`/api/v1/carves/${carve.carveId}/files/0`);
    expect(res.status).toBe(200);
    expect(res.headers.get("x-content-sha256")).toBe(sha256(content));
    const got = await readToEnd(res);
    expect(got.cut, "cut short of Content-Length, not a whole-looking body").toBe(CUT_SHORT);
    expect(got.bytes).toBeLessThan(content.length);
    expect(await lastDownload(carve.carveId)).toMatchObject({ completed: false, integrity: "mismatch" });
  });

  it("refuses what has no content: out of range, not a number, a directory", async () => {
    const carve = await uploadCarve(svc.url, craftTar([{ name: "d/", typeflag: "5" }, { name: "l", typeflag: "2", linkTarget: "d" }]), { dir: work });
    const codeOf = async (p: string): Promise<[number, string]> => {
      const res = await get(p);
      return [res.status, ((await res.json()) as { error: { code: string } }).error.code];
    };
    expect(await codeOf(`/api/v1/carves/${carve.carveId}/files/0`)).toEqual([422, "MEMBER_NOT_A_FILE"]);
    expect(await codeOf(`/api/v1/carves/${carve.carveId}/files/1`)).toEqual([422, "MEMBER_NOT_A_FILE"]);
    expect(await codeOf(`/api/v1/carves/${carve.carveId}/files/2`)).toEqual([404, "MEMBER_NOT_FOUND"]);
    expect(await codeOf(`/api/v1/carves/${carve.carveId}/files/-1`)).toEqual([404, "MEMBER_NOT_FOUND"]);
    expect(await codeOf(`/api/v1/carves/${carve.carveId}/files/1e3`)).toEqual([404, "MEMBER_NOT_FOUND"]);
  });

  it("is documented: docs/responder-api.md lists its error codes with their statuses", async () => {
    const doc = await readFile(path.join(import.meta.dirname, "../../docs/responder-api.md"), "utf8");
    for (const code of ["MEMBER_NOT_FOUND", "MEMBER_NOT_A_FILE"] as const) expect(doc, code).toContain(`| \`${code}\` | ${ERROR_CODES[code].status} |`);
  });
});

describe("single-file download on the GridFS backend", () => {
  it("equals the member's bytes for plain and zstd archives", async () => {
    const gridfs = await startTestService({
      VAULT_ADDR: vault.url,
      CARVE_STORAGE: "gridfs",
      CARVE_MONGODB_URI: inject("mongoUri"),
      CARVE_MONGODB_DATABASE: `member_${randomBytes(4).toString("hex")}`,
    });
    try {
      for (const source of [plain, compressed]) {
        const carve = await uploadCarve(gridfs.url, source.bytes, { dir: work });
        for (const [n, content] of contents.entries()) {
          const res = await fetch(`${gridfs.url}/api/v1/carves/${carve.carveId}/files/${n}`, { headers: { "X-Vault-Token": READER } });
          expect(res.status).toBe(200);
          expect(Buffer.from(await res.arrayBuffer()).equals(content), `member ${n}`).toBe(true);
          expect(res.headers.get("x-content-sha256")).toBe(sha256(content));
        }
      }
    } finally {
      await gridfs.dispose();
    }
  });
});
