/**
 * Per-agent and total caps on carves being received (CARVE_MAX_RECEIVING_CARVES_PER_AGENT, CARVE_MAX_RECEIVING_CARVES),
 * through a listening service: an agent is its verified certificate, as a trusted proxy reports it (X-Client-*
 * headers) or as the service's own TLS listener verified it, else its address; never its node key. Carves that
 * went idle (no block for the abandonment period) or never sent a first block (CARVE_FIRST_BLOCK_WITHIN_SECONDS)
 * stop counting, stepped over with the service's injected clock. test/http/limits.test.ts covers the caps by the
 * address a proxy reports.
 */
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT, startTestService, type TestService } from "../support/service.js";

const run = promisify(execFile);

interface Cert {
  cert: string;
  key: string;
}
interface Reply {
  status: number;
  json: Record<string, unknown>;
}

let work: string;
let pki: string;
let ca: string;
const agents: Record<string, Cert> = {};

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-agent-limits-"));
  pki = path.join(work, "pki");
  await run("bash", [path.join(ROOT, "scripts/dev-pki.sh"), "--agent", "agent-1", "--agent", "agent-2", "--agent", "agent-3", pki]);
  ca = await readFile(path.join(pki, "ca.pem"), "utf8");
  for (const name of ["agent-1", "agent-2", "agent-3"]) {
    agents[name] = {
      cert: await readFile(path.join(pki, `agents/${name}.pem`), "utf8"),
      key: await readFile(path.join(pki, `agents/${name}.key`), "utf8"),
    };
  }
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** A fresh carve of two 4-byte blocks; every start has its own node key, so the node key can never be the key. */
function startBody(): Record<string, unknown> {
  return { block_count: 2, block_size: 4, carve_size: 8, carve_id: randomUUID(), request_id: randomUUID(), node_key: `nk-${randomUUID()}` };
}

function blockBody(start: Record<string, unknown>, sessionId: unknown, blockId: number): Record<string, unknown> {
  return { block_id: blockId, session_id: sessionId, request_id: start.request_id, data: Buffer.from(`blk${blockId}`).toString("base64") };
}

/** One POST over its own connection: plain HTTP from `localAddress`, or HTTPS with a client certificate. */
function post(
  url: string,
  route: string,
  body: Record<string, unknown>,
  options: { headers?: Record<string, string>; localAddress?: string; tls?: Cert } = {},
): Promise<Reply> {
  const target = new URL(route, url);
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const common = {
      method: "POST",
      headers: { "content-type": "application/json", "content-length": Buffer.byteLength(payload), ...options.headers },
      agent: false as const,
    };
    const onReply = (res: http.IncomingMessage): void => {
      let text = "";
      res.on("data", (c: Buffer) => (text += c.toString("utf8")));
      res.on("end", () => {
        let json: Record<string, unknown>;
        try {
          json = JSON.parse(text) as Record<string, unknown>;
        } catch {
          json = { text };
        }
        resolve({ status: res.statusCode ?? 0, json });
      });
    };
    const req = options.tls
      ? https.request(target, { ...common, ca, servername: "localhost", cert: options.tls.cert, key: options.tls.key }, onReply)
      : http.request(target, { ...common, ...(options.localAddress ? { localAddress: options.localAddress } : {}) }, onReply);
    req.on("error", reject);
    req.end(payload);
  });
}

const PER_AGENT = { status: 429, json: { error: { code: "TOO_MANY_CARVES_FOR_AGENT" } } };
const TOTAL = { status: 429, json: { error: { code: "TOO_MANY_CARVES" } } };

function expectStarted(reply: Reply): void {
  expect(reply.status, JSON.stringify(reply.json)).toBe(200);
  expect(reply.json.session_id).toEqual(expect.any(String));
}

function expectRefused(reply: Reply, shape: typeof PER_AGENT): void {
  expect(reply).toMatchObject(shape);
  expect(reply.json).not.toHaveProperty("session_id"); // the agent fails the carve at once
}

describe("behind a trusted proxy: keyed by the certificate it verified", () => {
  let svc: TestService;
  beforeAll(async () => {
    // loopback is a trusted proxy by default in plain HTTP
    svc = await startTestService({ CARVE_MAX_RECEIVING_CARVES_PER_AGENT: "2", CARVE_MAX_RECEIVING_CARVES: "0", LOG_LEVEL: "warn" });
  });
  afterAll(async () => {
    await svc.dispose();
  });

  /** What NGINX sends for a request (carve-server.d/proxy-identity-headers.conf). */
  const via = (address: string, cert?: Cert, verify = "SUCCESS"): { headers: Record<string, string> } => ({
    headers: {
      "X-Real-IP": address,
      "X-Forwarded-For": address,
      ...(cert ? { "X-Client-Verify": verify, "X-Client-Cert": encodeURIComponent(cert.cert) } : { "X-Client-Verify": "NONE" }),
    },
  });

  it("counts one certificate as one agent from any address, another certificate from the same address apart", async () => {
    const a = agents["agent-1"] as Cert;
    const b = agents["agent-2"] as Cert;
    const first = startBody();
    const firstReply = await post(svc.url, "/start_uploads", first, via("10.1.0.1", a));
    expectStarted(firstReply);
    expectStarted(await post(svc.url, "/start_uploads", startBody(), via("10.1.0.2", a)));
    // the same certificate from a third address, with a new node key: still the same agent, at its cap
    expectRefused(await post(svc.url, "/start_uploads", startBody(), via("10.1.0.3", a)), PER_AGENT);
    // the agent's retry of a start it made is never refused
    expect(await post(svc.url, "/start_uploads", first, via("10.1.0.3", a))).toEqual(firstReply);
    // another certificate behind the same address is another agent
    expectStarted(await post(svc.url, "/start_uploads", startBody(), via("10.1.0.1", b)));
    // with no certificate (or one the proxy did not verify) the address is the agent: 10.1.0.1 has no such carve yet
    expectStarted(await post(svc.url, "/start_uploads", startBody(), via("10.1.0.1")));
    expectStarted(await post(svc.url, "/start_uploads", startBody(), via("10.1.0.1", a, "FAILED:certificate revoked")));
    expectRefused(await post(svc.url, "/start_uploads", startBody(), via("10.1.0.1")), PER_AGENT);
    expectStarted(await post(svc.url, "/start_uploads", startBody(), via("10.1.0.9")));

    // agent-1 finishes its first carve: a slot frees up for it
    const sessionId = firstReply.json.session_id;
    for (const id of [0, 1]) {
      expect(await post(svc.url, "/upload_blocks", blockBody(first, sessionId, id), via("10.1.0.1", a))).toEqual({ status: 200, json: { success: true } });
    }
    expect((await svc.store.getCarve(first.carve_id as string)).status).toBe("complete");
    expectStarted(await post(svc.url, "/start_uploads", startBody(), via("10.1.0.4", a)));
    expectRefused(await post(svc.url, "/start_uploads", startBody(), via("10.1.0.4", a)), PER_AGENT);

    const metrics = await (await fetch(`${svc.url}/metrics`)).text();
    expect(metrics).toContain('carve_sessions_refused_total{reason="TOO_MANY_CARVES_FOR_AGENT"} 3');
  });
});

describe("direct mutual TLS: keyed by the certificate of the connection", () => {
  let svc: TestService;
  beforeAll(async () => {
    svc = await startTestService({
      CARVE_TLS_CERT: path.join(pki, "server.pem"),
      CARVE_TLS_KEY: path.join(pki, "server.key"),
      CARVE_TLS_CLIENT_CA: path.join(pki, "ca.pem"),
      CARVE_MAX_RECEIVING_CARVES_PER_AGENT: "1",
      CARVE_MAX_RECEIVING_CARVES: "2",
      LOG_LEVEL: "warn",
    });
  });
  afterAll(async () => {
    await svc.dispose();
  });

  it("caps each certificate, ignores identity headers on the socket, and caps the total across certificates", async () => {
    expect(svc.url).toMatch(/^https:/);
    const one = agents["agent-1"] as Cert;
    const first = startBody();
    expectStarted(await post(svc.url, "/start_uploads", first, { tls: one }));
    expect((await svc.store.getCarve(first.carve_id as string)).agent.certificate).toMatchObject({ subjectDn: expect.stringContaining("CN=agent-1") as string, source: "tls" });
    expectRefused(await post(svc.url, "/start_uploads", startBody(), { tls: one }), PER_AGENT);
    // agent-1 claiming agent-2's certificate in proxy headers: nobody is a trusted proxy in TLS mode
    const claim = { "X-Client-Verify": "SUCCESS", "X-Client-Cert": encodeURIComponent((agents["agent-2"] as Cert).cert), "X-Real-IP": "10.7.7.7" };
    expectRefused(await post(svc.url, "/start_uploads", startBody(), { tls: one, headers: claim }), PER_AGENT);
    // every agent arrives from 127.0.0.1: only the certificate tells them apart
    expectStarted(await post(svc.url, "/start_uploads", startBody(), { tls: agents["agent-2"] as Cert }));
    expectRefused(await post(svc.url, "/start_uploads", startBody(), { tls: agents["agent-3"] as Cert }), TOTAL);
    const log = svc.logs.text;
    expect(log).toContain("start refused: per-agent carve limit");
    expect(log).toContain("start refused: carve limit");
  });
});

describe("no certificate, no trusted proxy: keyed by the connection's address", () => {
  let svc: TestService;
  beforeAll(async () => {
    svc = await startTestService({ CARVE_TRUSTED_PROXIES: "10.9.9.9", CARVE_MAX_RECEIVING_CARVES_PER_AGENT: "1", LOG_LEVEL: "warn" });
  });
  afterAll(async () => {
    await svc.dispose();
  });

  it("caps each source address whatever headers and node keys the client sends", async () => {
    const forged = { headers: { "X-Real-IP": "10.5.5.5", "X-Forwarded-For": "10.5.5.5", "X-Client-Verify": "SUCCESS", "X-Client-Cert": encodeURIComponent((agents["agent-1"] as Cert).cert) } };
    const first = startBody();
    expectStarted(await post(svc.url, "/start_uploads", first, { localAddress: "127.0.0.1" }));
    const recorded = (await svc.store.getCarve(first.carve_id as string)).agent;
    expect(recorded).toMatchObject({ address: "127.0.0.1", certificate: null });
    expectRefused(await post(svc.url, "/start_uploads", startBody(), { localAddress: "127.0.0.1" }), PER_AGENT);
    expectRefused(await post(svc.url, "/start_uploads", startBody(), { localAddress: "127.0.0.1", ...forged }), PER_AGENT);
    // another loopback address is another client
    expectStarted(await post(svc.url, "/start_uploads", startBody(), { localAddress: "127.0.0.2" }));
    expectRefused(await post(svc.url, "/start_uploads", startBody(), { localAddress: "127.0.0.2" }), PER_AGENT);
  });
});

describe("idle carves do not count (the service's clock, stepped)", () => {
  let svc: TestService;
  let offsetMs = 0;
  const clock = (): Date => new Date(Date.now() + offsetMs);
  const HOUR = 3_600_000;
  beforeAll(async () => {
    svc = await startTestService(
      {
        CARVE_MAX_RECEIVING_CARVES_PER_AGENT: "1",
        CARVE_ABANDONED_AFTER_HOURS: "1",
        CARVE_FIRST_BLOCK_WITHIN_SECONDS: "600",
        // retention would delete the abandoned carves: the cap must let agents in while they are still stored
        CARVE_RETENTION_ENABLED: "false",
        LOG_LEVEL: "warn",
      },
      { now: clock },
    );
  });
  afterAll(async () => {
    await svc.dispose();
  });

  // Each case is its own agent (its own proxy-reported address), on one service and one clock.
  const from = (address: string) => ({ headers: { "X-Real-IP": address } });

  it("a carve with no block for the abandonment period stops counting, and still exists", async () => {
    const agent = from("10.2.0.1");
    const idle = startBody();
    const started = await post(svc.url, "/start_uploads", idle, agent);
    expectStarted(started);
    expect((await post(svc.url, "/upload_blocks", blockBody(idle, started.json.session_id, 0), agent)).status).toBe(200);
    offsetMs += HOUR - 60_000; // 59 minutes without a block: still active
    expectRefused(await post(svc.url, "/start_uploads", startBody(), agent), PER_AGENT);
    offsetMs += 120_000; // 61 minutes
    expectStarted(await post(svc.url, "/start_uploads", startBody(), agent));
    const record = await svc.store.getCarve(idle.carve_id as string);
    expect(record).toMatchObject({ status: "receiving", blocksReceived: 1 });
  });

  it("a start that never sent a first block stops counting after CARVE_FIRST_BLOCK_WITHIN_SECONDS; one that did keeps counting", async () => {
    const silent = from("10.2.0.2");
    expectStarted(await post(svc.url, "/start_uploads", startBody(), silent));
    const sending = from("10.2.0.3");
    const busy = startBody();
    const busyStart = await post(svc.url, "/start_uploads", busy, sending);
    expectStarted(busyStart);
    expect((await post(svc.url, "/upload_blocks", blockBody(busy, busyStart.json.session_id, 0), sending)).status).toBe(200);
    offsetMs += 599_000;
    expectRefused(await post(svc.url, "/start_uploads", startBody(), silent), PER_AGENT);
    offsetMs += 2000; // 601 s after the blockless start
    expectStarted(await post(svc.url, "/start_uploads", startBody(), silent));
    // 601 s after its start, but its block came 601 s ago, well within the hour: it counts
    expectRefused(await post(svc.url, "/start_uploads", startBody(), sending), PER_AGENT);
  });
});
