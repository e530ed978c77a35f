import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { buildCarveArchive, cliMain, runCarve } from "../../scripts/emulator/index.js";
import type { CarveResult, RunCarveOptions } from "../../scripts/emulator/index.js";

// ---------------------------------------------------------------- helpers

interface Recorded {
  method: string;
  url: string;
  rawHeaders: string[];
  headers: http.IncomingHttpHeaders;
  body: string;
  json: Record<string, unknown> | undefined;
}

type Reply = { status?: number; body?: string } | "destroy" | "hang";
type Handler = (r: Recorded, index: number) => Reply;

interface TestServer {
  url: string;
  requests: Recorded[];
  blocks: () => Recorded[];
  close: () => Promise<void>;
}

const defaultHandler: Handler = (r) =>
  r.json && "block_count" in r.json ? { body: JSON.stringify({ session_id: "sess-1" }) } : { body: "{}" };

async function startServer(handler: Handler = defaultHandler, tlsOpts?: https.ServerOptions): Promise<TestServer> {
  const requests: Recorded[] = [];
  const listener = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      let json: Record<string, unknown> | undefined;
      try {
        json = JSON.parse(body) as Record<string, unknown>;
      } catch {
        json = undefined;
      }
      const rec: Recorded = {
        method: req.method ?? "",
        url: req.url ?? "",
        rawHeaders: req.rawHeaders,
        headers: req.headers,
        body,
        json,
      };
      requests.push(rec);
      const reply = handler(rec, requests.length - 1);
      if (reply === "destroy") {
        req.socket.destroy();
        return;
      }
      if (reply === "hang") return;
      res.writeHead(reply.status ?? 200, { "Content-Type": "application/json" });
      res.end(reply.body ?? "");
    });
  };
  const server = tlsOpts ? https.createServer(tlsOpts, listener) : http.createServer(listener);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `${tlsOpts ? "https" : "http"}://127.0.0.1:${port}`,
    requests,
    blocks: () => requests.filter((r) => r.json !== undefined && "block_id" in r.json),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

let work: string;

function tmpFile(name: string, content: Buffer | string): string {
  const p = path.join(work, name);
  mkdirSync(path.dirname(p), { recursive: true });
  writeFileSync(p, content);
  return p;
}

function pseudoRandom(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

const sha256 = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

function tarList(file: string): string[] {
  return execFileSync("tar", ["-tvf", file], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] })
    .split("\n")
    .filter((l) => l !== "");
}

function tarNames(file: string): string[] {
  return execFileSync("tar", ["-tf", file], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] })
    .split("\n")
    .filter((l) => l !== "");
}

function extract(file: string): string {
  const dir = mkdtempSync(path.join(work, "x-"));
  execFileSync("tar", ["-xf", file, "-C", dir], { stdio: ["ignore", "pipe", "pipe"] });
  return dir;
}

let archiveCounter = 0;
function makeArchive(content: Buffer): string {
  const out = path.join(work, `upload-${archiveCounter++}.bin`);
  writeFileSync(out, content);
  return out;
}

const fast = { retryDelaysMs: [5, 10] } satisfies Partial<RunCarveOptions>;

beforeAll(() => {
  work = mkdtempSync(path.join(os.tmpdir(), "emulator-test-"));
});

afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

// ---------------------------------------------------------------- archive

describe("buildCarveArchive", () => {
  it("modern names, no pax times: GNU tar lists and extracts byte-exact", async () => {
    const a = tmpFile("src/etc/hosts", "127.0.0.1 localhost\n");
    const b = tmpFile("src/var/log/big.bin", pseudoRandom(70_001, 7));
    const out = path.join(work, "modern.tar");
    const carveId = "11111111-2222-3333-4444-555555555555";
    const res = await buildCarveArchive({ paths: [b, a], carveId, outFile: out, style: "modern", paxTimes: false });
    const bytes = readFileSync(out);
    expect(res.size).toBe(bytes.length);
    expect(res.size % 512).toBe(0);
    expect(res.sha256).toBe(sha256(bytes));
    expect(bytes.subarray(-1024).equals(Buffer.alloc(1024))).toBe(true);
    // Only ustar headers: no pax 'x' entries before 5.22 (names fit in ustar name/prefix).
    expect(bytes[156]).toBe("0".charCodeAt(0));

    const expected = [a, b].map((p) => `/tmp/osquery_carve_${carveId}${p}`);
    expect(res.members.map((m) => m.name)).toEqual(expected);
    const names = tarNames(out);
    expect(names).toEqual(expected); // GNU tar lists the absolute names; it strips "/" only on extraction
    const listing = tarList(out);
    expect(listing).toHaveLength(2);
    expect(listing[0]).toMatch(/^-rw-r--r-- 0\/0 +20 1970-01-01/);
    expect(listing[1]).toMatch(/ 70001 1970-01-01 /);

    const dir = extract(out);
    for (const p of [a, b]) {
      expect(readFileSync(path.join(dir, "tmp", `osquery_carve_${carveId}`, p)).equals(readFileSync(p))).toBe(true);
    }
  });

  it("legacy names with pax times: x headers carry atime/ctime/mtime", async () => {
    const a = tmpFile("leg/one.txt", "first file\n");
    const b = tmpFile("leg/sub/two.bin", pseudoRandom(1536, 3)); // exact multiple of 512
    const out = path.join(work, "legacy.tar");
    const res = await buildCarveArchive({ paths: [a, b], carveId: "c1", outFile: out, style: "legacy", paxTimes: true });
    const bytes = readFileSync(out);
    expect(res.size % 512).toBe(0);
    expect(bytes[156]).toBe("x".charCodeAt(0));
    const paxData = bytes.subarray(512, 1024).toString("latin1");
    expect(paxData).toMatch(/^\d+ atime=\d+(\.\d+)?\n\d+ ctime=\d+(\.\d+)?\n\d+ mtime=\d+(\.\d+)?\n/);
    // every record's length prefix is exact
    for (const rec of paxData.replace(/\0+$/, "").split(/(?<=\n)/)) {
      expect(Number(rec.split(" ")[0])).toBe(Buffer.byteLength(rec));
    }
    expect(tarNames(out)).toEqual(["one.txt", "two.bin"]);
    const listing = tarList(out);
    const year = String(statSync(a).mtime.getFullYear());
    expect(listing[0]).toContain(year);
    const dir = extract(out);
    expect(readFileSync(path.join(dir, "one.txt")).equals(readFileSync(a))).toBe(true);
    expect(readFileSync(path.join(dir, "two.bin")).equals(readFileSync(b))).toBe(true);
    // GNU tar restores the pax mtime exactly (nanoseconds)
    expect(statSync(path.join(dir, "two.bin"), { bigint: true }).mtimeNs).toBe(statSync(b, { bigint: true }).mtimeNs);
  });

  it("legacy: same base name twice keeps the first (sorted) source, as osquery's copy fails", async () => {
    const a = tmpFile("dup/a/same.txt", "A");
    const b = tmpFile("dup/b/same.txt", "B");
    const out = path.join(work, "dup.tar");
    const res = await buildCarveArchive({ paths: [b, a, a], carveId: "d", outFile: out, style: "legacy" });
    expect(res.members).toEqual([{ name: "same.txt", source: a, size: 1 }]);
    expect(readFileSync(path.join(extract(out), "same.txt"), "utf8")).toBe("A");
  });

  it("long and non-ASCII paths go through ustar prefix or pax path records", async () => {
    const deep = tmpFile(`long/${"d".repeat(90)}/${"e".repeat(60)}/file.txt`, "deep\n");
    const huge = tmpFile(`long/${"f".repeat(200)}/${"g".repeat(120)}.txt`, "huge\n");
    const uni = tmpFile("long/žluťoučký kůň.txt", "unicode\n");
    for (const paxTimes of [false, true]) {
      const out = path.join(work, `long-${paxTimes}.tar`);
      const carveId = "abcdef";
      await buildCarveArchive({ paths: [deep, huge, uni], carveId, outFile: out, paxTimes });
      const dir = extract(out);
      for (const p of [deep, huge, uni]) {
        expect(readFileSync(path.join(dir, "tmp", `osquery_carve_${carveId}`, p), "utf8")).toBe(readFileSync(p, "utf8"));
      }
      expect(tarNames(out)).toHaveLength(3);
    }
  });

  it("skips missing paths and directories; no files gives the 1024-byte zero tar", async () => {
    const out = path.join(work, "empty.tar");
    const res = await buildCarveArchive({ paths: [path.join(work, "nope"), work], carveId: "e", outFile: out });
    expect(res.size).toBe(1024);
    expect(res.members).toEqual([]);
    const bytes = readFileSync(out);
    expect(bytes.equals(Buffer.alloc(1024))).toBe(true);
    expect(res.sha256).toBe(sha256(Buffer.alloc(1024)));
    expect(tarList(out)).toEqual([]);
  });

  it("compression: one zstd frame, no content size, no checksum, decompresses to the tar", async () => {
    const a = tmpFile("z/data.bin", Buffer.concat([pseudoRandom(5000, 9), Buffer.alloc(20_000, 0x41)]));
    const out = path.join(work, "c.tar.zst");
    const res = await buildCarveArchive({ paths: [a], carveId: "z1", outFile: out, compression: true, paxTimes: true });
    const bytes = readFileSync(out);
    expect(bytes.subarray(0, 4).equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))).toBe(true);
    const fhd = bytes[4] as number;
    expect(fhd >> 6).toBe(0); // Frame_Content_Size_flag: no content size
    expect((fhd >> 5) & 1).toBe(0); // not single segment, so no size field at all
    expect((fhd >> 2) & 1).toBe(0); // Content_Checksum_flag
    expect(res.size).toBe(bytes.length);
    expect(res.sha256).toBe(sha256(bytes));
    const tar = path.join(work, "c.tar");
    execFileSync("zstd", ["-d", "-q", "-f", out, "-o", tar]);
    expect(statSync(tar).size).toBe(res.tarSize);
    expect(res.tarSize % 512).toBe(0);
    const dir = extract(tar);
    expect(readFileSync(path.join(dir, "tmp", "osquery_carve_z1", a)).equals(readFileSync(a))).toBe(true);
    // GNU tar also reads it through its own zstd filter
    expect(execFileSync("tar", ["--zstd", "-tf", out], { encoding: "utf8", stdio: "pipe" }).trim()).toBe(
      `/tmp/osquery_carve_z1${a}`,
    );
  });
});

// ---------------------------------------------------------------- agent

describe("runCarve", () => {
  it("sends the start body and headers byte-exact, then every block in order", async () => {
    const srv = await startServer();
    try {
      const content = pseudoRandom(8192 * 2 + 100, 11);
      const archivePath = makeArchive(content);
      const res = await runCarve({
        baseUrl: srv.url,
        archivePath,
        blockSize: 8192,
        carveId: "carve-1",
        requestId: "req-1",
        nodeKey: "nk-1",
        startEndpoint: "/start_uploads",
        continueEndpoint: "/upload_blocks",
        ...fast,
      });
      expect(res.status).toBe("SUCCESS");
      expect(res.sessionId).toBe("sess-1");
      expect(res.blockCount).toBe(3);
      expect(res.carveSize).toBe(content.length);
      expect(res.sha256).toBe(sha256(content));
      const [start, ...blocks] = srv.requests;
      expect(start?.method).toBe("POST");
      expect(start?.url).toBe("/start_uploads");
      expect(start?.body).toBe(
        `{"block_count":3,"block_size":8192,"carve_size":${content.length},` +
          `"carve_id":"carve-1","request_id":"req-1","node_key":"nk-1"}`,
      );
      expect(blocks).toHaveLength(3);
      for (const r of srv.requests) {
        expect(r.headers["content-type"]).toBe("application/json");
        expect(r.headers.accept).toBe("application/json");
        expect(r.headers["user-agent"]).toBe("osquery/5.23.0");
        expect(r.headers.authorization).toBe("NodeKey nk-1");
        expect(r.headers["content-length"]).toBe(String(Buffer.byteLength(r.body)));
        expect(r.headers["transfer-encoding"]).toBeUndefined();
        expect(r.headers["content-encoding"]).toBeUndefined();
        // header order as osquery's decorateRequest writes them
        const names = r.rawHeaders.filter((_, i) => i % 2 === 0).map((h) => h.toLowerCase());
        expect(names.slice(0, 4)).toEqual(["content-type", "accept", "user-agent", "authorization"]);
      }
      const parts: Buffer[] = [];
      blocks.forEach((b, i) => {
        expect(b.url).toBe("/upload_blocks");
        expect(Object.keys(b.json ?? {})).toEqual(["block_id", "session_id", "request_id", "data"]);
        const data = String(b.json?.data);
        expect(b.body).toBe(
          `{"block_id":${i},"session_id":"sess-1","request_id":"req-1","data":${JSON.stringify(data)}}`,
        );
        expect(data).toMatch(/^[A-Za-z0-9+/]*={0,2}$/);
        expect(data.length % 4).toBe(0);
        const decoded = Buffer.from(data, "base64");
        expect(decoded.length).toBe(i < 2 ? 8192 : 100);
        parts.push(decoded);
      });
      expect(Buffer.concat(parts).equals(content)).toBe(true);
      expect(res.requests.map((r) => [r.kind, r.blockId, r.attempt, r.statusCode, r.ok])).toEqual([
        ["start", null, 1, 200, true],
        ["block", 0, 1, 200, true],
        ["block", 1, 1, 200, true],
        ["block", 2, 1, 200, true],
      ]);
    } finally {
      await srv.close();
    }
  });

  it("defaults: endpoints '/', no Authorization before 5.23 or without a key; exact multiple has no empty block", async () => {
    const srv = await startServer();
    try {
      const content = pseudoRandom(4096, 5);
      const archivePath = makeArchive(content);
      const res = await runCarve({ baseUrl: srv.url, archivePath, blockSize: 1024, agentVersion: "5.22.1", nodeKey: "k" });
      expect(res.status).toBe("SUCCESS");
      expect(res.blockCount).toBe(4);
      expect(srv.requests.map((r) => r.url)).toEqual(["/", "/", "/", "/", "/"]);
      expect(srv.requests.every((r) => r.headers.authorization === undefined)).toBe(true);
      expect(srv.requests[0]?.headers["user-agent"]).toBe("osquery/5.22.1");
      expect(srv.blocks().map((b) => Buffer.from(String(b.json?.data), "base64").length)).toEqual([
        1024, 1024, 1024, 1024,
      ]);
      expect(JSON.parse(srv.requests[0]?.body ?? "")).toMatchObject({ node_key: "k" });
      srv.requests.length = 0;
      await runCarve({ baseUrl: srv.url, archivePath, blockSize: 4096, nodeKey: "" });
      expect(srv.requests.every((r) => r.headers.authorization === undefined)).toBe(true);
    } finally {
      await srv.close();
    }
  });

  it("node API: puts /<key> before each endpoint (and alone when the endpoint is empty)", async () => {
    const srv = await startServer();
    try {
      const archivePath = makeArchive(Buffer.alloc(1024));
      await runCarve({ baseUrl: srv.url, archivePath, nodeApiKey: "NODE", continueEndpoint: "/blocks" });
      expect(srv.requests.map((r) => r.url)).toEqual(["/NODE", "/NODE/blocks"]);
    } finally {
      await srv.close();
    }
  });

  it("counts a 400 with a JSON body, and an empty body, as success", async () => {
    let n = 0;
    const srv = await startServer((r) => {
      if (r.json && "block_count" in r.json) return { status: 400, body: '{"session_id":"s400"}' };
      return n++ % 2 === 0 ? { status: 400, body: '{"error":"nope"}' } : { status: 500, body: "" };
    });
    try {
      const archivePath = makeArchive(pseudoRandom(4000, 1));
      const res = await runCarve({ baseUrl: srv.url, archivePath, blockSize: 1000, ...fast });
      expect(res.status).toBe("SUCCESS");
      expect(res.sessionId).toBe("s400");
      expect(srv.blocks()).toHaveLength(4);
      expect(res.requests.filter((r) => r.kind === "block").map((r) => r.statusCode)).toEqual([400, 500, 400, 500]);
      expect(res.requests.every((r) => r.ok && r.attempt === 1)).toBe(true);
    } finally {
      await srv.close();
    }
  });

  it("5.22+: retries a non-JSON block reply 3 times, then aborts with DATA POST FAILED", async () => {
    const srv = await startServer((r) => {
      if (r.json && "block_count" in r.json) return { body: '{"session_id":"s"}' };
      if (r.json?.block_id === 1) return { status: 502, body: "<html>Bad Gateway</html>" };
      return { body: "{}" };
    });
    try {
      const archivePath = makeArchive(pseudoRandom(3000, 2));
      const res = await runCarve({ baseUrl: srv.url, archivePath, blockSize: 1000, retryDelaysMs: [20, 40] });
      expect(res.status).toBe("DATA POST FAILED");
      expect(res.hostStatus).toBe("DATA POST FAILED");
      expect(srv.blocks().map((b) => b.json?.block_id)).toEqual([0, 1, 1, 1]);
      const failed = res.requests.filter((r) => r.blockId === 1);
      expect(failed.map((r) => [r.attempt, r.ok, r.statusCode, r.error])).toEqual([
        [1, false, 502, "non-JSON reply"],
        [2, false, 502, "non-JSON reply"],
        [3, false, 502, "non-JSON reply"],
      ]);
      expect(failed[0]?.body).toBe("<html>Bad Gateway</html>");
      // the same body is resent
      const bodies = srv.blocks().filter((b) => b.json?.block_id === 1).map((b) => b.body);
      expect(new Set(bodies).size).toBe(1);
    } finally {
      await srv.close();
    }
  });

  it("5.22+: recovers when a later attempt gets JSON; waits the configured delays", async () => {
    let failures = 2;
    const srv = await startServer((r) => {
      if (r.json && "block_count" in r.json) return { body: '{"session_id":"s"}' };
      if (r.json?.block_id === 0 && failures-- > 0) return { body: "busy" };
      return { body: "{}" };
    });
    try {
      const archivePath = makeArchive(pseudoRandom(1500, 2));
      const t0 = Date.now();
      const res = await runCarve({ baseUrl: srv.url, archivePath, blockSize: 1000, retryDelaysMs: [30, 60] });
      expect(Date.now() - t0).toBeGreaterThanOrEqual(85);
      expect(res.status).toBe("SUCCESS");
      expect(res.requests.filter((r) => r.blockId === 0).map((r) => [r.attempt, r.ok])).toEqual([
        [1, false],
        [2, false],
        [3, true],
      ]);
      expect(srv.blocks().map((b) => b.json?.block_id)).toEqual([0, 0, 0, 1]);
    } finally {
      await srv.close();
    }
  });

  it("before 5.22: a failed block is logged and skipped, the carve still ends SUCCESS", async () => {
    const srv = await startServer((r) => {
      if (r.json && "block_count" in r.json) return { body: '{"session_id":"s"}' };
      if (r.json?.block_id === 1) return { body: "Internal Server Error" };
      return { body: "{}" };
    });
    try {
      const archivePath = makeArchive(pseudoRandom(3000, 4));
      const res = await runCarve({ baseUrl: srv.url, archivePath, blockSize: 1000, agentVersion: "5.21.0", ...fast });
      expect(res.status).toBe("SUCCESS");
      expect(srv.blocks().map((b) => b.json?.block_id)).toEqual([0, 1, 2]);
      expect(res.requests.map((r) => r.ok)).toEqual([true, true, false, true]);
    } finally {
      await srv.close();
    }
  });

  it("start without session_id fails at once (no retry, even on 5.23)", async () => {
    for (const reply of ['{"status":"ok"}', '{"session_id":""}', '{"session_id":42}', "[]", ""]) {
      const srv = await startServer(() => ({ body: reply }));
      try {
        const archivePath = makeArchive(Buffer.alloc(1024));
        const res = await runCarve({ baseUrl: srv.url, archivePath, ...fast });
        expect(res.status).toBe("START FAILED");
        expect(res.hostStatus).toBe("DATA POST FAILED");
        expect(res.sessionId).toBeNull();
        expect(srv.requests).toHaveLength(1);
      } finally {
        await srv.close();
      }
    }
  });

  it("5.22+ retries a non-JSON start 3 times; older agents try once", async () => {
    const srv = await startServer(() => ({ status: 503, body: "Service Unavailable" }));
    try {
      const archivePath = makeArchive(Buffer.alloc(1024));
      const res = await runCarve({ baseUrl: srv.url, archivePath, ...fast });
      expect(res.status).toBe("START FAILED");
      expect(res.requests.map((r) => [r.kind, r.attempt])).toEqual([
        ["start", 1],
        ["start", 2],
        ["start", 3],
      ]);
      const bodies = srv.requests.map((r) => r.body);
      expect(new Set(bodies).size).toBe(1); // same carve_id started up to 3 times
      srv.requests.length = 0;
      const old = await runCarve({ baseUrl: srv.url, archivePath, agentVersion: "4.9.0", ...fast });
      expect(old.status).toBe("START FAILED");
      expect(srv.requests).toHaveLength(1);
    } finally {
      await srv.close();
    }
  });

  it("a transport error is silently resent once by the HTTP client", async () => {
    let dropped = 0;
    const srv = await startServer((r) => {
      if (r.json && "block_count" in r.json) return { body: '{"session_id":"s"}' };
      if (r.json?.block_id === 0 && dropped++ === 0) return "destroy";
      if (r.json?.block_id === 1) return "destroy";
      return { body: "{}" };
    });
    try {
      const archivePath = makeArchive(pseudoRandom(2000, 6));
      const res = await runCarve({ baseUrl: srv.url, archivePath, blockSize: 1000, ...fast });
      expect(res.status).toBe("DATA POST FAILED");
      const b0 = res.requests.filter((r) => r.blockId === 0);
      expect(b0.map((r) => [r.attempt, r.silentResend, r.ok, r.statusCode])).toEqual([
        [1, false, false, null],
        [1, true, true, 200],
      ]);
      // block 1: 3 attempts, each with its silent resend: the 6 arrivals the protocol doc warns about
      expect(srv.blocks().filter((b) => b.json?.block_id === 1)).toHaveLength(6);
    } finally {
      await srv.close();
    }
  });

  it("a timeout is a failure and is not silently resent", async () => {
    const srv = await startServer((r) => {
      if (r.json && "block_count" in r.json) return { body: '{"session_id":"s"}' };
      if (r.json?.block_id === 0) return "hang";
      return { body: "{}" };
    });
    try {
      const archivePath = makeArchive(pseudoRandom(2000, 6));
      const res = await runCarve({
        baseUrl: srv.url,
        archivePath,
        blockSize: 1000,
        agentVersion: "5.0.1",
        timeoutMs: 150,
        ...fast,
      });
      expect(res.status).toBe("SUCCESS");
      expect(res.requests.filter((r) => r.blockId === 0).map((r) => [r.ok, r.error, r.silentResend])).toEqual([
        [false, "timed out", false],
      ]);
      expect(srv.blocks().map((b) => b.json?.block_id)).toEqual([0, 1]);
    } finally {
      await srv.close();
    }
  });

  it("injection: duplicate, skip, reverse order, corrupt, bad base64, wrong length, mutateBody", async () => {
    const srv = await startServer();
    try {
      const content = pseudoRandom(6 * 100 + 7, 8);
      const archivePath = makeArchive(content);
      const genuine = (i: number): string => content.subarray(i * 100, i * 100 + 100).toString("base64");
      const res = await runCarve({
        baseUrl: srv.url,
        archivePath,
        blockSize: 100,
        inject: {
          order: "reverse",
          duplicate: [6],
          skip: [4],
          corrupt: [3],
          badBase64: [2],
          wrongLength: [1],
          mutateBody: (kind, blockId, _attempt, body) =>
            kind === "block" && blockId === 0 ? { ...body, extra: true } : body,
        },
        ...fast,
      });
      expect(res.status).toBe("SUCCESS");
      const seen = srv.blocks().map((b) => b.json?.block_id);
      expect(seen).toEqual([6, 6, 5, 3, 3, 2, 1, 0]);
      const blocks = srv.blocks();
      expect(blocks[0]?.body).toBe(blocks[1]?.body);
      expect(Buffer.from(String(blocks[0]?.json?.data), "base64").length).toBe(7);
      expect(blocks[3]?.json?.data).toBe(genuine(3));
      const corrupt = Buffer.from(String(blocks[4]?.json?.data), "base64");
      expect(corrupt.length).toBe(100);
      expect(corrupt.equals(content.subarray(300, 400))).toBe(false);
      expect(String(blocks[5]?.json?.data)).not.toMatch(/^[A-Za-z0-9+/]*={0,2}$/);
      expect(Buffer.from(String(blocks[6]?.json?.data), "base64").equals(content.subarray(100, 199))).toBe(true);
      expect(blocks[7]?.json).toMatchObject({ block_id: 0, extra: true, data: genuine(0) });
      expect(res.requests.filter((r) => r.kind === "block").map((r) => r.variant)).toEqual([
        "genuine",
        "duplicate",
        "genuine",
        "genuine",
        "corrupt",
        "badBase64",
        "wrongLength",
        "genuine",
      ]);
    } finally {
      await srv.close();
    }
  });

  it("injection: a bad body is resent unchanged on retries; explicit order and raw-string mutation", async () => {
    const srv = await startServer((r) => {
      if (r.json && "block_count" in r.json) return { body: '{"session_id":"s"}' };
      if (r.json === undefined) return { status: 400, body: "bad json" };
      const data = String(r.json.data);
      return /^[A-Za-z0-9+/]*={0,2}$/.test(data) ? { body: "{}" } : { status: 400, body: "invalid base64" };
    });
    try {
      const archivePath = makeArchive(pseudoRandom(300, 12));
      const res = await runCarve({
        baseUrl: srv.url,
        archivePath,
        blockSize: 100,
        inject: { order: [2, 0, 1], badBase64: [1] },
        ...fast,
      });
      expect(res.status).toBe("DATA POST FAILED");
      expect(srv.blocks().map((b) => b.json?.block_id)).toEqual([2, 0, 1, 1, 1]);
      expect(new Set(srv.blocks().slice(2).map((b) => b.body)).size).toBe(1);

      srv.requests.length = 0;
      const raw = await runCarve({
        baseUrl: srv.url,
        archivePath,
        blockSize: 100,
        agentVersion: "5.10.2",
        inject: { mutateBody: (kind, _id, _a, body) => (kind === "block" ? "{not json" : body) },
        ...fast,
      });
      expect(raw.status).toBe("SUCCESS");
      expect(srv.requests.slice(1).map((r) => r.body)).toEqual(["{not json", "{not json", "{not json"]);
    } finally {
      await srv.close();
    }
  });

  it("follows redirects with the same POST body; explicit order may name ids past block_count", async () => {
    const srv = await startServer((r) => {
      if (r.url === "/old") return { status: 307, body: "" };
      return defaultHandler(r, 0);
    });
    try {
      const archivePath = makeArchive(pseudoRandom(150, 15));
      // a 307 without Location is a transport-level failure in osquery's client
      const res = await runCarve({
        baseUrl: srv.url,
        archivePath,
        blockSize: 100,
        agentVersion: "5.12.1",
        startEndpoint: "/new",
        continueEndpoint: "/old",
        inject: { order: [1, 0, 5] },
        ...fast,
      });
      expect(res.status).toBe("SUCCESS");
      expect(res.requests.filter((r) => r.kind === "block").map((r) => [r.blockId, r.silentResend, r.ok])).toEqual([
        [1, false, false],
        [1, true, false],
        [0, false, false],
        [0, true, false],
        [5, false, false],
        [5, true, false],
      ]);
      expect(srv.blocks().at(-1)?.json).toMatchObject({ block_id: 5, data: "" });
    } finally {
      await srv.close();
    }
    const moved = await new Promise<http.Server>((resolve) => {
      const s = http.createServer((req, res) => {
        let body = "";
        req.on("data", (c: Buffer) => (body += c.toString()));
        req.on("end", () => {
          if (req.url === "/start") {
            res.writeHead(308, { Location: "/start2" }).end();
          } else if (req.url === "/start2") {
            res.end(JSON.stringify({ session_id: "moved", echo: body }));
          } else {
            res.end("{}");
          }
        });
      });
      s.listen(0, "127.0.0.1", () => resolve(s));
    });
    try {
      const archivePath = makeArchive(Buffer.alloc(1024));
      const res = await runCarve({
        baseUrl: `http://127.0.0.1:${(moved.address() as AddressInfo).port}`,
        archivePath,
        startEndpoint: "/start",
        carveId: "c-moved",
      });
      expect(res.sessionId).toBe("moved");
      const echoed = (JSON.parse(res.requests[1]?.body ?? "{}") as { echo: string }).echo;
      expect(JSON.parse(echoed)).toMatchObject({ carve_id: "c-moved", block_count: 1 });
      expect(res.requests.map((r) => [r.kind, r.statusCode, r.ok])).toEqual([
        ["start", 308, false],
        ["start", 200, true],
        ["block", 200, true],
      ]);
    } finally {
      moved.closeAllConnections();
      await new Promise<void>((resolve) => moved.close(() => resolve()));
    }
  });

  it("records keep bodies short and onRequest sees every exchange", async () => {
    const long = JSON.stringify({ session_id: "s", pad: "x".repeat(1000) });
    const srv = await startServer((r) => (r.json && "block_count" in r.json ? { body: long } : { body: "{}" }));
    try {
      const archivePath = makeArchive(Buffer.alloc(2048));
      const seen: number[] = [];
      const res: CarveResult = await runCarve({
        baseUrl: srv.url,
        archivePath,
        blockSize: 1024,
        onRequest: (r) => seen.push(r.body.length),
      });
      expect(seen).toEqual([long.length, 2, 2]);
      expect(res.requests[0]?.body.length).toBeLessThanOrEqual(203);
      expect(res.requests.every((r) => r.latencyMs >= 0)).toBe(true);
    } finally {
      await srv.close();
    }
  });
});

// ---------------------------------------------------------------- TLS + CLI

describe("mutual TLS and the CLI", () => {
  let pki: { ca: Buffer; serverKey: Buffer; serverCert: Buffer; clientKey: Buffer; clientCert: Buffer; dir: string };

  beforeAll(() => {
    const dir = mkdtempSync(path.join(work, "pki-"));
    const run = (args: string[]): void => {
      execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
    };
    run(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"]);
    run(["req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=test-ca", "-days", "2", "-out", "ca.pem"]);
    for (const [name, cn, ext] of [
      ["server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"],
      ["client", "host-1", "extendedKeyUsage=clientAuth"],
    ] as const) {
      writeFileSync(path.join(dir, `${name}.ext`), `${ext}\n`);
      run(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", `${name}.key`]);
      run(["req", "-new", "-key", `${name}.key`, "-subj", `/CN=${cn}`, "-out", `${name}.csr`]);
      run([
        "x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", `${name}.ext`, "-out", `${name}.pem`,
      ]);
    }
    const r = (f: string): Buffer => readFileSync(path.join(dir, f));
    pki = {
      dir,
      ca: r("ca.pem"),
      serverKey: r("server.key"),
      serverCert: r("server.pem"),
      clientKey: r("client.key"),
      clientCert: r("client.pem"),
    };
  });

  it("uploads over mutual TLS with a client certificate", async () => {
    const peers: string[] = [];
    const srv = await startServer(
      (r) => (r.json && "block_count" in r.json ? { body: '{"session_id":"tls"}' } : { body: "{}" }),
      { key: pki.serverKey, cert: pki.serverCert, ca: pki.ca, requestCert: true, rejectUnauthorized: true },
    );
    try {
      const archivePath = makeArchive(pseudoRandom(5000, 13));
      const res = await runCarve({
        baseUrl: srv.url,
        archivePath,
        blockSize: 2048,
        tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey },
        onRequest: (r) => peers.push(String(r.statusCode)),
      });
      expect(res.status).toBe("SUCCESS");
      expect(peers).toEqual(["200", "200", "200", "200"]);
      // without a client certificate the handshake fails: a transport error, resent once, 3 attempts
      const denied = await runCarve({ baseUrl: srv.url, archivePath, tls: { ca: pki.ca }, ...fast });
      expect(denied.status).toBe("START FAILED");
      expect(denied.requests.map((r) => [r.attempt, r.silentResend, r.statusCode])).toEqual([
        [1, false, null],
        [1, true, null],
        [2, false, null],
        [2, true, null],
        [3, false, null],
        [3, true, null],
      ]);
    } finally {
      await srv.close();
    }
  });

  it("CLI: builds, uploads and prints one JSON object; exit code follows the status", async () => {
    const srv = await startServer(
      (r) => (r.json && "block_count" in r.json ? { body: '{"session_id":"cli"}' } : { body: "{}" }),
      { key: pki.serverKey, cert: pki.serverCert, ca: pki.ca, requestCert: true, rejectUnauthorized: true },
    );
    try {
      const f1 = tmpFile("cli/a.txt", "alpha\n");
      const f2 = tmpFile("cli/b.bin", pseudoRandom(20_000, 14));
      const keep = path.join(work, "cli-kept.tar.zst");
      let out = "";
      let err = "";
      const io = { stdout: (t: string) => (out += t), stderr: (t: string) => (err += t) };
      const code = await cliMain(
        [
          "--url", srv.url, "--file", f1, "--file", f2, "--block-size", "4096", "--compression",
          "--start-endpoint", "/start_uploads", "--continue-endpoint", "/upload_blocks",
          "--cacert", path.join(pki.dir, "ca.pem"), "--cert", path.join(pki.dir, "client.pem"),
          "--key", path.join(pki.dir, "client.key"), "--carve-id", "cli-carve", "--node-key", "NK",
          "--duplicate", "0", "--keep-archive", keep, "--json", "--verbose",
        ],
        io,
      );
      expect(err).toContain("block 0 attempt 1 duplicate: 200 ok");
      expect(code).toBe(0);
      const parsed = JSON.parse(out) as Record<string, unknown>;
      expect(parsed).toMatchObject({ carveId: "cli-carve", sessionId: "cli", status: "SUCCESS", blockSize: 4096 });
      expect(parsed.sha256).toBe(sha256(readFileSync(keep)));
      expect(readFileSync(keep).subarray(0, 4).toString("hex")).toBe("28b52ffd");
      expect(srv.requests[0]?.headers.authorization).toBe("NodeKey NK");
      expect(srv.blocks().length).toBe((parsed.blockCount as number) + 1);

      out = "";
      const human = await cliMain(
        [
          "--url", srv.url, "--file", f1, "--insecure", "--agent-version", "4.9.0",
          "--cert", path.join(pki.dir, "client.pem"), "--key", path.join(pki.dir, "client.key"),
        ],
        io,
      );
      expect(human).toBe(0);
      expect(out).toMatch(/^carve_id: +\S+\nrequest_id: +\S+\nsession_id: +cli\nsha256: +[0-9a-f]{64}\n/);
      expect(out).toContain("status:     SUCCESS");

      expect(await cliMain(["--file", f1], io)).toBe(1);
      expect(await cliMain(["--url", srv.url, "--file", f1, "--bogus"], io)).toBe(1);
    } finally {
      await srv.close();
    }
  });
});
