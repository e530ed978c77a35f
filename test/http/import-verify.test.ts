/**
 * Chain of custody (issue 10) against a real listening service and the Vault double, on both backends:
 *  - POST /api/v1/carves/import: multipart/form-data parsed by busboy as a stream straight into the store
 *    (bounded memory for a 256 MiB file), nothing kept when the file is cut at the size limit, when the client
 *    disconnects mid-file, when the expected hash differs or when the form is wrong (clear 400s);
 *  - POST /api/v1/carves/:carve_id/verify: the host's carves.sha256 compared and recorded;
 *  - both in listings, metadata and the audit trail, with who did them.
 * The multipart bodies are built here by hand and sent with http.request, so every byte and every part order
 * is under the test's control, and large bodies are generated on the fly, never held in memory.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import http from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { MongoClient } from "mongodb";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { buildCarveArchive, runCarve } from "../../scripts/emulator/index.js";
import { ERROR_CODES } from "../../src/errors.js";
import { sha256 } from "../support/carve-data.js";
import { peekEntries } from "../support/catalog-peek.js";
import { startTestService, type TestService } from "../support/service.js";
import { startVaultDouble, type VaultDouble } from "../support/vault-double.js";

interface AuditJson {
  action: string;
  result: string;
  actor: { displayName: string | null; entityId: string | null };
  carveId: string | null;
  detail: Record<string, string | number | boolean | null>;
}

interface CarveJson {
  carveId: string;
  status: string;
  origin: string;
  carveSize: number;
  sha256: string | null;
  compression: string | null;
  imported: {
    host: string | null;
    originalPath: string | null;
    description: string | null;
    importedBy: { displayName: string | null; entityId: string | null };
  } | null;
  verifications: Array<{ claimedSha256: string; match: boolean; by: string | null; at: string }>;
  lastVerification: { match: boolean; by: string | null; at: string; count: number } | null;
  archive: { url: string; filesUrl: string } | null;
}

/** The API's JSON replies, typed for assertions (each reply has only some of these). */
interface ApiJson extends CarveJson {
  error: { code: string; message: string };
  carves: CarveJson[];
  events: AuditJson[];
  members: Array<{ path: string | null; sha256: string | null; size: number }>;
  match: boolean;
  storedSha256: string | null;
  claimedSha256: string;
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  json: ApiJson;
}

type Part =
  | { name: string; value: string }
  | {
      name: string;
      filename?: string;
      contentType?: string;
      /** The file's bytes, or a generator of them (never all in memory) with their size. */
      data: Buffer | { chunks: () => AsyncIterable<Buffer> | Iterable<Buffer>; size: number };
    };

const CRLF = "\r\n";

/** A multipart/form-data body as `curl -F` writes it, part by part in the order given. */
function multipart(
  parts: Part[],
  boundary: string,
  options: { close?: boolean } = {},
): { body: () => AsyncGenerator<Buffer>; length: number } {
  const pieces: Array<Buffer | { chunks: () => AsyncIterable<Buffer> | Iterable<Buffer>; size: number }> = [];
  for (const part of parts) {
    let head = `--${boundary}${CRLF}Content-Disposition: form-data; name="${part.name}"`;
    if ("value" in part) {
      pieces.push(Buffer.from(`${head}${CRLF}${CRLF}${part.value}${CRLF}`, "utf8"));
      continue;
    }
    if (part.filename !== "") head += `; filename="${part.filename ?? "evidence.bin"}"`;
    head += `${CRLF}Content-Type: ${part.contentType ?? "application/octet-stream"}${CRLF}${CRLF}`;
    pieces.push(Buffer.from(head, "utf8"), part.data, Buffer.from(CRLF));
  }
  if (options.close !== false) pieces.push(Buffer.from(`--${boundary}--${CRLF}`));
  const length = pieces.reduce((n, p) => n + (Buffer.isBuffer(p) ? p.length : p.size), 0);
  return {
    length,
    body: async function* () {
      for (const p of pieces) {
        if (Buffer.isBuffer(p)) yield p;
        else yield* p.chunks();
      }
    },
  };
}

/**
 * POSTs a body with http.request, streaming it with backpressure. With `destroyAfter`, the socket is destroyed
 * once that many bytes were written and `beforeDestroy` resolved: the promise then rejects.
 */
async function post(
  url: string,
  options: {
    token?: string;
    contentType: string;
    body: () => AsyncIterable<Buffer>;
    length?: number;
    destroyAfter?: number;
    /** Awaited before the socket is destroyed (default: nothing). */
    beforeDestroy?: () => Promise<void>;
    headers?: Record<string, string>;
  },
): Promise<Reply> {
  const headers: Record<string, string> = { "content-type": options.contentType, ...options.headers };
  if (options.token !== undefined) headers["x-vault-token"] = options.token;
  if (options.length !== undefined) headers["content-length"] = String(options.length);
  const req = http.request(url, { method: "POST", headers, agent: false });
  const response = new Promise<http.IncomingMessage>((resolve, reject) => {
    req.once("response", resolve);
    req.once("error", reject);
  });
  const source = options.body();
  const limited = async function* (): AsyncGenerator<Buffer> {
    let sent = 0;
    for await (const chunk of source) {
      yield chunk;
      sent += chunk.length;
      if (options.destroyAfter !== undefined && sent >= options.destroyAfter) {
        await options.beforeDestroy?.();
        req.destroy(new Error("test: client gone mid-file"));
        return;
      }
    }
  };
  // A server that answers early (and drains the rest), or the destroy above, ends this on its own.
  // Byte mode: the client holds ~one chunk ahead of the socket (object mode would queue 16 chunks).
  const sending = pipeline(Readable.from(limited(), { objectMode: false }), req).catch(() => undefined);
  const res = await response;
  const chunks: Buffer[] = [];
  for await (const chunk of res as AsyncIterable<Buffer>) chunks.push(chunk);
  await sending;
  const text = Buffer.concat(chunks).toString("utf8");
  let json: ApiJson;
  try {
    json = JSON.parse(text) as ApiJson;
  } catch {
    json = {} as ApiJson;
  }
  return { status: res.statusCode ?? 0, headers: res.headers, json };
}

function importTo(
  svc: TestService,
  token: string | undefined,
  parts: Part[],
  options: { close?: boolean; destroyAfter?: number; beforeDestroy?: () => Promise<void> } = {},
): Promise<Reply> {
  const boundary = `----carveTest${randomBytes(8).toString("hex")}`;
  const { body, length } = multipart(parts, boundary, options);
  return post(`${svc.url}/api/v1/carves/import`, {
    ...(token !== undefined ? { token } : {}),
    contentType: `multipart/form-data; boundary=${boundary}`,
    body,
    // A client that disconnects never finishes a Content-Length body; the others say how long it is, as curl does.
    ...(options.destroyAfter === undefined ? { length } : {}),
    ...(options.destroyAfter !== undefined ? { destroyAfter: options.destroyAfter } : {}),
    ...(options.beforeDestroy ? { beforeDestroy: options.beforeDestroy } : {}),
  });
}

async function api(
  svc: TestService,
  p: string,
  token: string,
  init: { method?: string; body?: string; headers?: Record<string, string> } = {},
): Promise<Reply> {
  const res = await fetch(svc.url + p, {
    method: init.method ?? "GET",
    headers: { "x-vault-token": token, ...init.headers },
    ...(init.body !== undefined ? { body: init.body } : {}),
  });
  const text = await res.text();
  let json: ApiJson;
  try {
    json = JSON.parse(text) as ApiJson;
  } catch {
    json = {} as ApiJson;
  }
  return { status: res.status, headers: Object.fromEntries(res.headers), json };
}

const verifyOf = (svc: TestService, carveId: string, token: string, body: unknown): Promise<Reply> =>
  api(svc, `/api/v1/carves/${carveId}/verify`, token, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });

/** A file of `size` bytes made on the fly from one random block (each chunk a fresh buffer, as a socket gives). */
function generated(size: number, chunkSize = 1024 * 1024): { chunks: () => Generator<Buffer>; size: number } {
  const seed = randomBytes(chunkSize);
  return {
    size,
    chunks: function* () {
      for (let off = 0, i = 0; off < size; off += chunkSize, i++) {
        const chunk = Buffer.from(seed.subarray(0, Math.min(chunkSize, size - off)));
        if (chunk.length >= 4) chunk.writeUInt32BE(i, 0);
        yield chunk;
      }
    },
  };
}

function hashOf(chunks: Iterable<Buffer>): string {
  const h = createHash("sha256");
  for (const c of chunks) h.update(c);
  return h.digest("hex");
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

let vault: VaultDouble;
let work: string;
const IMPORTER = `hvs.importer${randomBytes(8).toString("hex")}`;
const READER = `hvs.reader${randomBytes(8).toString("hex")}`;
const ADMIN = `hvs.admin${randomBytes(8).toString("hex")}`;
const OUTSIDER = `hvs.outsider${randomBytes(8).toString("hex")}`;

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-import-"));
  vault = await startVaultDouble();
  vault.addToken(IMPORTER, {
    policies: ["osquery-carve-import", "osquery-carve-download"],
    displayName: "ldap-carol",
    entityId: "3e7a9c1b-5d24-4f8e-b6a0-2c9d7e1f5b38",
  });
  vault.addToken(READER, { policies: ["osquery-carve-download"], displayName: "ldap-alice", entityId: "7c2e5a9d-1b36-4d8f-a4e0-6b3c9f2d1e75" });
  vault.addToken(ADMIN, { policies: ["osquery-carve-admin", "osquery-carve-download"], displayName: "ldap-bob" });
  vault.addToken(OUTSIDER, { policies: ["some-other-team"], displayName: "ldap-eve" });
});

afterAll(async () => {
  await vault.close();
  await rm(work, { recursive: true, force: true });
});

interface Backend {
  name: "filesystem" | "gridfs";
  env: () => Record<string, string>;
  /** Everything the store holds for carves (not the audit trail): must not change when an import fails. */
  snapshot: (svc: TestService) => Promise<string[]>;
  /** Bytes of imports in progress already in storage (the filesystem's tmp/<random>.import, GridFS chunks). */
  importedSoFar: (svc: TestService) => Promise<number>;
}

const filesystem: Backend = {
  name: "filesystem",
  env: () => ({}),
  snapshot: async (svc) => {
    // catalog.sqlite's entries (an import's "importing" one included), then every file under the blob directories
    if (!existsSync(path.join(svc.dataDir, "catalog.sqlite"))) throw new Error(`no catalog.sqlite in ${svc.dataDir}`);
    const out = peekEntries(svc.dataDir).map((e) => `catalog/${e.carveId}:${e.state}`);
    for (const sub of ["carves", "sessions", "tmp"]) {
      const names = await readdir(path.join(svc.dataDir, sub), { recursive: true });
      out.push(...names.map((n) => `${sub}/${n}`));
    }
    return out.sort();
  },
  importedSoFar: async (svc) => {
    let total = 0;
    for (const name of await readdir(path.join(svc.dataDir, "tmp"))) {
      if (name.endsWith(".import")) total += (await stat(path.join(svc.dataDir, "tmp", name)).catch(() => ({ size: 0 }))).size;
    }
    return total;
  },
};

const gridfs: Backend = {
  name: "gridfs",
  env: () => ({
    CARVE_STORAGE: "gridfs",
    CARVE_MONGODB_URI: inject("mongoUri"),
    CARVE_MONGODB_DATABASE: `import_${randomBytes(4).toString("hex")}`,
  }),
  snapshot: async (svc) => {
    const client = await MongoClient.connect(inject("mongoUri"));
    try {
      const db = client.db(svc.config.storage.gridfs.database);
      const bucket = svc.config.storage.gridfs.bucket;
      const out: string[] = [];
      for (const name of [`${bucket}.carves`, `${bucket}.sessions`, `${bucket}.files`, `${bucket}.chunks`]) {
        const docs = await db
          .collection(name)
          .find({}, { projection: { _id: 1 } })
          .toArray();
        out.push(...docs.map((d) => `${name}/${String(d._id)}`));
      }
      return out.sort();
    } finally {
      await client.close();
    }
  },
  importedSoFar: async (svc) => {
    const client = await MongoClient.connect(inject("mongoUri"));
    try {
      const db = client.db(svc.config.storage.gridfs.database);
      const bucket = svc.config.storage.gridfs.bucket;
      const importing = await db.collection<{ sessionId: string }>(`${bucket}.carves`).find({ state: "importing" }).toArray();
      let total = 0;
      for (const s of importing) {
        const chunks = await db.collection(`${bucket}.chunks`).find({ files_id: s.sessionId }, { projection: { _id: 1 } }).toArray();
        total += chunks.length * 1024 * 1024; // IMPORT_CHUNK in src/storage/gridfs/gridfs-blobs.ts
      }
      return total;
    } finally {
      await client.close();
    }
  },
};

describe.each([filesystem, gridfs])("import and verify on the $name backend", (backend) => {
  let svc: TestService;
  /** The same backend with a 1 MiB import limit. */
  let small: TestService;

  beforeAll(async () => {
    svc = await startTestService({ VAULT_ADDR: vault.url, ...backend.env() });
    small = await startTestService({ VAULT_ADDR: vault.url, CARVE_MAX_IMPORT_SIZE: "1MiB", ...backend.env() });
  });
  afterAll(async () => {
    await svc.dispose();
    await small.dispose();
  });

  async function auditFor(target: TestService, query: string, match: (e: AuditJson) => boolean): Promise<AuditJson> {
    const deadline = Date.now() + 5000;
    for (;;) {
      const r = await api(target, `/api/v1/audit?${query}&limit=500`, ADMIN);
      const found = r.json.events.find(match);
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`no audit event matching for ${query}`);
      await sleep(25);
    }
  }

  /** Runs a failing import and checks the store kept nothing of it and the failure was audited. */
  async function keepsNothing(
    target: TestService,
    attempt: () => Promise<Reply>,
    code: string,
    status: number,
  ): Promise<AuditJson> {
    const before = await backend.snapshot(target);
    const r = await attempt();
    expect(r.status, JSON.stringify(r.json)).toBe(status);
    expect(r.json.error.code).toBe(code);
    expect(await backend.snapshot(target)).toEqual(before);
    return auditFor(target, "action=carve.import", (e) => e.detail.code === code && e.result === "error");
  }

  it("imports a real osquery tar: listed, described, audited, listable via /files and downloadable byte-exact", async () => {
    await mkdir(path.join(work, backend.name, "etc"), { recursive: true });
    const hosts = path.join(work, backend.name, "etc/hosts");
    const blob = path.join(work, backend.name, "blob.bin");
    await writeFile(hosts, "10.0.0.1 intranet\n");
    await writeFile(blob, randomBytes(150_000));
    const built = await buildCarveArchive({
      paths: [hosts, blob],
      paxTimes: true,
      carveId: randomUUID(),
      outFile: path.join(work, `${backend.name}-${randomUUID()}.tar`),
    });
    const tar = await readFile(built.path);

    const r = await importTo(svc, IMPORTER, [
      { name: "source_host", value: "ws-042.corp.example" },
      { name: "original_path", value: "/var/tmp/osquery_carve_failed.tar" },
      { name: "description", value: "Carve upload failed on the host;\ncopied by hand from ws-042 (ticket IR-17)." },
      { name: "sha256", value: built.sha256.toUpperCase() },
      { name: "file", filename: "ws-042.tar", contentType: "application/x-tar", data: tar },
    ]);
    expect(r.status, JSON.stringify(r.json)).toBe(201);
    const id = r.json.carveId;
    expect(id).toMatch(UUID);
    expect(r.headers.location).toBe(`/api/v1/carves/${id}`);
    const imported = {
      host: "ws-042.corp.example",
      originalPath: "/var/tmp/osquery_carve_failed.tar",
      description: "Carve upload failed on the host;\ncopied by hand from ws-042 (ticket IR-17).",
      importedBy: { displayName: "ldap-carol", entityId: "3e7a9c1b-5d24-4f8e-b6a0-2c9d7e1f5b38" },
    };
    expect(r.json).toMatchObject({
      carveId: id,
      status: "complete",
      origin: "import",
      carveSize: tar.length,
      sha256: built.sha256,
      compression: "none",
      imported,
      verifications: [],
      archive: { url: `/api/v1/carves/${id}/archive`, filesUrl: `/api/v1/carves/${id}/files` },
    });

    const list = await api(svc, "/api/v1/carves", READER);
    expect(list.json.carves.find((c) => c.carveId === id)).toMatchObject({
      origin: "import",
      status: "complete",
      sha256: built.sha256,
      lastVerification: null,
    });
    const meta = await api(svc, `/api/v1/carves/${id}`, READER);
    expect(meta.json).toMatchObject({ origin: "import", imported, verifications: [] });

    const files = await api(svc, `/api/v1/carves/${id}/files`, READER);
    expect(files.status).toBe(200);
    expect(files.json.members.map((m) => m.path).sort()).toEqual([blob, hosts].sort());
    const blobMember = files.json.members.find((m) => m.path === blob);
    expect(blobMember?.sha256).toBe(sha256(await readFile(blob)));

    const download = await fetch(`${svc.url}/api/v1/carves/${id}/archive`, { headers: { "x-vault-token": READER } });
    expect(download.status).toBe(200);
    expect(Buffer.from(await download.arrayBuffer()).equals(tar)).toBe(true);

    const event = await auditFor(svc, `carve_id=${id}`, (e) => e.action === "carve.import");
    expect(event).toMatchObject({
      result: "allowed",
      actor: { displayName: "ldap-carol", entityId: "3e7a9c1b-5d24-4f8e-b6a0-2c9d7e1f5b38" },
      carveId: id,
      detail: {
        size: tar.length,
        sha256: built.sha256,
        sourceHost: "ws-042.corp.example",
        fileName: "ws-042.tar",
        status: 201,
      },
    });
  });

  it("imports a zstd-compressed carve as such (detected by its magic number), without any optional field", async () => {
    const file = path.join(work, `${backend.name}-z.bin`);
    await writeFile(file, "zstd me\n".repeat(5000));
    const built = await buildCarveArchive({
      paths: [file],
      compression: true,
      carveId: randomUUID(),
      outFile: path.join(work, `${randomUUID()}.tar.zst`),
    });
    const r = await importTo(svc, IMPORTER, [{ name: "file", data: await readFile(built.path) }]);
    expect(r.status, JSON.stringify(r.json)).toBe(201);
    expect(r.json).toMatchObject({
      compression: "zstd",
      sha256: built.sha256,
      imported: { host: null, originalPath: null, description: null, importedBy: { displayName: "ldap-carol" } },
    });
    const listing = await api(svc, `/api/v1/carves/${r.json.carveId}/files`, READER);
    expect(listing.json.members.map((m) => m.path)).toEqual([file]);
  });

  it("streams a 256 MiB file into storage as it arrives, not after holding it", async () => {
    const size = 256 * 1024 * 1024;
    const file = generated(size, 256 * 1024);
    const expected = hashOf(file.chunks());
    // Halfway, the client stops sending until storage holds nearly all it sent: a service that collected the
    // file before storing it would never get there. (Its memory is measured by `npm run bench`.)
    const half = size / 2;
    let storedAtHalf = -1;
    const paused = {
      size,
      chunks: async function* (): AsyncGenerator<Buffer> {
        let sent = 0;
        for (const chunk of file.chunks()) {
          yield chunk;
          sent += chunk.length;
          if (sent === half) {
            const deadline = Date.now() + 60_000;
            do {
              storedAtHalf = await backend.importedSoFar(svc);
              if (storedAtHalf >= half - 16 * 1024 * 1024) break;
              await sleep(50);
            } while (Date.now() < deadline);
          }
        }
      },
    };
    const r = await importTo(svc, IMPORTER, [
      { name: "source_host", value: "fileserver-3" },
      { name: "sha256", value: expected },
      { name: "file", filename: "disk-image-part.bin", data: paused },
    ]);
    expect(r.status, JSON.stringify(r.json)).toBe(201);
    expect(r.json).toMatchObject({ carveSize: size, sha256: expected, origin: "import" });
    expect(storedAtHalf, "bytes in storage while the client waited with half the file sent").toBeGreaterThanOrEqual(half - 16 * 1024 * 1024);

    const res = await fetch(`${svc.url}/api/v1/carves/${r.json.carveId}/archive`, {
      headers: { "x-vault-token": READER },
    });
    const h = createHash("sha256");
    let got = 0;
    for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
      h.update(chunk);
      got += chunk.length;
    }
    expect(got).toBe(size);
    expect(h.digest("hex")).toBe(expected);
    expect((await api(svc, `/api/v1/carves/${r.json.carveId}`, ADMIN, { method: "DELETE" })).status).toBe(200);
  });

  it("takes a file of exactly the limit, and keeps nothing of a larger one (413), whoever cuts it", async () => {
    const limit = 1024 * 1024;
    const exact = randomBytes(limit);
    const ok = await importTo(small, IMPORTER, [{ name: "file", data: exact }]);
    expect(ok.status, JSON.stringify(ok.json)).toBe(201);
    expect(ok.json.sha256).toBe(sha256(exact));
    // One byte over: the store's own count refuses it. Far over: busboy's fileSize limit cuts the stream
    // (it would then END it normally) and the import is failed on its `limit` event.
    await keepsNothing(
      small,
      () => importTo(small, IMPORTER, [{ name: "file", data: randomBytes(limit + 1) }]),
      "IMPORT_TOO_LARGE",
      413,
    );
    const audit = await keepsNothing(
      small,
      () =>
        importTo(small, IMPORTER, [
          { name: "description", value: "too big" },
          { name: "file", data: generated(8 * limit, 64 * 1024) },
        ]),
      "IMPORT_TOO_LARGE",
      413,
    );
    expect(audit.actor.displayName).toBe("ldap-carol");
    // The connection drained: the service still answers on it and in general.
    expect((await importTo(small, IMPORTER, [{ name: "file", data: randomBytes(10) }])).status).toBe(201);
  });

  it("keeps nothing of an upload whose client disconnects mid-file", async () => {
    const before = await backend.snapshot(svc);
    const attempt = importTo(
      svc,
      IMPORTER,
      [
        { name: "source_host", value: "gone-host" },
        { name: "file", data: generated(64 * 1024 * 1024) },
      ],
      {
        destroyAfter: 6 * 1024 * 1024,
        // Mid-file for sure: part of the file is in storage when the client goes.
        beforeDestroy: async () => {
          const deadline = Date.now() + 60_000;
          while ((await backend.importedSoFar(svc)) < 1024 * 1024) {
            if (Date.now() > deadline) throw new Error("nothing of the file reached storage within 60 s");
            await sleep(20);
          }
        },
      },
    );
    const outcome = await attempt.then(
      (r) => `answered ${r.status} ${JSON.stringify(r.json)}`,
      (e: Error) => e.message,
    );
    // The client side of the cut: its own destroy, not an answer from the service.
    expect(outcome).toBe("test: client gone mid-file");
    const event = await auditFor(svc, "action=carve.import", (e) => e.detail.sourceHost === "gone-host");
    expect(event).toMatchObject({ result: "error", detail: { code: "IMPORT_ABORTED" } });
    expect(event.detail.bytesReceived).toBeGreaterThan(1024 * 1024);
    expect(await backend.snapshot(svc)).toEqual(before);
  });

  it("keeps nothing when the file does not match the expected sha256 (422)", async () => {
    const bytes = randomBytes(300_000);
    const audit = await keepsNothing(
      svc,
      () =>
        importTo(svc, IMPORTER, [
          { name: "sha256", value: sha256(Buffer.from("something else")) },
          { name: "file", data: bytes },
        ]),
      "IMPORT_HASH_MISMATCH",
      422,
    );
    expect(audit.detail.expectedSha256).toBe(sha256(Buffer.from("something else")));
  });

  it("answers wrong forms with clear 400s and keeps nothing", async () => {
    const data = randomBytes(20_000);
    const cases: Array<[string, Part[], string, { close?: boolean }?]> = [
      ["no file part", [{ name: "source_host", value: "h" }], "IMPORT_FILE_MISSING"],
      [
        "two file parts",
        [
          { name: "file", data },
          { name: "file", filename: "second.bin", data },
        ],
        "IMPORT_TOO_MANY_FILES",
      ],
      [
        "a field after the file",
        [
          { name: "file", data },
          { name: "description", value: "late" },
        ],
        "IMPORT_FIELD_AFTER_FILE",
      ],
      [
        "an unknown field",
        [
          { name: "source-host", value: "typo" },
          { name: "file", data },
        ],
        "IMPORT_UNKNOWN_FIELD",
      ],
      ["a file part under another name", [{ name: "archive", data }], "IMPORT_UNKNOWN_FIELD"],
      ["the file sent as a plain field", [{ name: "file", value: "/path/to/evidence.tar" }], "IMPORT_FIELD_INVALID"],
      [
        "a field given twice",
        [
          { name: "source_host", value: "a" },
          { name: "source_host", value: "b" },
          { name: "file", data },
        ],
        "IMPORT_FIELD_INVALID",
      ],
      [
        "an oversized field",
        [
          { name: "description", value: "x".repeat(4001) },
          { name: "file", data },
        ],
        "IMPORT_FIELD_INVALID",
      ],
      [
        "a field far over busboy's field size",
        [
          { name: "original_path", value: "/".repeat(40_000) },
          { name: "file", data },
        ],
        "IMPORT_FIELD_INVALID",
      ],
      [
        "control characters in the host",
        [
          { name: "source_host", value: "host\u0007" },
          { name: "file", data },
        ],
        "IMPORT_FIELD_INVALID",
      ],
      [
        "a sha256 that is not 64 hex",
        [
          { name: "sha256", value: "abc" },
          { name: "file", data },
        ],
        "INVALID_SHA256",
      ],
      ["an empty file", [{ name: "file", data: Buffer.alloc(0) }], "IMPORT_EMPTY"],
      ["a body without its closing boundary", [{ name: "file", data }], "IMPORT_MALFORMED", { close: false }],
    ];
    for (const [label, parts, code, options] of cases) {
      const before = await backend.snapshot(svc);
      const r = await importTo(svc, IMPORTER, parts, options ?? {});
      expect(r.status, `${label}: ${JSON.stringify(r.json)}`).toBe(400);
      expect(r.json.error.code, label).toBe(code);
      expect(r.json.error.message.length, label).toBeGreaterThan(10);
      expect(await backend.snapshot(svc), label).toEqual(before);
    }
    const hostNotHashed = await importTo(svc, IMPORTER, [
      { name: "sha256", value: "-1" },
      { name: "file", data },
    ]);
    expect(hostNotHashed.json.error.code).toBe("HOST_SHA256_UNAVAILABLE");

    // Not multipart at all: JSON, urlencoded, no content type.
    for (const contentType of [
      "application/json",
      "application/x-www-form-urlencoded",
      "text/plain",
      "multipart/mixed; boundary=x",
    ]) {
      const r = await post(`${svc.url}/api/v1/carves/import`, {
        token: IMPORTER,
        contentType,
        body: () => Readable.from([Buffer.from('{"a":1}')]),
        length: 7,
      });
      expect(r.status, contentType).toBe(415);
      expect(r.json.error.code).toBe("IMPORT_NOT_MULTIPART");
    }
    const noBoundary = await post(`${svc.url}/api/v1/carves/import`, {
      token: IMPORTER,
      contentType: "multipart/form-data; charset=utf-8",
      body: () => Readable.from([Buffer.from("x")]),
      length: 1,
    });
    expect(noBoundary.status).toBe(400);
    expect(noBoundary.json.error.code).toBe("IMPORT_MALFORMED");
  });

  it("needs the import right: no token 401, a reader 403, each audited; Vault is asked before the body is read", async () => {
    const data = randomBytes(5000);
    const before = await backend.snapshot(svc);
    const none = await importTo(svc, undefined, [
      { name: "source_host", value: "nobody" },
      { name: "file", data },
    ]);
    expect(none.status).toBe(401);
    expect(none.json.error.code).toBe("TOKEN_MISSING");
    expect(none.headers["www-authenticate"]).toMatch(/^Bearer/);
    const reader = await importTo(svc, READER, [{ name: "file", data }]);
    expect(reader.status).toBe(403);
    expect(reader.json.error.code).toBe("ACCESS_DENIED");
    expect((await importTo(svc, OUTSIDER, [{ name: "file", data }])).status).toBe(403);
    expect(await backend.snapshot(svc)).toEqual(before);
    const denied = await auditFor(
      svc,
      "action=carve.import",
      (e) => e.result === "denied" && e.actor.displayName === "ldap-alice",
    );
    expect(denied.detail).toMatchObject({
      code: "ACCESS_DENIED",
      authorization: "policy osquery-carve-import missing",
      status: 403,
    });
    await auditFor(svc, "action=carve.import", (e) => e.result === "denied" && e.detail.code === "TOKEN_MISSING");
  });

  it("verifies carves against the host's sha256: match, mismatch, -1, garbage, incomplete; shown and audited", async () => {
    // A carve uploaded by the agent emulator: it prints what the host keeps in carves.sha256.
    const file = path.join(work, `${backend.name}-agent.bin`);
    await writeFile(file, randomBytes(40_000));
    const agent = await runCarve({
      baseUrl: svc.url,
      startEndpoint: "/start_uploads",
      continueEndpoint: "/upload_blocks",
      archivePath: file,
      blockSize: 8192,
    });
    expect(agent.status).toBe("SUCCESS");
    const id = agent.carveId;

    const match = await verifyOf(svc, id, READER, { sha256: agent.sha256.toUpperCase() });
    expect(match.status, JSON.stringify(match.json)).toBe(200);
    expect(match.json).toEqual({ carveId: id, match: true, storedSha256: agent.sha256, claimedSha256: agent.sha256 });
    const other = sha256(Buffer.from("tampered in transit"));
    const mismatch = await verifyOf(svc, id, ADMIN, { sha256: other });
    expect(mismatch.status).toBe(200);
    expect(mismatch.json).toEqual({ carveId: id, match: false, storedSha256: agent.sha256, claimedSha256: other });

    for (const notHashed of [{ sha256: "-1" }, { sha256: -1 }]) {
      const r = await verifyOf(svc, id, READER, notHashed);
      expect(r.status).toBe(422);
      expect(r.json.error.code).toBe("HOST_SHA256_UNAVAILABLE");
      expect(r.json.error.message).toMatch(/read_max/);
    }
    for (const [body, code] of [
      [{ sha256: "not-a-hash" }, "INVALID_SHA256"],
      [{ sha256: "" }, "INVALID_SHA256"],
      [{ sha256: "a".repeat(63) }, "INVALID_SHA256"],
      [{}, "INVALID_SHA256"],
      [{ sha256: agent.sha256, carve: 1 }, "INVALID_QUERY"],
      ["sha256=abc", "INVALID_JSON"],
      [[agent.sha256], "INVALID_JSON"],
    ] as Array<[unknown, string]>) {
      const r = await verifyOf(svc, id, READER, body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.json.error.code, JSON.stringify(body)).toBe(code);
    }

    const meta = await api(svc, `/api/v1/carves/${id}`, READER);
    expect(meta.json.origin).toBe("agent");
    expect(meta.json.imported).toBeNull();
    expect(meta.json.verifications).toEqual([
      { claimedSha256: agent.sha256, match: true, by: "ldap-alice", at: expect.stringMatching(/Z$/) as unknown },
      { claimedSha256: other, match: false, by: "ldap-bob", at: expect.stringMatching(/Z$/) as unknown },
    ]);
    const listed = await api(svc, "/api/v1/carves?limit=500", READER);
    expect(listed.json.carves.find((c) => c.carveId === id)?.lastVerification).toEqual({
      match: false,
      by: "ldap-bob",
      at: meta.json.verifications[1]?.at,
      count: 2,
    });
    const verified = await auditFor(svc, `carve_id=${id}&action=carve.verify`, (e) => e.detail.outcome === "mismatch");
    expect(verified).toMatchObject({
      result: "allowed",
      actor: { displayName: "ldap-bob" },
      detail: { match: false, claimedSha256: other, storedSha256: agent.sha256 },
    });
    await auditFor(
      svc,
      `carve_id=${id}&action=carve.verify`,
      (e) => e.detail.outcome === "match" && e.actor.displayName === "ldap-alice",
    );
    await auditFor(
      svc,
      `carve_id=${id}&action=carve.verify`,
      (e) => e.detail.code === "HOST_SHA256_UNAVAILABLE" && e.result === "error",
    );

    // An imported carve verifies the same way.
    const bytes = randomBytes(5000);
    const imported = await importTo(svc, IMPORTER, [{ name: "file", data: bytes }]);
    const v = await verifyOf(svc, imported.json.carveId, IMPORTER, { sha256: sha256(bytes) });
    expect(v.json.match).toBe(true);
    expect((await api(svc, `/api/v1/carves/${imported.json.carveId}`, READER)).json.verifications).toMatchObject([
      { match: true, by: "ldap-carol" },
    ]);

    // A carve still receiving: nothing to compare yet.
    const receiving = randomUUID();
    const start = {
      block_count: 3,
      block_size: 1024,
      carve_size: 2500,
      carve_id: receiving,
      request_id: randomUUID(),
      node_key: "nk",
    };
    const started = await fetch(`${svc.url}/start_uploads`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(start),
    });
    expect(started.status).toBe(200);
    const incomplete = await verifyOf(svc, receiving, READER, { sha256: agent.sha256 });
    expect(incomplete.status).toBe(409);
    expect(incomplete.json.error.code).toBe("CARVE_NOT_COMPLETE");

    // Rights: the read right is enough; none, or none for carves, is refused; unknown carves are 404.
    expect((await verifyOf(svc, id, OUTSIDER, { sha256: agent.sha256 })).status).toBe(403);
    const anonymous = await fetch(`${svc.url}/api/v1/carves/${id}/verify`, {
      method: "POST",
      body: JSON.stringify({ sha256: agent.sha256 }),
    });
    expect(anonymous.status).toBe(401);
    expect((await verifyOf(svc, randomUUID(), READER, { sha256: agent.sha256 })).status).toBe(404);
    expect((await api(svc, `/api/v1/carves/${id}`, READER)).json.verifications).toHaveLength(2);
  });
});

describe("the import right in capabilities mode", () => {
  it("asks Vault for create on the import path", async () => {
    const svc = await startTestService({
      VAULT_ADDR: vault.url,
      CARVE_VAULT_AUTH_MODE: "capabilities",
      CARVE_VAULT_CACHE_SECONDS: "0",
    });
    try {
      const creator = `hvs.creator${randomBytes(8).toString("hex")}`;
      const readerOnly = `hvs.readonly${randomBytes(8).toString("hex")}`;
      vault.addToken(creator, {
        displayName: "ldap-dan",
        capabilities: { "osquery-carves-import/import": ["create"] },
      });
      vault.addToken(readerOnly, {
        displayName: "ldap-fay",
        capabilities: { "osquery-carves-import/*": ["read", "list"], "osquery-carves/*": ["read"] },
      });
      const data = randomBytes(1000);
      const ok = await importTo(svc, creator, [{ name: "file", data }]);
      expect(ok.status, JSON.stringify(ok.json)).toBe(201);
      expect(ok.json.imported?.importedBy.displayName).toBe("ldap-dan");
      const asked = vault.requests.filter((r) => r.path === "/v1/sys/capabilities-self" && r.token === creator);
      expect(asked.map((r) => r.body)).toEqual([{ paths: ["osquery-carves-import/import"] }]);
      expect((await importTo(svc, readerOnly, [{ name: "file", data }])).status).toBe(403);
    } finally {
      await svc.dispose();
    }
  });
});

describe("documentation", () => {
  it("docs/import-and-verify.md documents every error code of the two endpoints with its status", async () => {
    const doc = await readFile(path.join(import.meta.dirname, "../../docs/import-and-verify.md"), "utf8");
    const codes = [
      "IMPORT_NOT_MULTIPART",
      "IMPORT_MALFORMED",
      "IMPORT_FILE_MISSING",
      "IMPORT_TOO_MANY_FILES",
      "IMPORT_UNKNOWN_FIELD",
      "IMPORT_FIELD_INVALID",
      "IMPORT_FIELD_AFTER_FILE",
      "IMPORT_EMPTY",
      "IMPORT_TOO_LARGE",
      "IMPORT_HASH_MISMATCH",
      "IMPORT_ABORTED",
      "INVALID_SHA256",
      "HOST_SHA256_UNAVAILABLE",
      "CARVE_NOT_COMPLETE",
    ] as const;
    for (const code of codes) expect(doc, code).toContain(`| \`${code}\` | ${ERROR_CODES[code].status} |`);
  });
});
