/**
 * Direct TLS: rotation of the CA that verifies agent certificates, by SIGHUP and by CARVE_TLS_WATCH (a file
 * change): after it, an agent of the new CA is accepted and one of the old CA refused in the handshake, while a
 * connection opened before the rotation keeps working. And CARVE_RESPONDER_TLS_CLIENT_CA: the responder port
 * takes only certificates of its own CA. PKI from scripts/dev-pki.sh (its CA and the unrelated "other" CA).
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import https from "node:https";
import type { Socket } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT, freePort } from "../support/service.js";
import { probeHandshake, type HandshakeOutcome } from "../support/tls-probe.js";

const run = promisify(execFile);
let work: string;
let pki: string;
let caPem: Buffer;
let agentA: { cert: Buffer; key: Buffer };
let agentB: { cert: Buffer; key: Buffer };

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-tls-ca-"));
  pki = path.join(work, "pki");
  await run("bash", [path.join(ROOT, "scripts/dev-pki.sh"), "--other-ca", "--agent", "agent-1", pki]);
  caPem = await readFile(path.join(pki, "ca.pem"));
  agentA = { cert: await readFile(path.join(pki, "agents/agent-1.pem")), key: await readFile(path.join(pki, "agents/agent-1.key")) };
  agentB = { cert: await readFile(path.join(pki, "other-ca/agent.pem")), key: await readFile(path.join(pki, "other-ca/agent.key")) };
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** GET over a new connection (or `agent`'s): the status, or the TLS error code that refused it. */
function get(port: number, p: string, client: { cert: Buffer; key: Buffer } | null, agent?: https.Agent): Promise<{ outcome: string; socket?: Socket }> {
  return new Promise((resolve) => {
    const req = https.request(
      {
        host: "127.0.0.1",
        port,
        path: p,
        ca: caPem,
        servername: "localhost",
        agent: agent ?? false,
        ...(client ? { cert: client.cert, key: client.key } : {}),
      },
      (res) => {
        res.resume();
        res.on("end", () => resolve({ outcome: `HTTP ${res.statusCode}`, socket: req.socket as Socket }));
      },
    );
    req.on("error", (e: NodeJS.ErrnoException) => resolve({ outcome: e.code ?? e.message }));
    req.end();
  });
}

/** How the handshake of a new connection ends (test/support/tls-probe.ts): a certificate of a CA the port
 * does not trust is verified and refused by Node right after the handshake, none at all by OpenSSL's alert. */
const handshake = (port: number, client: { cert: Buffer; key: Buffer } | null): Promise<HandshakeOutcome> => probeHandshake({ port, ca: caPem, client });
const REFUSED: HandshakeOutcome = "closed after the handshake";
const NO_CERTIFICATE: HandshakeOutcome = "alert ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED";

interface TlsService {
  proc: ChildProcess;
  port: number;
  responderPort: number | null;
  output: string[];
  exited: Promise<number | null>;
}

/** The built service on TLS ports; up once an agent-1 handshake and GET /status succeed. */
async function startTls(env: Record<string, string>, responder = false): Promise<TlsService> {
  const port = await freePort();
  const responderPort = responder ? await freePort() : null;
  const proc = spawn(process.execPath, [path.join(ROOT, "dist/src/main.js")], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? "",
      CARVE_CONFIG: "/dev/null",
      CARVE_PORT: String(port),
      ...(responderPort ? { CARVE_RESPONDER_PORT: String(responderPort) } : {}),
      CARVE_MIN_FREE_DISK: "0",
      LOG_LEVEL: "info",
      CARVE_TLS_CERT: path.join(pki, "server.pem"),
      CARVE_TLS_KEY: path.join(pki, "server.key"),
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const output: string[] = [];
  const collect = (c: Buffer): void => {
    for (const line of c.toString("utf8").split("\n")) if (line) output.push(line);
  };
  proc.stdout?.on("data", collect);
  proc.stderr?.on("data", collect);
  const exited = new Promise<number | null>((resolve) => proc.once("exit", resolve));
  const deadline = Date.now() + 30_000;
  while ((await get(port, "/status", agentA)).outcome !== "HTTP 200") {
    if (proc.exitCode !== null || Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`service did not start:\n${output.join("\n")}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { proc, port, responderPort, output, exited };
}

async function stop(svc: TlsService | undefined): Promise<void> {
  if (!svc || svc.proc.exitCode !== null) return;
  svc.proc.kill("SIGTERM");
  await svc.exited;
}

async function reloads(svc: TlsService, count: number): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (svc.output.filter((l) => l.includes("TLS certificate, key and CA reloaded")).length < count) {
    if (Date.now() > deadline) throw new Error(`no reload logged within 30 s:\n${svc.output.join("\n")}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe.each([
  ["SIGHUP", false],
  ["CARVE_TLS_WATCH (a file change)", true],
] as const)("agent client CA rotation by %s", (_how, watch) => {
  let svc: TlsService | undefined;
  afterAll(() => stop(svc));

  it("accepts the new CA's agents and refuses the old CA's after it; a connection opened before survives", async () => {
    const liveCa = path.join(work, `live-ca-${watch}.pem`);
    await writeFile(liveCa, caPem);
    svc = await startTls({
      CARVE_DATA_DIR: path.join(work, `data-${watch}`),
      CARVE_TLS_CLIENT_CA: liveCa,
      ...(watch ? { CARVE_TLS_WATCH: "true" } : {}),
    });
    expect(await handshake(svc.port, agentB)).toBe(REFUSED);
    // A keep-alive connection of agent-1, opened under the old CA.
    const pool = new https.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const first = await get(svc.port, "/status", agentA, pool);
      expect(first.outcome).toBe("HTTP 200");

      await writeFile(liveCa, await readFile(path.join(pki, "other-ca/ca.pem")));
      if (!watch) svc.proc.kill("SIGHUP");
      await reloads(svc, 1);

      expect((await get(svc.port, "/status", agentB)).outcome, "an agent of the new CA").toBe("HTTP 200");
      expect(await handshake(svc.port, agentA), "an agent of the old CA, new connection").toBe(REFUSED);
      const again = await get(svc.port, "/status", agentA, pool);
      expect(again.outcome, "the connection opened before the rotation").toBe("HTTP 200");
      expect(again.socket, "the same connection").toBe(first.socket);
    } finally {
      pool.destroy();
    }
  });
});

describe("CARVE_RESPONDER_TLS_CLIENT_CA", () => {
  let svc: TlsService | undefined;
  afterAll(() => stop(svc));

  it("the responder port takes only certificates of its own CA; the agent port keeps the agents' CA", async () => {
    svc = await startTls(
      {
        CARVE_DATA_DIR: path.join(work, "data-responder"),
        CARVE_TLS_CLIENT_CA: path.join(pki, "ca.pem"),
        CARVE_RESPONDER_TLS_CLIENT_CA: path.join(pki, "other-ca/ca.pem"),
      },
      true,
    );
    const rp = svc.responderPort as number;
    expect(await handshake(rp, null), "no certificate").toBe(NO_CERTIFICATE);
    expect(await handshake(rp, agentA), "an agent certificate").toBe(REFUSED);
    // Through the handshake: the API itself answers (503: no Vault configured in this test).
    expect((await get(rp, "/api/v1/carves", agentB)).outcome, "a responder certificate").toBe("HTTP 503");
    expect(await handshake(svc.port, agentB), "the responder CA on the agent port").toBe(REFUSED);
  });
});
