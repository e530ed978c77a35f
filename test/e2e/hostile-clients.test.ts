/**
 * Issue 15 items 3-11 and issue 20's import timeout, each through a real listening service: what a client
 * sends (slow bodies, idle connections, deep JSON, forged headers, secrets in URLs, tokenless floods, repeated
 * holds) ends with the service up, everyone else served, nothing stored lost, and a clear answer.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { mkdtemp, rm, statfs, writeFile } from "node:fs/promises";
import https from "node:https";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCarve } from "../../scripts/emulator/index.js";
import { startTestService, type TestService } from "../support/service.js";
import { startVaultDouble, type VaultDouble } from "../support/vault-double.js";

const run = promisify(execFile);
let work: string;
let vault: VaultDouble;
const ADMIN = `hvs.admin${randomBytes(8).toString("hex")}`;
const IMPORTER = `hvs.importer${randomBytes(8).toString("hex")}`;

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-hostile-"));
  vault = await startVaultDouble();
  vault.addToken(ADMIN, { policies: ["osquery-carve-admin", "osquery-carve-download"], displayName: "ldap-bob" });
  vault.addToken(IMPORTER, { policies: ["osquery-carve-import", "osquery-carve-download"], displayName: "ldap-carol" });
});
afterAll(async () => {
  await vault?.close();
  await rm(work, { recursive: true, force: true });
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await sleep(50);
  }
}

interface RawExchange {
  /** Everything the server sent. */
  reply: Promise<{ raw: string; closed: boolean }>;
  socket: net.Socket;
  /** Writes more of the body. */
  write(b: Buffer | string): void;
}

/** A request written by hand on its own connection: headers now, the body whenever the test says. */
function rawRequest(url: string, head: string): RawExchange {
  const { hostname, port } = new URL(url);
  const socket = net.connect(Number(port), hostname);
  let raw = "";
  socket.on("data", (c: Buffer) => (raw += c.toString("utf8")));
  socket.on("error", () => undefined);
  const reply = new Promise<{ raw: string; closed: boolean }>((resolve) => socket.on("close", () => resolve({ raw, closed: true })));
  socket.write(head);
  return { reply, socket, write: (b) => socket.writable && socket.write(b) };
}

const bodyOf = (raw: string): string => raw.slice(raw.indexOf("\r\n\r\n") + 4);

function isJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

async function carveFile(svc: TestService, bytes: Buffer, agentVersion = "5.23.0", blockSize = 256 * 1024) {
  const p = path.join(work, `${randomUUID()}.bin`);
  await writeFile(p, bytes);
  return runCarve({ baseUrl: svc.url, startEndpoint: "/start_uploads", continueEndpoint: "/upload_blocks", archivePath: p, blockSize, agentVersion });
}

const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

describe("slow bodies (item 3) and progress-based timeouts (issue 20)", () => {
  let svc: TestService;
  beforeAll(async () => {
    svc = await startTestService({
      VAULT_ADDR: vault.url,
      LOG_LEVEL: "info",
      CARVE_MIN_BODY_RATE_WINDOW_SECONDS: "2",
      CARVE_REQUEST_TIMEOUT_SECONDS: "3",
    });
  });
  afterAll(async () => svc?.dispose());

  it("two bodies announcing 11 MB at 1 byte/s hold nothing: an emulated osquery 5.23 carves meanwhile, the slow ones get a non-JSON 408", async () => {
    const head = `POST /upload_blocks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 11000000\r\n\r\n`;
    const slow = [rawRequest(svc.url, head), rawRequest(svc.url, head)];
    const ticker = setInterval(() => slow.forEach((s) => s.write("[")), 1000);
    try {
      const data = randomBytes(4 * 1024 * 1024 - 3);
      const carve = await carveFile(svc, data);
      expect(carve.status).toBe("SUCCESS");
      expect((await svc.store.getCarve(carve.carveId)).sha256).toBe(sha(data));
      for (const s of slow) {
        const { raw } = await s.reply;
        expect(raw.split("\r\n")[0]).toBe("HTTP/1.1 408 Request Timeout");
        expect(bodyOf(raw)).toMatch(/^refused: REQUEST_TIMEOUT/);
        expect(isJson(bodyOf(raw)), "an agent must count it as a failure").toBe(false);
      }
    } finally {
      clearInterval(ticker);
    }
  }, 120_000);

  it("a body that sends 8 MB at once, then stalls, is cut off too, and frees what it held", async () => {
    const head = `POST /upload_blocks HTTP/1.1\r\nHost: x\r\nContent-Length: 11000000\r\n\r\n`;
    const s = rawRequest(svc.url, head);
    s.write(Buffer.alloc(8 * 1024 * 1024, 0x41));
    const { raw } = await s.reply;
    expect(raw.split("\r\n")[0]).toBe("HTTP/1.1 408 Request Timeout");
    const carve = await carveFile(svc, randomBytes(300_000));
    expect(carve.status).toBe("SUCCESS");
    const metrics = await (await fetch(`${svc.url}/metrics`)).text();
    expect(metrics.split("\n").filter((l) => l.startsWith("carve_inflight_body_bytes"))).toEqual(["carve_inflight_body_bytes 0"]);
  }, 120_000);

  it("an import that keeps streaming for longer than the idle timeout is not cut off; a stalled one is, keeping nothing", async () => {
    const boundary = `b${randomBytes(8).toString("hex")}`;
    const file = randomBytes(1024 * 1024);
    const pre = Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="source_host"\r\n\r\nhost-1\r\n--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.tar"\r\nContent-Type: application/octet-stream\r\n\r\n`);
    const post = Buffer.from(`\r\n--${boundary}--\r\n`);
    const body = Buffer.concat([pre, file, post]);
    const head = (len: number): string =>
      `POST /api/v1/carves/import HTTP/1.1\r\nHost: x\r\nX-Vault-Token: ${IMPORTER}\r\nContent-Type: multipart/form-data; boundary=${boundary}\r\nContent-Length: ${len}\r\nConnection: close\r\n\r\n`;
    // 64 KiB every 300 ms: ~5 s in all, more than the 3 s idle timeout, but never idle.
    const moving = rawRequest(svc.url, head(body.length));
    const started = Date.now();
    for (let at = 0; at < body.length; at += 64 * 1024) {
      moving.write(body.subarray(at, at + 64 * 1024));
      await sleep(300);
    }
    const ok = await moving.reply;
    expect(Date.now() - started, "the upload really lasted longer than the idle timeout").toBeGreaterThan(3000);
    expect(ok.raw.split("\r\n")[0]).toBe("HTTP/1.1 201 Created");
    const id = (JSON.parse(bodyOf(ok.raw)) as { carveId: string }).carveId;
    expect((await svc.store.getCarve(id)).sha256).toBe(sha(file));

    const before = (await svc.store.listCarves({ limit: 1000 })).carves.length;
    const stalled = rawRequest(svc.url, head(body.length));
    stalled.write(body.subarray(0, body.length / 2));
    const cut = await stalled.reply;
    expect(cut.closed).toBe(true);
    expect(cut.raw.split("\r\n")[0]).toMatch(/^HTTP\/1\.1 (408|400)/);
    expect((await svc.store.listCarves({ limit: 1000 })).carves.length).toBe(before);
  }, 120_000);
});

describe("deeply nested JSON (item 5)", () => {
  let svc: TestService;
  beforeAll(async () => {
    svc = await startTestService({ LOG_LEVEL: "info" });
  });
  afterAll(async () => svc?.dispose());

  it("8 MB of [ is refused before parsing on every agent endpoint, and the service goes on", async () => {
    const deep = Buffer.alloc(8 * 1024 * 1024, "[");
    const start = await fetch(`${svc.url}/start_uploads`, { method: "POST", body: deep.subarray(0, 60_000) });
    expect(start.status).toBe(400);
    expect(await start.json()).toMatchObject({ error: { code: "INVALID_JSON" } });
    for (const p of ["/upload_blocks", "/"]) {
      const r = await fetch(`${svc.url}${p}`, { method: "POST", body: deep });
      expect(r.status).toBe(400);
      expect(await r.text()).toMatch(/^refused: INVALID_JSON: .*nested deeper than 32 levels/);
    }
    expect((await carveFile(svc, randomBytes(5000), "5.23.0", 1024)).status).toBe("SUCCESS");
  }, 60_000);
});

describe("connections and shutdown (item 4)", () => {
  it("bounds connections per address: idle ones beyond the bound are closed at once, the rest by the header timeout", async () => {
    const svc = await startTestService({
      CARVE_MAX_CONNECTIONS_PER_ADDRESS: "20",
      CARVE_HEADERS_TIMEOUT_SECONDS: "2",
      // loopback is not a proxy here, so 127.0.0.1 is one client address like any other
      CARVE_TRUSTED_PROXIES: "10.9.9.9",
      LOG_LEVEL: "info",
    });
    try {
      const { port } = new URL(svc.url);
      const sockets = Array.from({ length: 30 }, () => net.connect(Number(port), "127.0.0.1"));
      const closed = new Set<net.Socket>();
      for (const s of sockets) {
        s.resume(); // read the server's 408 and FIN, so 'close' comes
        s.on("close", () => closed.add(s));
        s.on("error", () => undefined);
      }
      await until("10 connections over the bound closed", () => closed.size >= 10);
      await until("the idle ones closed by the header timeout", () => closed.size === 30, 30_000);
      expect((await fetch(`${svc.url}/status`)).status).toBe(200);
      expect(svc.logs.text).toContain("connection refused: connection limit reached");
    } finally {
      await svc.dispose();
    }
  }, 60_000);

  describe("direct TLS", () => {
    let cert: string;
    let key: string;
    beforeAll(async () => {
      key = path.join(work, "server.key");
      cert = path.join(work, "server.pem");
      await run("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"]);
    });

    it("a connection that never completes its TLS handshake is closed after the handshake timeout", async () => {
      const svc = await startTestService({ CARVE_TLS_CERT: cert, CARVE_TLS_KEY: key, CARVE_TLS_HANDSHAKE_TIMEOUT_SECONDS: "1" });
      try {
        const { port } = new URL(svc.url);
        const idle = net.connect(Number(port), "127.0.0.1");
        idle.on("error", () => undefined);
        idle.resume();
        let closed = false;
        idle.on("close", () => (closed = true));
        await until("the idle pre-handshake connection closed", () => closed, 30_000);
      } finally {
        await svc.dispose();
      }
    }, 60_000);

    it("shutdown ends idle pre-handshake connections at once instead of waiting out the grace period", async () => {
      const svc = await startTestService({ CARVE_TLS_CERT: cert, CARVE_TLS_KEY: key, CARVE_SHUTDOWN_GRACE_SECONDS: "600", LOG_LEVEL: "info" });
      const { port } = new URL(svc.url);
      const idle = net.connect(Number(port), "127.0.0.1");
      idle.on("error", () => undefined);
      let closed = false;
      idle.on("close", () => (closed = true));
      await new Promise((r) => idle.once("connect", r));
      // the service has accepted it (its guard holds the socket) before the shutdown begins
      const accepted = (): Promise<number> => new Promise((resolve, reject) => svc.server.getConnections((err, n) => (err ? reject(err) : resolve(n))));
      await until("the service accepted the connection", async () => (await accepted()) === 1, 30_000);
      let stopped = false;
      const stopping = svc.dispose().then(() => (stopped = true));
      await until("the service stopped", () => stopped, 30_000);
      await stopping;
      expect(closed).toBe(true);
      expect(svc.logs.text).not.toContain("grace period over");
    }, 60_000);

    it("proxy headers from loopback are not believed when the service terminates TLS itself (item 10)", async () => {
      const svc = await startTestService({ CARVE_TLS_CERT: cert, CARVE_TLS_KEY: key });
      try {
        expect(svc.config.server.trustedProxies).toEqual([]);
        const carveId = randomUUID();
        const body = JSON.stringify({ block_count: 1, block_size: 4, carve_size: 4, carve_id: carveId, request_id: randomUUID(), node_key: "" });
        const reply = await new Promise<number>((resolve, reject) => {
          const req = https.request(`${svc.url}/start_uploads`, {
            method: "POST",
            rejectUnauthorized: false,
            headers: { "content-type": "application/json", "x-real-ip": "203.0.113.9", "x-client-verify": "SUCCESS", "x-client-subject-dn": "CN=forged", "x-client-cert": "forged" },
          }, (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          });
          req.on("error", reject);
          req.end(body);
        });
        expect(reply).toBe(200);
        const record = await svc.store.getCarve(carveId);
        expect(record.agent.address).toMatch(/127\.0\.0\.1$/);
        expect(record.agent.certificate).toBeNull();
      } finally {
        await svc.dispose();
      }
    }, 60_000);
  });
});

describe("caps without client certificates (item 8)", () => {
  it("distinct node keys from one address share its cap; starts that never send a block stop counting", async () => {
    // The service's clock, stepped over CARVE_FIRST_BLOCK_WITHIN_SECONDS instead of sleeping through it.
    let offsetMs = 0;
    const svc = await startTestService(
      {
        CARVE_MAX_RECEIVING_CARVES_PER_AGENT: "2",
        CARVE_MAX_RECEIVING_CARVES: "100",
        CARVE_FIRST_BLOCK_WITHIN_SECONDS: "2",
        CARVE_TRUSTED_PROXIES: "10.9.9.9",
      },
      { now: () => new Date(Date.now() + offsetMs) },
    );
    try {
      const start = async (nodeKey: string) => {
        const r = await fetch(`${svc.url}/start_uploads`, {
          method: "POST",
          body: JSON.stringify({ block_count: 1, block_size: 4, carve_size: 4, carve_id: randomUUID(), request_id: randomUUID(), node_key: nodeKey }),
        });
        return { status: r.status, json: (await r.json()) as Record<string, unknown> };
      };
      expect((await start("key-1")).status).toBe(200);
      expect((await start("key-2")).status).toBe(200);
      expect(await start("key-3")).toMatchObject({ status: 429, json: { error: { code: "TOO_MANY_CARVES_FOR_AGENT" } } });
      // Neither start ever sends a block: after firstBlockWithinSeconds they no longer hold the agent's slots.
      offsetMs += 1000;
      expect((await start("key-4")).status, "1 s on: the blockless starts still count").toBe(429);
      offsetMs += 1500;
      expect((await start("key-5")).status).toBe(200);
    } finally {
      await svc.dispose();
    }
  }, 60_000);
});

describe("free disk (item 6)", () => {
  it("reserves the declared size of carves in progress: a start that would overcommit the disk is refused at once", async () => {
    const dataDir = await mkdtemp(path.join(work, "disk-"));
    const s = await statfs(dataDir);
    const free = s.bavail * s.bsize;
    // Leave 300 MiB usable above the minimum, as on the 300 MB disk of the report.
    const svc = await startTestService({ CARVE_DATA_DIR: dataDir, CARVE_MIN_FREE_DISK: String(Math.max(0, free - 300 * 1024 * 1024)) });
    try {
      const start = async () => {
        const size = 200 * 1024 * 1024;
        const r = await fetch(`${svc.url}/start_uploads`, {
          method: "POST",
          body: JSON.stringify({ block_count: size / (8 * 1024 * 1024), block_size: 8 * 1024 * 1024, carve_size: size, carve_id: randomUUID(), request_id: randomUUID(), node_key: "" }),
        });
        return { status: r.status, json: (await r.json()) as Record<string, unknown> };
      };
      expect((await start()).status).toBe(200);
      const second = await start();
      expect(second).toMatchObject({ status: 507, json: { error: { code: "INSUFFICIENT_STORAGE" } } });
      expect(second.json).not.toHaveProperty("session_id");
      expect(svc.logs.text).toContain('"reservedBytes":209715200');
    } finally {
      await svc.dispose();
      await rm(dataDir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe("responder API (items 7, 9, 11)", () => {
  let svc: TestService;
  beforeAll(async () => {
    svc = await startTestService({ VAULT_ADDR: vault.url, CARVE_VAULT_CACHE_SECONDS: "0", CARVE_AUDIT_UNAUTHENTICATED_WINDOW_SECONDS: "2", LOG_LEVEL: "info" });
  });
  afterAll(async () => svc?.dispose());

  const api = async (method: string, p: string, body?: unknown) => {
    const r = await fetch(svc.url + p, { method, headers: { "x-vault-token": ADMIN, "content-type": "application/json" }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
    return { status: r.status, json: (await r.json()) as Record<string, unknown> };
  };

  it("100 tokenless requests from one client write one audit event, then one auth.failures event with the count", async () => {
    const auditBefore = (await api("GET", "/api/v1/audit?limit=500")).json.events as unknown[];
    for (let i = 0; i < 100; i++) expect((await fetch(`${svc.url}/api/v1/carves`)).status).toBe(401);
    type Ev = { action: string; result: string; detail: { count?: number; code?: string } };
    let events: Ev[] = [];
    await until("the window's summary", async () => {
      events = ((await api("GET", "/api/v1/audit?limit=500")).json.events as Ev[]).slice(0, -auditBefore.length || undefined);
      return events.some((e) => e.action === "auth.failures");
    }, 30_000);
    const denied = events.filter((e) => e.action === "carve.list" && e.result === "denied");
    const summary = events.filter((e) => e.action === "auth.failures");
    expect(denied.length).toBe(1);
    expect(summary.map((e) => ({ code: e.detail.code, count: e.detail.count }))).toEqual([{ code: "TOKEN_MISSING", count: 99 }]);
  }, 60_000);

  it("never logs a token in a query string nor a node key in any path form", async () => {
    const token = `hvs.${randomBytes(12).toString("hex")}`;
    const nodeKey = `nk${randomBytes(12).toString("hex")}`;
    await fetch(`${svc.url}/api/v1/carves?token=${token}&limit=5`);
    for (const p of [`//${nodeKey}/start_uploads`, `/api/${nodeKey}/start_uploads`, `/status/${nodeKey}`, `/${nodeKey}/upload_blocks`]) {
      await fetch(svc.url + p, { method: "POST", body: "{}" });
      await fetch(svc.url + p);
    }
    // A later request's line is logged: so is every line of the requests above (answered one after another).
    const barrier = `barrier-${randomUUID()}`;
    await fetch(`${svc.url}/api/v1/carves?${barrier}`);
    await until("the barrier request logged", () => svc.logs.text.includes(barrier), 30_000);
    expect(svc.logs.text).not.toContain(token);
    expect(svc.logs.text).not.toContain(nodeKey);
    expect(svc.logs.text).toContain("token=[redacted]&limit=5");
    expect(svc.logs.text).toContain("//[node-key]/start_uploads");
    expect(svc.logs.text).toContain("/status/[node-key]");
  }, 60_000);

  it("an audit cursor with an impossible time is a clear 400", async () => {
    const cursor = Buffer.from('{"t":1e400,"id":"x"}').toString("base64url");
    const r = await api("GET", `/api/v1/audit?cursor=${cursor}`);
    expect(r).toMatchObject({ status: 400, json: { error: { code: "INVALID_QUERY" } } });
  });

  it("a second hold keeps the first (409 HOLD_EXISTS), and reasons with control characters are refused", async () => {
    const carve = await carveFile(svc, randomBytes(3000), "5.23.0", 1024);
    const id = carve.carveId;
    expect((await api("PUT", `/api/v1/carves/${id}/hold`, { reason: "case\u0000IR-1" })).status).toBe(400);
    expect((await api("PUT", `/api/v1/carves/${id}/hold`, { reason: "case IR-1" })).status).toBe(200);
    const again = await api("PUT", `/api/v1/carves/${id}/hold`, { reason: "something else" });
    expect(again).toMatchObject({ status: 409, json: { error: { code: "HOLD_EXISTS" } } });
    expect((await svc.store.getCarve(id)).hold).toMatchObject({ by: "ldap-bob", reason: "case IR-1" });
  }, 60_000);

  it("a carve keeps its newest 100 verifications", async () => {
    const data = randomBytes(2000);
    const carve = await carveFile(svc, data, "5.23.0", 1024);
    for (let i = 0; i < 105; i++) {
      const r = await api("POST", `/api/v1/carves/${carve.carveId}/verify`, { sha256: i % 2 ? sha(data) : "0".repeat(64) });
      expect(r.status).toBe(200);
    }
    const record = await svc.store.getCarve(carve.carveId);
    expect(record.verifications.length).toBe(100);
    expect(record.verifications.at(-1)?.match).toBe(false); // the 105th (i = 104) was the wrong hash
  }, 120_000);
});
