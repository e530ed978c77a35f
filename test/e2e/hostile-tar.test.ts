/**
 * Issue 15 items 1 and 2: crafted archives that an agent can upload must not exhaust memory, nor hold the
 * event loop, when a responder lists their files. Each is carved through the agent protocol into a real
 * listening service, then listed through the responder API: the listing stops at a bound and says which, and
 * the service keeps answering meanwhile.
 */
import { spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { createHash, randomBytes, randomUUID } from "node:crypto";
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
const READER = `hvs.reader${randomBytes(8).toString("hex")}`;

/** One 512-byte ustar header with a valid checksum. */
function header(name: string, size: number, typeflag: string): Buffer {
  const h = Buffer.alloc(512);
  h.write(name.slice(0, 99), 0, "utf8");
  h.write("0000644\0", 100, "latin1");
  h.write("0000000\0", 108, "latin1");
  h.write("0000000\0", 116, "latin1");
  h.write(`${size.toString(8).padStart(11, "0")}\0`, 124, "latin1");
  h.write("14000000000\0", 136, "latin1");
  h.write(typeflag, 156, "latin1");
  h.write("ustar\x0000", 257, "latin1");
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "latin1");
  return h;
}

const pad = (n: number): Buffer => Buffer.alloc((512 - (n % 512)) % 512);

/** A pax record "<len> key=value\n" (the length counts itself). */
function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len++;
  return `${len}${body}`;
}

function extended(typeflag: "x" | "g", records: string): Buffer {
  const data = Buffer.from(records, "utf8");
  return Buffer.concat([header("PaxHeader", data.length, typeflag), data, pad(data.length)]);
}

function file(name: string, content: Buffer): Buffer {
  return Buffer.concat([header(name, content.length, "0"), content, pad(content.length)]);
}

const END = Buffer.alloc(1024);

function zstd(data: Buffer): Buffer {
  const r = spawnSync("zstd", ["-q", "-c", "-3"], { input: data, maxBuffer: 1024 ** 3 });
  if (r.status !== 0) throw new Error(`zstd failed: ${r.stderr.toString()}`);
  return r.stdout;
}

let r0Size = 0;

/** zstd of what `parts` yields, written to zstd with backpressure (the input may be gigabytes). */
async function zstdStreamed(parts: () => Iterable<Buffer>): Promise<Buffer> {
  const child = spawn("zstd", ["-q", "-c", "-1"], { stdio: ["pipe", "pipe", "inherit"] });
  const out: Buffer[] = [];
  child.stdout.on("data", (c: Buffer) => out.push(c));
  const done = new Promise<number | null>((resolve) => child.on("close", resolve));
  for (const part of parts()) {
    if (!child.stdin.write(part)) await once(child.stdin, "drain");
  }
  child.stdin.end();
  expect(await done).toBe(0);
  const all = Buffer.concat(out);
  r0Size = all.length;
  return all;
}

async function carve(archive: Buffer): Promise<string> {
  const p = path.join(work, `${randomUUID()}.bin`);
  await writeFile(p, archive);
  const result = await runCarve({ baseUrl: svc.url, startEndpoint: "/start_uploads", continueEndpoint: "/upload_blocks", archivePath: p, blockSize: 1024 * 1024 });
  expect(result.status).toBe("SUCCESS");
  return result.carveId;
}

interface Listing {
  memberCount: number;
  truncated: boolean;
  truncatedReason: string | null;
  endOfArchive: boolean;
  members: Array<{ name: string; type: string; size: number; sha256: string | null }>;
}

async function files(id: string): Promise<{ status: number; json: Listing }> {
  const res = await fetch(`${svc.url}/api/v1/carves/${id}/files`, { headers: { "x-vault-token": READER } });
  return { status: res.status, json: (await res.json()) as Listing };
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-hostile-tar-"));
  vault = await startVaultDouble();
  vault.addToken(READER, { policies: ["osquery-carve-download"], displayName: "ldap-alice" });
  // 256 MiB examined at most: the zstd bomb below expands to 1 GiB.
  svc = await startTestService({ VAULT_ADDR: vault.url, CARVE_LISTING_MAX_BYTES: "256MiB", LOG_LEVEL: "info" });
}, 60_000);
afterAll(async () => {
  await svc?.dispose();
  await vault?.close();
  await rm(work, { recursive: true, force: true });
});

describe("tar listing of hostile archives", () => {
  it("4,500 members whose pax path is 1 MB each: stops at the first, says why, and the service stays up", async () => {
    const huge = extended("x", paxRecord("path", "a".repeat(1024 * 1024)));
    // 4.7 GB of tar: streamed through zstd, never held whole.
    const id = await carve(
      await zstdStreamed(function* () {
        for (let i = 0; i < 4500; i++) {
          yield huge;
          yield file(`f${i}`, Buffer.from("x"));
        }
        yield END;
      }),
    );
    expect(r0Size).toBeLessThan(2 * 1024 * 1024);
    const r = await files(id);
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({ truncated: true, truncatedReason: "extended-header-too-large", memberCount: 0 });
    expect((await fetch(`${svc.url}/status`)).status).toBe(200);
    // The stop is in the audit trail like any listing (written once the reply is finished).
    const reasons = (): unknown[] =>
      svc.logs
        .entries()
        .filter((e) => (e.audit as { carveId?: string } | undefined)?.carveId === id)
        .map((e) => (e.audit as { detail: { truncatedReason?: string } }).detail.truncatedReason);
    for (const deadline = Date.now() + 30_000; reasons().length === 0 && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 50));
    expect(reasons()).toEqual(["extended-header-too-large"]);
  }, 120_000);

  it("4,500 members with 60 KB pax paths (each under the header bound): stops at the name-bytes bound", async () => {
    const parts: Buffer[] = [];
    for (let i = 0; i < 4500; i++) parts.push(extended("x", paxRecord("path", `${i}-${"n".repeat(60_000)}`)), file(`f${i}`, Buffer.from("x")));
    const id = await carve(zstd(Buffer.concat([...parts, END])));
    const r = await files(id);
    expect(r.status).toBe(200);
    expect(r.json.truncatedReason).toBe("max-name-bytes");
    expect(r.json.memberCount).toBeGreaterThan(0);
    expect(r.json.memberCount).toBeLessThan(4500);
    const listed = r.json.members.reduce((n, m) => n + m.name.length, 0);
    expect(listed).toBeLessThanOrEqual(16 * 1024 * 1024);
  }, 120_000);

  it("global pax headers with thousands of keys, then 2,000 members: stops at the pax-key bound", async () => {
    const parts: Buffer[] = [];
    for (let g = 0; g < 30; g++) {
      let records = "";
      for (let k = 0; k < 3000; k++) records += paxRecord(`k${g}.${k}`, "v");
      parts.push(extended("g", records));
    }
    for (let i = 0; i < 2000; i++) parts.push(file(`m${i}`, Buffer.from(String(i))));
    const id = await carve(zstd(Buffer.concat([...parts, END])));
    const r = await files(id);
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({ truncated: true, truncatedReason: "too-many-pax-keys" });
  }, 120_000);

  it("a global pax header of a few keys still applies to every member (looked up, not copied)", async () => {
    const parts: Buffer[] = [extended("g", paxRecord("uname", "root"))];
    for (let i = 0; i < 2000; i++) parts.push(file(`m${i}`, Buffer.from(String(i))));
    const id = await carve(Buffer.concat([...parts, END]));
    const r = await files(id);
    expect(r.json).toMatchObject({ truncated: false, truncatedReason: null, memberCount: 2000, endOfArchive: true });
    expect(r.json.members[1999]).toMatchObject({ name: "m1999", sha256: createHash("sha256").update("1999").digest("hex") });
  }, 120_000);

  it("a directory whose pax path is 60,000 slashes then x is listed (the trailing-slash strip is linear)", async () => {
    const name = `${"/".repeat(60_000)}x`;
    const id = await carve(Buffer.concat([extended("x", paxRecord("path", `${name}////`)), header("d", 0, "5"), END]));
    const r = await files(id);
    expect(r.status).toBe(200);
    expect(r.json.members).toEqual([expect.objectContaining({ name: `${name}/`, type: "directory" })]);
  }, 120_000);

  it("a zstd bomb (a few KB expanding to 1 GiB): stops at the bytes-examined bound, and /status answers while it is read", async () => {
    // A 1 GiB member of zeros, compressed in one go by zstd from a stream of zeros.
    const tarHead = header("zeros", 1024 ** 3, "0");
    const r0 = spawnSync("sh", ["-c", `{ cat; head -c ${1024 ** 3} /dev/zero; head -c 1024 /dev/zero; } | zstd -q -c -3`], {
      input: tarHead,
      maxBuffer: 64 * 1024 * 1024,
    });
    expect(r0.status).toBe(0);
    const bomb = r0.stdout;
    expect(bomb.length).toBeLessThan(1024 * 1024);
    const id = await carve(bomb);
    const listing = files(id);
    let listed = false;
    void listing.then(() => (listed = true));
    const statuses: number[] = [];
    while (!listed && statuses.length < 50) {
      statuses.push((await fetch(`${svc.url}/status`)).status);
    }
    const r = await listing;
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({ truncated: true, truncatedReason: "max-bytes-examined", memberCount: 0 });
    expect(statuses.every((s) => s === 200)).toBe(true);
    // The listing is kept: asked again, the same answer.
    expect((await files(id)).json).toEqual(r.json);
  }, 180_000);

  it("within the bound, a large zstd member is decompressed in slices: /status is answered before the listing ends", async () => {
    const size = 200 * 1024 * 1024;
    const r0 = spawnSync("sh", ["-c", `{ cat; head -c ${size} /dev/zero; head -c 1024 /dev/zero; } | zstd -q -c -3`], {
      input: header("zeros", size, "0"),
      maxBuffer: 64 * 1024 * 1024,
    });
    expect(r0.status).toBe(0);
    const id = await carve(r0.stdout);
    // /status is asked once the service has the listing request, so the answer shows it was not blocked
    const received = new Promise<void>((resolve) => {
      const onRequest = (req: { url?: string }): void => {
        if (!req.url?.includes(`/carves/${id}/files`)) return;
        svc.server.off("request", onRequest);
        resolve();
      };
      svc.server.on("request", onRequest);
    });
    let listed = false;
    const listing = files(id).then((r) => {
      listed = true;
      return r;
    });
    await received;
    const status = await fetch(`${svc.url}/status`);
    const answeredWhileListing = !listed;
    const r = await listing;
    expect(status.status).toBe(200);
    expect(r.json).toMatchObject({ truncated: false, memberCount: 1, members: [{ name: "zeros", size }] });
    expect(r.json.members[0]?.sha256).toBe(createHash("sha256").update(Buffer.alloc(size)).digest("hex"));
    expect(answeredWhileListing, "/status was answered while the listing was still running").toBe(true);
  }, 180_000);
});
