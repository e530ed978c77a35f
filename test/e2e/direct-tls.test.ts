/**
 * The service terminating mutual TLS itself (issue 8), with a PKI made by scripts/dev-pki.sh: agents carve
 * over HTTPS with their certificate, which the carve records; no certificate, another CA's or an expired
 * one is refused in the handshake and stores nothing; blocks from another certificate are refused when
 * binding is on; SIGHUP swaps the server certificate while a carve is in flight, which completes.
 */
import { execFile } from "node:child_process";
import { X509Certificate, randomBytes, randomUUID } from "node:crypto";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import https from "node:https";
import { tmpdir } from "node:os";
import path from "node:path";
import tls from "node:tls";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCarve } from "../../scripts/emulator/index.js";
import { sha256 } from "../support/carve-data.js";
import { peekEntry } from "../support/catalog-peek.js";
import { storedCounts, type StoredCounts } from "../support/data-dir.js";
import { probeHandshake, type HandshakeOutcome } from "../support/tls-probe.js";
import { ROOT, freePort } from "../support/service.js";

const run = promisify(execFile);
let work: string;
let pki: string;
let dataDir: string;
let proc: ChildProcess;
let exited: Promise<number | null>;
let port: number;
let responderPort: number;
const output: string[] = [];

const file = (p: string) => readFile(path.join(pki, p));

async function request(
  url: string,
  opts: { cert?: Buffer; key?: Buffer; method?: string; body?: string; agent?: https.Agent } = {},
): Promise<{ status: number; text: string; socket: unknown }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        method: opts.method ?? "GET",
        ca: caPem,
        servername: "localhost",
        ...(opts.cert ? { cert: opts.cert, key: opts.key } : {}),
        agent: opts.agent ?? false,
      },
      (res) => {
        let text = "";
        res.on("data", (c: Buffer) => (text += c.toString()));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, text, socket: req.socket }));
      },
    );
    req.on("error", reject);
    req.end(opts.body);
  });
}

let caPem: Buffer;

async function issueServerCert(name: string): Promise<void> {
  const ext = path.join(work, `${name}.ext`);
  await writeFile(ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  await run("openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", path.join(work, `${name}.key`), "-out", path.join(work, `${name}.csr`), "-subj", `/CN=${name}`]);
  await run("openssl", ["x509", "-req", "-in", path.join(work, `${name}.csr`), "-CA", path.join(pki, "ca.pem"), "-CAkey", path.join(pki, "ca.key"), "-CAcreateserial", "-days", "2", "-out", path.join(work, `${name}.pem`), "-extfile", ext]);
}

async function issueExpiredAgent(): Promise<void> {
  const dir = path.join(work, "expired");
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, "ca.cnf"), "[ca]\ndefault_ca=x\n[x]\ndatabase=idx\nnew_certs_dir=.\nserial=ser\ndefault_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n[ext]\nextendedKeyUsage=clientAuth\n");
  await writeFile(path.join(dir, "idx"), "");
  await writeFile(path.join(dir, "ser"), "1000\n");
  await run("openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", path.join(dir, "agent.key"), "-out", path.join(dir, "agent.csr"), "-subj", "/CN=expired-agent"]);
  await run("openssl", ["ca", "-batch", "-config", "ca.cnf", "-extensions", "ext", "-cert", path.join(pki, "ca.pem"), "-keyfile", path.join(pki, "ca.key"), "-in", "agent.csr", "-out", "agent.pem", "-startdate", "20200101000000Z", "-enddate", "20200102000000Z"], { cwd: dir });
}

/** Catalog entries, staged uploads and published archives: a handshake refused adds to none of them. */
async function stored(): Promise<StoredCounts> {
  return storedCounts(dataDir);
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-tls-"));
  pki = path.join(work, "pki");
  dataDir = path.join(work, "data");
  await run("bash", [path.join(ROOT, "scripts/dev-pki.sh"), "--other-ca", "--agent", "agent-1", "--agent", "agent-2", pki]);
  await issueExpiredAgent();
  caPem = await file("ca.pem");
  // the server certificate lives in files the test can replace (rotation)
  await writeFile(path.join(work, "live.pem"), await file("server.pem"));
  await writeFile(path.join(work, "live.key"), await file("server.key"));
  port = await freePort();
  responderPort = await freePort();
  proc = spawn(process.execPath, [path.join(ROOT, "dist/src/main.js")], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? "",
      CARVE_CONFIG: path.join(ROOT, "conf/carve-server.yml"),
      CARVE_PORT: String(port),
      CARVE_RESPONDER_PORT: String(responderPort),
      CARVE_DATA_DIR: dataDir,
      CARVE_TLS_CERT: path.join(work, "live.pem"),
      CARVE_TLS_KEY: path.join(work, "live.key"),
      CARVE_TLS_CLIENT_CA: path.join(pki, "ca.pem"),
      CARVE_REQUIRE_SAME_CERTIFICATE: "true",
      CARVE_MIN_FREE_DISK: "0",
      CARVE_MAX_RECEIVING_CARVES_PER_AGENT: "0",
      LOG_LEVEL: "info",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  proc.stdout?.on("data", (c: Buffer) => output.push(c.toString()));
  proc.stderr?.on("data", (c: Buffer) => output.push(c.toString()));
  exited = new Promise((resolve) => proc.once("exit", (code) => resolve(code)));
  const cert = await file("agents/agent-1.pem");
  const key = await file("agents/agent-1.key");
  for (let i = 0; ; i++) {
    try {
      if ((await request(`https://127.0.0.1:${port}/status`, { cert, key })).status === 200) break;
    } catch {
      if (i > 200) throw new Error(`service did not start:\n${output.join("")}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
});

afterAll(async () => {
  proc.kill("SIGTERM");
  await exited;
  await rm(work, { recursive: true, force: true });
});

async function carve(agent: string): Promise<{ id: string; bytes: Buffer; status: string }> {
  const bytes = randomBytes(20 * 4096 + 7);
  const archivePath = path.join(work, `${randomUUID()}.bin`);
  await writeFile(archivePath, bytes);
  const result = await runCarve({
    baseUrl: `https://127.0.0.1:${port}`,
    startEndpoint: "/start_uploads",
    continueEndpoint: "/upload_blocks",
    archivePath,
    blockSize: 4096,
    retryDelaysMs: [50, 100],
    tls: { ca: caPem, cert: await file(`${agent}.pem`), key: await file(`${agent}.key`), servername: "localhost" },
  });
  return { id: result.carveId, bytes, status: result.status };
}

describe("HTTPS and mutual TLS served directly", () => {
  it("carves byte-exact over HTTPS and records the agent certificate's identity", async () => {
    const { id, bytes, status } = await carve("agents/agent-1");
    expect(status).toBe("SUCCESS");
    expect(sha256(await readFile(path.join(dataDir, "carves", `${id}.tar`)))).toBe(sha256(bytes));
    const entry = peekEntry(dataDir, id);
    const x509 = new X509Certificate(await file("agents/agent-1.pem"));
    expect(entry?.agent.certificate).toEqual({
      subjectDn: expect.stringContaining("CN=agent-1") as string,
      fingerprintSha256: x509.fingerprint256,
      source: "tls",
    });
  });

  // Exactly how each is refused (test/support/tls-probe.ts): with no certificate OpenSSL sends the
  // certificate_required alert; a certificate OpenSSL lets through (TLS 1.3 lets the client finish first)
  // but Node's verification rejects, another CA's or an expired one, gets the connection closed right after
  // the handshake, before a byte of HTTP. Either way the client trusted the server: the refusal is the server's.
  const REFUSAL: Record<string, HandshakeOutcome> = {
    none: "alert ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "other-ca/agent": "closed after the handshake",
    expired: "closed after the handshake",
  };
  it.each([
    ["no certificate", null],
    ["a certificate from another CA", "other-ca/agent"],
    ["an expired certificate", "expired"],
  ])("refuses %s in the TLS handshake and stores nothing", async (_label, which) => {
    const before = await stored();
    const client =
      which === null
        ? null
        : which === "expired"
          ? { cert: await readFile(path.join(work, "expired/agent.pem")), key: await readFile(path.join(work, "expired/agent.key")) }
          : { cert: await file(`${which}.pem`), key: await file(`${which}.key`) };
    expect(await probeHandshake({ port, ca: caPem, client })).toBe(REFUSAL[which ?? "none"]);
    // A start sent by a client that writes at once (as agents do) gets no reply and stores nothing; which of
    // these errors it sees is the race the probe avoids (tls-probe.ts), never an answer.
    const body = JSON.stringify({ block_count: 1, block_size: 10, carve_size: 10, carve_id: randomUUID(), request_id: "r", node_key: "" });
    const sent = await request(`https://127.0.0.1:${port}/start_uploads`, { ...(client ?? {}), method: "POST", body }).then(
      (r) => `answered ${r.status}`,
      (e: NodeJS.ErrnoException) => e.code ?? e.message,
    );
    expect(sent).toMatch(/^(ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED|ECONNRESET|EPIPE)$/);
    expect(await stored()).toEqual(before);
    // the agent with a good certificate is still served: the refusals did not take the service down
    expect(await probeHandshake({ port, ca: caPem, client: { cert: await file("agents/agent-1.pem"), key: await file("agents/agent-1.key") } })).toBe("accepted");
  });

  it("refuses blocks from another certificate than the start's (binding on), non-JSON", async () => {
    const a1 = { cert: await file("agents/agent-1.pem"), key: await file("agents/agent-1.key") };
    const a2 = { cert: await file("agents/agent-2.pem"), key: await file("agents/agent-2.key") };
    const start = { block_count: 1, block_size: 5, carve_size: 5, carve_id: randomUUID(), request_id: randomUUID(), node_key: "" };
    const started = await request(`https://127.0.0.1:${port}/start_uploads`, { ...a1, method: "POST", body: JSON.stringify(start) });
    const { session_id } = JSON.parse(started.text) as { session_id: string };
    const block = JSON.stringify({ block_id: 0, session_id, request_id: start.request_id, data: Buffer.from("hello").toString("base64") });
    const refused = await request(`https://127.0.0.1:${port}/upload_blocks`, { ...a2, method: "POST", body: block });
    expect(refused.status).toBe(403);
    expect(refused.text).toMatch(/^refused: CERTIFICATE_MISMATCH/);
    const ok = await request(`https://127.0.0.1:${port}/upload_blocks`, { ...a1, method: "POST", body: block });
    expect(ok.text).toBe('{"success":true}');
  });

  it("serves the responder API on its own listener, without client certificates", async () => {
    const noCert = await request(`https://127.0.0.1:${responderPort}/api/v1/carves`);
    expect(noCert.status).toBe(503); // reached the responder API (no Vault configured in this test)
    expect(noCert.text).toContain("VAULT_NOT_CONFIGURED");
    const agentPath = await request(`https://127.0.0.1:${responderPort}/start_uploads`, { method: "POST", body: "{}" });
    expect(agentPath.status).toBe(404);
    const a1 = { cert: await file("agents/agent-1.pem"), key: await file("agents/agent-1.key") };
    expect((await request(`https://127.0.0.1:${port}/api/v1/carves`, a1)).status).toBe(404);
  });

  it("reloads the server certificate on SIGHUP while a carve is in flight, and the carve completes", async () => {
    await issueServerCert("rotated");
    const before = new X509Certificate(await file("server.pem")).fingerprint256;
    const after = new X509Certificate(await readFile(path.join(work, "rotated.pem"))).fingerprint256;
    const a1 = { cert: await file("agents/agent-1.pem"), key: await file("agents/agent-1.key") };
    // An agent's keep-alive connection, opened under the old certificate, carries the carve across the reload.
    const pool = new https.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const send = async (body: unknown): Promise<{ text: string; socket: tls.TLSSocket }> => {
        const { text, socket } = await request(`https://127.0.0.1:${port}/upload_blocks`, { ...a1, method: "POST", body: JSON.stringify(body), agent: pool });
        return { text, socket: socket as tls.TLSSocket };
      };
      const bytes = randomBytes(8 * 4096 + 7);
      const blocks = Math.ceil(bytes.length / 4096);
      const start = { block_count: blocks, block_size: 4096, carve_size: bytes.length, carve_id: randomUUID(), request_id: randomUUID(), node_key: "" };
      const started = await request(`https://127.0.0.1:${port}/start_uploads`, { ...a1, method: "POST", body: JSON.stringify(start), agent: pool });
      const { session_id } = JSON.parse(started.text) as { session_id: string };
      const block = (id: number) => ({ block_id: id, session_id, request_id: start.request_id, data: bytes.subarray(id * 4096, (id + 1) * 4096).toString("base64") });
      const first = await send(block(0));
      expect(first.text).toBe('{"success":true}');
      expect(first.socket.getPeerX509Certificate()?.fingerprint256).toBe(before);
      for (let id = 1; id < blocks / 2; id++) expect((await send(block(id))).text).toBe('{"success":true}');

      await writeFile(path.join(work, "live.pem"), await readFile(path.join(work, "rotated.pem")));
      await writeFile(path.join(work, "live.key"), await readFile(path.join(work, "rotated.key")));
      const reloadsBefore = output.join("").split("TLS certificate, key and CA reloaded").length;
      proc.kill("SIGHUP");
      const deadline = Date.now() + 30_000;
      while (output.join("").split("TLS certificate, key and CA reloaded").length === reloadsBefore) {
        if (Date.now() > deadline) throw new Error(`no reload logged within 30 s:\n${output.join("")}`);
        await new Promise((r) => setTimeout(r, 20));
      }

      expect(await peerFingerprint(), "a new connection is shown the new certificate").toBe(after);
      let last: { text: string; socket: tls.TLSSocket } | undefined;
      for (let id = Math.ceil(blocks / 2); id < blocks; id++) {
        last = await send(block(id));
        expect(last.text).toBe('{"success":true}');
      }
      expect(last?.socket, "the connection opened before the reload").toBe(first.socket);
      // the last block is acknowledged once the carve is complete
      expect(peekEntry(dataDir, start.carve_id)?.state).toBe("complete");
      expect(sha256(await readFile(path.join(dataDir, "carves", `${start.carve_id}.tar`)))).toBe(sha256(bytes));
    } finally {
      pool.destroy();
    }
  });
});

async function peerFingerprint(): Promise<string> {
  const cert = await file("agents/agent-1.pem");
  const key = await file("agents/agent-1.key");
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: "127.0.0.1", port, ca: caPem, servername: "localhost", cert, key }, () => {
      resolve(socket.getPeerX509Certificate()?.fingerprint256 ?? "");
      socket.destroy();
    });
    socket.on("error", reject);
  });
}
