/**
 * src/http/client-identity.ts with real certificates (scripts/dev-pki.sh, openssl): which identity headers the
 * service believes (only a trusted proxy's, only X-Client-Verify: SUCCESS with a parsable certificate), what it
 * records on the carve, the TLS-socket source, and CARVE_REQUIRE_SAME_CERTIFICATE. What NGINX itself sends is
 * covered through a real NGINX in test/e2e/nginx-front.test.ts.
 */
import { execFile } from "node:child_process";
import { X509Certificate, randomUUID } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  certificateIdentityFromPem,
  proxyMatcher,
  resolveClient,
  type ClientInfo,
} from "../../src/http/client-identity.js";
import { ROOT, startTestService, type TestService } from "../support/service.js";

const run = promisify(execFile);

interface Cert {
  cert: string;
  key: string;
}

let work: string;
let ca: string;
let agentA: Cert;
let agentB: Cert;
let foreign: Cert;
let server: Cert;

const SUBJECT_A = "CN=agent-a,OU=agents,O=osquery-carve-server dev";

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-identity-"));
  const dir = path.join(work, "pki");
  await run("bash", [
    path.join(ROOT, "scripts/dev-pki.sh"),
    "--agent",
    "agent-a",
    "--agent",
    "agent-b",
    "--other-ca",
    dir,
  ]);
  const read = (p: string): Promise<string> => readFile(path.join(dir, p), "utf8");
  ca = await read("ca.pem");
  agentA = { cert: await read("agents/agent-a.pem"), key: await read("agents/agent-a.key") };
  agentB = { cert: await read("agents/agent-b.pem"), key: await read("agents/agent-b.key") };
  foreign = { cert: await read("other-ca/agent.pem"), key: await read("other-ca/agent.key") };
  server = { cert: await read("server.pem"), key: await read("server.key") };
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** The headers NGINX sets for a verified client certificate (carve-server.d/proxy-identity-headers.conf). */
function proxyHeaders(pem: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    "X-Client-Verify": "SUCCESS",
    "X-Client-Subject-DN": SUBJECT_A,
    "X-Client-Cert": encodeURIComponent(pem),
    "X-Real-IP": "10.1.2.3",
    "X-Forwarded-For": "10.1.2.3",
    ...extra,
  };
}

function startBody(carveId: string, size = 1000, blockSize = 1000): string {
  return JSON.stringify({
    block_count: Math.ceil(size / blockSize),
    block_size: blockSize,
    carve_size: size,
    carve_id: carveId,
    request_id: `req-${carveId}`,
    node_key: "nk",
  });
}

async function post(svc: TestService, p: string, body: string, headers: Record<string, string>) {
  const res = await fetch(svc.url + p, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body,
  });
  return { status: res.status, type: res.headers.get("content-type") ?? "", text: await res.text() };
}

/** Starts a carve with these headers and returns what the service recorded about the agent. */
async function startAndRecord(svc: TestService, headers: Record<string, string>) {
  const carveId = randomUUID();
  const res = await post(svc, "/start_uploads", startBody(carveId), headers);
  expect(res.status).toBe(200);
  return (await svc.store.getCarve(carveId)).agent;
}

function isJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

describe("behind a trusted proxy (the default 127.0.0.1, ::1)", () => {
  let svc: TestService;
  beforeAll(async () => {
    svc = await startTestService();
  });
  afterAll(async () => {
    await svc?.dispose();
  });

  it("records the proxy's verified certificate: NGINX's subject, the SHA-256 of the PEM, the agent's address", async () => {
    const agent = await startAndRecord(svc, proxyHeaders(agentA.cert));
    expect(agent.address).toBe("10.1.2.3");
    expect(agent.certificate).toEqual({
      subjectDn: SUBJECT_A,
      fingerprintSha256: new X509Certificate(agentA.cert).fingerprint256,
      source: "proxy",
    });
    expect(agent.certificate?.fingerprintSha256).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
  });

  it("takes the subject from the certificate (RFC 2253 order) when the proxy sends none", async () => {
    const headers = proxyHeaders(agentB.cert);
    delete headers["X-Client-Subject-DN"];
    const agent = await startAndRecord(svc, headers);
    expect(agent.certificate?.subjectDn).toBe("CN=agent-b,OU=agents,O=osquery-carve-server dev");
    expect(agent.certificate?.fingerprintSha256).toBe(new X509Certificate(agentB.cert).fingerprint256);
  });

  it.each([["NONE"], ["FAILED:unable to verify the first certificate"], ["Success"], ["SUCCESS,SUCCESS"], [""]])(
    "ignores the certificate when X-Client-Verify is %j",
    async (verify) => {
      const agent = await startAndRecord(svc, proxyHeaders(agentA.cert, { "X-Client-Verify": verify }));
      expect(agent.certificate).toBeNull();
      expect(agent.address).toBe("10.1.2.3"); // the address is still the proxy's report
    },
  );

  it.each([
    ["text that is no certificate", "not a certificate"],
    ["broken URL encoding", "%E0%A4%A"],
    [
      "a PEM frame around garbage",
      encodeURIComponent("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
    ],
    ["no certificate at all", ""],
  ])("ignores a garbage X-Client-Cert (%s) and still serves the agent", async (_label, cert) => {
    const agent = await startAndRecord(svc, proxyHeaders(agentA.cert, { "X-Client-Cert": cert }));
    expect(agent.certificate).toBeNull();
  });

  it("falls back to the last X-Forwarded-For entry (the one the proxy appended) when X-Real-IP is not an address", async () => {
    const agent = await startAndRecord(
      svc,
      proxyHeaders(agentA.cert, { "X-Real-IP": "nonsense", "X-Forwarded-For": "192.0.2.1, 10.0.0.2" }),
    );
    expect(agent.address).toBe("10.0.0.2");
  });

  it("accepts a session's blocks from another certificate unless CARVE_REQUIRE_SAME_CERTIFICATE is on", async () => {
    const carveId = randomUUID();
    const start = await post(svc, "/start_uploads", startBody(carveId, 10, 10), proxyHeaders(agentA.cert));
    const sessionId = (JSON.parse(start.text) as { session_id: string }).session_id;
    const block = await post(
      svc,
      "/upload_blocks",
      JSON.stringify({
        block_id: 0,
        session_id: sessionId,
        request_id: `req-${carveId}`,
        data: Buffer.alloc(10, 7).toString("base64"),
      }),
      proxyHeaders(agentB.cert),
    );
    expect(block.status).toBe(200);
    expect((await svc.store.getCarve(carveId)).status).toBe("complete");
  });
});

describe("from a peer that is not a trusted proxy", () => {
  let svc: TestService;
  beforeAll(async () => {
    svc = await startTestService({ CARVE_TRUSTED_PROXIES: "10.9.9.9" });
  });
  afterAll(async () => {
    await svc?.dispose();
  });

  it("ignores every identity header: no certificate, the peer's own address", async () => {
    const agent = await startAndRecord(svc, proxyHeaders(agentA.cert));
    expect(agent.certificate).toBeNull();
    expect(agent.address).toBe("127.0.0.1");
  });
});

describe("CARVE_REQUIRE_SAME_CERTIFICATE=true", () => {
  let svc: TestService;
  beforeAll(async () => {
    svc = await startTestService({ CARVE_REQUIRE_SAME_CERTIFICATE: "true" });
  });
  afterAll(async () => {
    await svc?.dispose();
  });

  it("refuses a block from another certificate, or none, with a non-JSON 403 and stores nothing; the starting certificate completes the carve", async () => {
    const carveId = randomUUID();
    const start = await post(svc, "/start_uploads", startBody(carveId, 20, 10), proxyHeaders(agentA.cert));
    expect(start.status).toBe(200);
    const sessionId = (JSON.parse(start.text) as { session_id: string }).session_id;
    const blockBody = (id: number): string =>
      JSON.stringify({
        block_id: id,
        session_id: sessionId,
        request_id: `req-${carveId}`,
        data: Buffer.alloc(10, id + 1).toString("base64"),
      });

    const others: Array<Record<string, string>> = [
      proxyHeaders(agentB.cert),
      proxyHeaders(foreign.cert), // whatever a proxy claims, a different certificate is different
      {}, // no certificate at all
      proxyHeaders(agentA.cert, { "X-Client-Verify": "FAILED:certificate revoked" }),
    ];
    for (const headers of others) {
      const res = await post(svc, "/upload_blocks", blockBody(0), headers);
      expect(res.status).toBe(403);
      expect(res.type).toMatch(/^text\/plain/);
      expect(res.text).toMatch(/^refused: CERTIFICATE_MISMATCH/);
      expect(isJson(res.text)).toBe(false);
    }
    const record = await svc.store.getCarve(carveId);
    expect(record.blocksReceived).toBe(0);
    expect(record.bytesReceived).toBe(0);
    expect(svc.logs.text).toContain("client certificate differs from the session's");

    for (const id of [0, 1]) {
      const res = await post(svc, "/upload_blocks", blockBody(id), proxyHeaders(agentA.cert));
      expect(res.status).toBe(200);
      expect(JSON.parse(res.text)).toEqual({ success: true });
    }
    expect((await svc.store.getCarve(carveId)).status).toBe("complete");
  });
});

describe("unit: proxy matching and certificate parsing", () => {
  it("matches addresses and CIDRs of both families, IPv4-mapped IPv6 included", () => {
    const trusted = proxyMatcher(["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"]);
    expect(trusted("127.0.0.1")).toBe(true);
    expect(trusted("::ffff:10.20.30.40")).toBe(true);
    expect(trusted("10.255.0.1")).toBe(true);
    expect(trusted("11.0.0.1")).toBe(false);
    expect(trusted("::1")).toBe(true);
    expect(trusted("fd12::1")).toBe(true);
    expect(trusted("fe80::1")).toBe(false);
    expect(trusted(undefined)).toBe(false);
    expect(trusted("not-an-address")).toBe(false);
    expect(() => proxyMatcher(["nonsense"])).toThrow(/not an IP address/);
  });

  it("parses a PEM into our identity shape and returns null for anything else", () => {
    expect(certificateIdentityFromPem(agentA.cert, "proxy")).toEqual({
      subjectDn: SUBJECT_A,
      fingerprintSha256: new X509Certificate(agentA.cert).fingerprint256,
      source: "proxy",
    });
    expect(certificateIdentityFromPem("garbage", "proxy")).toBeNull();
    expect(certificateIdentityFromPem(agentA.key, "tls")).toBeNull();
  });
});

describe("the service's own TLS socket (direct mutual TLS)", () => {
  /** An HTTPS server that asks for client certificates and reports what resolveClient makes of each request. */
  async function withServer(trusted: boolean, fn: (port: number) => Promise<void>): Promise<void> {
    const srv = https.createServer({ ...server, ca, requestCert: true, rejectUnauthorized: false }, (req, res) => {
      const info: ClientInfo = resolveClient(req, () => trusted);
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify(info));
    });
    await new Promise<void>((resolve) => srv.listen(0, "127.0.0.1", resolve));
    try {
      await fn((srv.address() as AddressInfo).port);
    } finally {
      await new Promise<void>((resolve) => srv.close(() => resolve()));
    }
  }

  function ask(port: number, client: Partial<Cert>, headers: Record<string, string> = {}): Promise<ClientInfo> {
    return new Promise((resolve, reject) => {
      const req = https.request(
        { host: "127.0.0.1", port, path: "/", ca, servername: "localhost", agent: false, headers, ...client },
        (res) => {
          let text = "";
          res.on("data", (c: Buffer) => (text += c.toString("utf8")));
          res.on("end", () => resolve(JSON.parse(text) as ClientInfo));
        },
      );
      req.on("error", reject);
      req.end();
    });
  }

  it("records a verified socket certificate (source tls), which wins over a proxy's headers", async () => {
    await withServer(true, async (port) => {
      const info = await ask(port, agentA, proxyHeaders(agentB.cert, { "X-Client-Subject-DN": "CN=agent-b" }));
      expect(info.certificate).toEqual({
        subjectDn: SUBJECT_A,
        fingerprintSha256: new X509Certificate(agentA.cert).fingerprint256,
        source: "tls",
      });
      expect(info.viaTrustedProxy).toBe(false);
    });
  });

  it("ignores an unverified socket certificate and, from an untrusted peer, the headers too", async () => {
    await withServer(false, async (port) => {
      expect((await ask(port, foreign, proxyHeaders(agentA.cert))).certificate).toBeNull();
      expect((await ask(port, {}, proxyHeaders(agentA.cert))).certificate).toBeNull();
    });
  });
});
