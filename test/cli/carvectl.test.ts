/**
 * carvectl, the built binary (dist/src/cli/carvectl.js), against a real listening service with the Vault
 * double: every command's output (JSON off a terminal, tables on one) and exit code, configuration (CARVE_ADDR,
 * VAULT_TOKEN, ~/.vault-token), one-line errors, and `get` broken off (by a proxy that cuts or stalls the
 * connection, and by Ctrl-C) then resumed to a byte-exact, verified file.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { buildCarveArchive } from "../../scripts/emulator/index.js";
import type { AuditPageView, CarveDetail, CarveList, FilesListingView } from "../../src/http/api-contract.js";
import { sha256 } from "../support/carve-data.js";
import { uploadCarve, type UploadedCarve } from "../support/carve-upload.js";
import { carvectl, carvectlOnTty, startCarvectl, type CliOptions } from "../support/carvectl.js";
import { startCuttingProxy, type CuttingProxy } from "../support/cutting-proxy.js";
import { freePort, startTestService, type TestService } from "../support/service.js";
import { craftTar } from "../support/tar-writer.js";
import { startVaultDouble, type VaultDouble } from "../support/vault-double.js";

let vault: VaultDouble;
let svc: TestService;
let proxy: CuttingProxy;
let work: string;
let home: string;
const READER = `hvs.CAESIcliReader${randomBytes(8).toString("hex")}`;
const ADMIN = `hvs.CAESIcliAdmin${randomBytes(8).toString("hex")}`;

let plain: UploadedCarve;
let compressed: UploadedCarve;
let big: UploadedCarve;
let withDir: UploadedCarve;
let receivingId: string;
const hosts = "127.0.0.1 localhost\n::1 localhost\n";
let blob: Buffer;

/** Runs carvectl as the reader (or `token`) against the service, in `cwd` (default: a fresh directory). */
async function cli(args: string[], options: CliOptions & { token?: string | null; addr?: string } = {}): ReturnType<typeof carvectl> {
  const env: Record<string, string> = { HOME: home, CARVE_ADDR: options.addr ?? svc.url, ...options.env };
  if (options.token !== null) env.VAULT_TOKEN = options.token ?? READER;
  return carvectl(args, { ...options, env, cwd: options.cwd ?? (await mkdtemp(path.join(work, "cwd-"))) });
}

beforeAll(async () => {
  expect(existsSync(path.join(import.meta.dirname, "../../dist/src/cli/carvectl.js")), "build first: bash scripts/build.sh").toBe(true);
  vault = await startVaultDouble();
  vault.addToken(READER, { policies: ["osquery-carve-download"], displayName: "ldap-alice" });
  vault.addToken(ADMIN, { policies: ["osquery-carve-admin", "osquery-carve-download"], displayName: "ldap-admin" });
  svc = await startTestService({ VAULT_ADDR: vault.url });
  proxy = await startCuttingProxy(svc.port);
  work = await mkdtemp(path.join(tmpdir(), "carvectl-"));
  home = path.join(work, "home");
  await mkdir(home);
  await mkdir(path.join(work, "src/etc"), { recursive: true });
  blob = randomBytes(300_000);
  await writeFile(path.join(work, "src/etc/hosts"), hosts);
  await writeFile(path.join(work, "src/blob.bin"), blob);
  const archive = async (paths: string[], compression: boolean): Promise<Buffer> => {
    const id = randomUUID();
    const built = await buildCarveArchive({ paths, carveId: id, outFile: path.join(work, `${id}.out`), paxTimes: true, compression });
    return readFile(built.path);
  };
  const two = [path.join(work, "src/etc/hosts"), path.join(work, "src/blob.bin")];
  plain = await uploadCarve(svc.url, await archive(two, false), { dir: work });
  compressed = await uploadCarve(svc.url, await archive(two, true), { dir: work });
  big = await uploadCarve(svc.url, randomBytes(6 * 1024 * 1024), { dir: work, blockSize: 1024 * 1024 });
  withDir = await uploadCarve(svc.url, craftTar([{ name: "d/", typeflag: "5" }, { name: "d/f", content: "f" }, { name: "d/f", content: "g" }]), { dir: work });
  receivingId = randomUUID();
  const start = { block_count: 2, block_size: 1024, carve_size: 2000, carve_id: receivingId, request_id: randomUUID(), node_key: "nk" };
  expect((await fetch(`${svc.url}/start_uploads`, { method: "POST", body: JSON.stringify(start) })).status).toBe(200);
}, 90_000);

afterAll(async () => {
  await proxy.close();
  await svc.dispose();
  await vault.close();
  await rm(work, { recursive: true, force: true });
});

describe("command line and configuration", () => {
  it("--help, --version, and usage errors (exit 2, one line, what to do)", async () => {
    const help = await cli(["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout.toString()).toContain("Exit codes:");
    expect((await cli(["--version"])).stdout.toString()).toMatch(/^carvectl \d+\.\d+\.\d+\n$/);
    for (const args of [[], ["frobnicate"], ["list", "--bogus"], ["show"], ["list", "--sha256", "x"], ["hold", plain.carveId], ["extract", plain.carveId], ["cat", plain.carveId], ["list", "--limit", "many"]]) {
      const r = await cli(args);
      expect(r.code, args.join(" ")).toBe(2);
      if (args.length > 0) expect(r.stderr.trim().split("\n"), args.join(" ")).toHaveLength(1);
      if (args.length > 0) expect(r.stderr).toMatch(/^carvectl: .+(--help|usage|carvectl |need|goes|give)/);
    }
  });

  it("takes the token from VAULT_TOKEN, else ~/.vault-token, and says what to do without one", async () => {
    const none = await cli(["list"], { token: null });
    expect(none.code).toBe(3);
    expect(none.stderr).toBe("carvectl: no Vault token: run `vault login` (it writes ~/.vault-token), or set VAULT_TOKEN\n");
    const fileHome = await mkdtemp(path.join(work, "home-"));
    await writeFile(path.join(fileHome, ".vault-token"), `${READER}\n`);
    const fromFile = await cli(["list"], { token: null, env: { HOME: fileHome } });
    expect(fromFile.code).toBe(0);
    const bad = await cli(["list"], { token: "hvs.CAESInot-a-known-token" });
    expect(bad.code).toBe(3);
    expect(bad.stderr).toMatch(/^carvectl: Vault does not accept the token .*vault login.* \(request [\w-]+\)\n$/);
    const denied = await cli(["audit"]);
    expect(denied.code).toBe(3);
    expect(denied.stderr).toMatch(/lacks the right .*osquery-carve-admin/);
  });

  it("reads CARVE_ADDR, and says when the service cannot be reached (exit 9)", async () => {
    const port = await freePort();
    const r = await cli(["list"], { addr: `http://127.0.0.1:${port}` });
    expect(r.code).toBe(9);
    expect(r.stderr).toMatch(new RegExp(`^carvectl: cannot reach http://127.0.0.1:${port}: .*check CARVE_ADDR`));
    expect((await cli(["list"], { addr: "ftp://x" })).code).toBe(2);
    expect((await cli(["list", "--ca-cert", "/nonexistent"], { addr: "https://127.0.0.1:1" })).code).toBe(2);
  });
});

describe("reading carves", () => {
  it("list: JSON off a terminal (filters pass through), a table on one", async () => {
    const r = await cli(["list"]);
    expect(r.code).toBe(0);
    const ids = r.json<CarveList>().carves.map((c) => c.carveId);
    expect(ids).toEqual(expect.arrayContaining([plain.carveId, compressed.carveId, receivingId]));
    const complete = (await cli(["list", "--status", "complete", "--json"])).json<CarveList>();
    expect(complete.carves.every((c) => c.status === "complete")).toBe(true);
    expect(complete.carves.map((c) => c.carveId)).not.toContain(receivingId);
    const paged = (await cli(["list", "--limit", "1"])).json<CarveList>();
    expect(paged.carves).toHaveLength(1);
    expect(paged.nextCursor).not.toBeNull();
    expect((await cli(["list", "--limit", "1", "--all"])).json<CarveList>().carves.length).toBe(ids.length);
    const tty = await carvectlOnTty(["list"], { env: { HOME: home, CARVE_ADDR: svc.url, VAULT_TOKEN: READER } });
    expect(tty.code).toBe(0);
    const text = tty.stdout.toString();
    expect(text).toMatch(/^CARVE ID +STATUS +SIZE +BLOCKS/m);
    expect(text).toContain(`${plain.carveId}  complete`);
    expect(text).toMatch(new RegExp(`${receivingId} +receiving`));
    expect(await carvectlOnTty(["list", "--json"], { env: { HOME: home, CARVE_ADDR: svc.url, VAULT_TOKEN: READER } }).then((x) => x.stdout.toString())).toContain('"carves": [');
  });

  it("show and files: the API's JSON, or a summary and a table on a terminal; unknown ids exit 4", async () => {
    const detail = (await cli(["show", plain.carveId])).json<CarveDetail>();
    expect(detail).toMatchObject({ carveId: plain.carveId, status: "complete", sha256: plain.sha256 });
    const listing = (await cli(["files", compressed.carveId])).json<FilesListingView>();
    expect(listing.members.map((m) => m.path)).toEqual([path.join(work, "src/blob.bin"), path.join(work, "src/etc/hosts")]);
    const env = { HOME: home, CARVE_ADDR: svc.url, VAULT_TOKEN: READER };
    const shown = (await carvectlOnTty(["show", plain.carveId], { env })).stdout.toString();
    expect(shown).toMatch(/^status +complete\r?$/m);
    expect(shown).toContain(`sha256       ${plain.sha256}`);
    const table = (await carvectlOnTty(["files", plain.carveId], { env })).stdout.toString();
    expect(table).toMatch(/^# +TYPE +SIZE +MODE +MTIME +PATH +SHA256/m);
    expect(table).toContain(path.join(work, "src/etc/hosts"));
    const missing = await cli(["show", randomUUID()]);
    expect(missing.code).toBe(4);
    expect(missing.stderr).toMatch(/^carvectl: no such carve .*carvectl list/);
    expect((await cli(["files", receivingId])).code).toBe(5);
  });

  it("cat: one file's bytes to stdout, by host path, name or index, from plain and zstd archives", async () => {
    for (const c of [plain, compressed]) {
      const byPath = await cli(["cat", c.carveId, path.join(work, "src/blob.bin")]);
      expect(byPath.code, byPath.stderr).toBe(0);
      expect(byPath.stdout.equals(blob)).toBe(true);
      expect((await cli(["cat", c.carveId, "--index", "1"])).stdout.toString()).toBe(hosts);
    }
    const listing = (await cli(["files", plain.carveId])).json<FilesListingView>();
    expect((await cli(["cat", plain.carveId, listing.members[1]?.name ?? "?"])).stdout.toString()).toBe(hosts);
    expect((await cli(["cat", plain.carveId, "/no/such/file"])).code).toBe(4);
    expect((await cli(["cat", plain.carveId, "--index", "9"])).code).toBe(4);
    const dir = await cli(["cat", withDir.carveId, "--index", "0"]);
    expect(dir.code).toBe(5);
    expect(dir.stderr).toMatch(/is a directory/);
    const twice = await cli(["cat", withDir.carveId, "d/f"]);
    expect(twice.code).toBe(2);
    expect(twice.stderr).toMatch(/2 members are named "d\/f" \(#1, #2\): pick one with --index N/);
    expect((await cli(["cat", withDir.carveId, "--index", "2"])).stdout.toString()).toBe("g");
  });
});

describe("custody", () => {
  it("verify: exit 0 on a match, 6 on a mismatch, 2 for a malformed hash", async () => {
    const ok = await cli(["verify", plain.carveId, "--sha256", plain.sha256.toUpperCase()]);
    expect(ok.code).toBe(0);
    expect(ok.json()).toMatchObject({ match: true, storedSha256: plain.sha256 });
    const bad = await cli(["verify", plain.carveId, "--sha256", "0".repeat(64)]);
    expect(bad.code).toBe(6);
    expect(bad.json()).toMatchObject({ match: false });
    expect((await cli(["verify", plain.carveId, "--sha256", "abc"])).code).toBe(2);
    expect((await cli(["verify", plain.carveId, "--sha256=-1"])).code).toBe(5);
  });

  it("hold and release (admin), a second hold exits 5, the reader is refused (3); audit shows it all", async () => {
    const held = await cli(["hold", compressed.carveId, "--reason", "case 7"], { token: ADMIN });
    expect(held.code, held.stderr).toBe(0);
    expect(held.json()).toMatchObject({ carveId: compressed.carveId, hold: { reason: "case 7", by: "ldap-admin" } });
    const again = await cli(["hold", compressed.carveId, "--reason", "again"], { token: ADMIN });
    expect(again.code).toBe(5);
    expect(again.stderr).toMatch(/already under legal hold.*placed by ldap-admin/);
    expect((await cli(["release", compressed.carveId])).code).toBe(3);
    const released = await cli(["release", compressed.carveId], { token: ADMIN });
    expect(released.json()).toMatchObject({ hold: null });
    const events = (await cli(["audit", "--carve", compressed.carveId, "--limit", "50"], { token: ADMIN })).json<AuditPageView>().events;
    expect(events.map((e) => e.action)).toEqual(expect.arrayContaining(["carve.hold", "carve.release"]));
    const tty = await carvectlOnTty(["audit", "--carve", compressed.carveId, "--action", "carve.hold"], { env: { HOME: home, CARVE_ADDR: svc.url, VAULT_TOKEN: ADMIN } });
    expect(tty.stdout.toString()).toMatch(/^AT +ACTION +RESULT +ACTOR +CARVE/m);
    expect(tty.stdout.toString()).toMatch(/carve\.hold +allowed +ldap-admin/);
  });
});

describe("get", () => {
  it("downloads the archive under its own name, verified; refuses to overwrite without --force", async () => {
    const cwd = await mkdtemp(path.join(work, "get-"));
    const r = await cli(["get", compressed.carveId], { cwd });
    expect(r.code, r.stderr).toBe(0);
    expect(r.json()).toMatchObject({ file: `${compressed.carveId}.tar.zst`, verified: true, sha256: compressed.sha256, resumedFrom: 0 });
    expect((await readFile(path.join(cwd, `${compressed.carveId}.tar.zst`))).equals(compressed.bytes)).toBe(true);
    const again = await cli(["get", compressed.carveId], { cwd });
    expect(again.code).toBe(7);
    expect(again.stderr).toBe(`carvectl: ${compressed.carveId}.tar.zst exists: pass --force to replace it, or -o another file\n`);
    await writeFile(path.join(cwd, "other.tar"), "old");
    expect((await cli(["get", plain.carveId, "-o", "other.tar", "--force"], { cwd })).code).toBe(0);
    expect((await readFile(path.join(cwd, "other.tar"))).equals(plain.bytes)).toBe(true);
    const piped = await cli(["get", plain.carveId, "-o", "-"], { cwd });
    expect(piped.stdout.equals(plain.bytes)).toBe(true);
    expect((await cli(["get", receivingId], { cwd })).code).toBe(5);
    const tty = await carvectlOnTty(["get", big.carveId, "-o", "big.bin"], { cwd, env: { HOME: home, CARVE_ADDR: svc.url, VAULT_TOKEN: READER } });
    expect(tty.stdout.toString()).toMatch(/big\.bin: 6\.0 MiB \/ 6\.0 MiB 100%/);
    expect(tty.stdout.toString()).toMatch(/saved big\.bin: 6\.0 MiB, SHA-256 [0-9a-f]{64} verified/);
  });

  it("broken off by the network: exit 9, the .part kept; run again: resumed with Range, byte-exact, verified", async () => {
    const cwd = await mkdtemp(path.join(work, "resume-"));
    proxy.cut(1024 * 1024);
    const broken = await cli(["get", big.carveId, "-o", "big.bin"], { cwd, addr: proxy.url });
    proxy.pass();
    expect(broken.code, broken.stderr).toBe(9);
    expect(broken.stderr).toMatch(/^carvectl: the download broke off at \d+ of 6291456 bytes: big\.bin\.part is kept; run the same command again to resume\n$/);
    const partial = (await stat(path.join(cwd, "big.bin.part"))).size;
    expect(partial).toBeGreaterThan(0);
    expect(partial).toBeLessThan(big.bytes.length);
    expect(existsSync(path.join(cwd, "big.bin"))).toBe(false);

    const resumed = await cli(["get", big.carveId, "-o", "big.bin"], { cwd, addr: proxy.url });
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.json()).toMatchObject({ verified: true, resumedFrom: partial });
    expect(sha256(await readFile(path.join(cwd, "big.bin")))).toBe(big.sha256);
    expect(existsSync(path.join(cwd, "big.bin.part"))).toBe(false);
    const events = (await cli(["audit", "--carve", big.carveId, "--action", "carve.download"], { token: ADMIN })).json<AuditPageView>().events;
    expect(events[0]?.detail).toMatchObject({ rangeStart: partial, rangeEnd: big.bytes.length - 1, completed: true, status: 206 });
  });

  it("interrupted with Ctrl-C: exit 130, the .part kept; resumed byte-exact; a .part of another archive is replaced", async () => {
    const cwd = await mkdtemp(path.join(work, "sigint-"));
    proxy.stall(2 * 1024 * 1024);
    const run = startCarvectl(["get", big.carveId, "-o", "big.bin"], { cwd, env: { HOME: home, CARVE_ADDR: proxy.url, VAULT_TOKEN: READER } });
    const part = path.join(cwd, "big.bin.part");
    const deadline = Date.now() + 10_000;
    while (!existsSync(part) || (await stat(part)).size < 1024 * 1024) {
      if (Date.now() > deadline) throw new Error("the download never started");
      await sleep(20);
    }
    run.proc.kill("SIGINT");
    const stopped = await run.done;
    proxy.pass();
    expect(stopped.code).toBe(130);
    expect(stopped.stderr).toMatch(/^carvectl: interrupted at \d+ of 6291456 bytes: big\.bin\.part is kept; run the same command again to resume\n$/);
    const resumed = await cli(["get", big.carveId, "-o", "big.bin"], { cwd });
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.json<{ resumedFrom: number }>().resumedFrom).toBeGreaterThan(0);
    expect((await readFile(path.join(cwd, "big.bin"))).equals(big.bytes)).toBe(true);

    // A .part that is not a prefix of this archive: the resumed bytes would not verify; the server's
    // If-Range check cannot see it (same archive), so the SHA-256 check does: exit 6, .part removed.
    await writeFile(path.join(cwd, "again.bin.part"), randomBytes(1000));
    const wrong = await cli(["get", big.carveId, "-o", "again.bin"], { cwd });
    expect(wrong.code).toBe(6);
    expect(wrong.stderr).toMatch(/the partial file was removed; run the command again/);
    expect(existsSync(path.join(cwd, "again.bin.part"))).toBe(false);
    expect((await cli(["get", big.carveId, "-o", "again.bin"], { cwd })).code).toBe(0);
    expect(sha256(await readFile(path.join(cwd, "again.bin")))).toBe(big.sha256);
  });
});

describe("on a GridFS-backed service", () => {
  it("get breaks off and resumes byte-exact, cat and extract give the same bytes", async () => {
    const gridfs = await startTestService({
      VAULT_ADDR: vault.url,
      CARVE_STORAGE: "gridfs",
      CARVE_MONGODB_URI: inject("mongoUri"),
      CARVE_MONGODB_DATABASE: `carvectl_${randomBytes(4).toString("hex")}`,
    });
    const front = await startCuttingProxy(gridfs.port);
    try {
      const carve = await uploadCarve(gridfs.url, big.bytes, { dir: work, blockSize: 1024 * 1024 });
      const zst = await uploadCarve(gridfs.url, compressed.bytes, { dir: work });
      const cwd = await mkdtemp(path.join(work, "gridfs-"));
      front.cut(1024 * 1024);
      const broken = await cli(["get", carve.carveId, "-o", "big.bin"], { cwd, addr: front.url });
      front.pass();
      expect(broken.code, broken.stderr).toBe(9);
      const resumed = await cli(["get", carve.carveId, "-o", "big.bin"], { cwd, addr: front.url });
      expect(resumed.code, resumed.stderr).toBe(0);
      expect(resumed.json<{ resumedFrom: number }>().resumedFrom).toBeGreaterThan(0);
      expect((await readFile(path.join(cwd, "big.bin"))).equals(big.bytes)).toBe(true);
      expect((await cli(["cat", zst.carveId, path.join(work, "src/blob.bin")], { addr: gridfs.url })).stdout.equals(blob)).toBe(true);
      const extracted = await cli(["extract", zst.carveId, "--dest", path.join(cwd, "x")], { addr: gridfs.url });
      expect(extracted.code, extracted.stderr).toBe(0);
      expect((await readFile(path.join(cwd, "x", work, "src/blob.bin"))).equals(blob)).toBe(true);
    } finally {
      await front.close();
      await gridfs.dispose();
    }
  });
});
