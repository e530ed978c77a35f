/**
 * Through a REAL NGINX with the shipped templates (nginx/templates, rendered the way the official nginx image
 * renders them, only for ports, paths, upstreams and files), a dev PKI made by scripts/dev-pki.sh, the built
 * service as a child process and a stand-in fleet manager (test/support/fleet-manager-double.ts). Issues 5 and 9:
 * mutual TLS, identity headers that clients cannot forge, NGINX's body limit, the fleet-manager split, the
 * --tls_node_api path form, rate limiting per certificate, the no-manager variant and the unsafe lab mode.
 */
import { spawn, execFile, type ChildProcess } from "node:child_process";
import { X509Certificate, createHash, randomBytes, randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import http2 from "node:http2";
import https from "node:https";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import tls from "node:tls";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildCarveArchive, runCarve, type CarveTlsOptions } from "../../scripts/emulator/index.js";
import { blockBodyLimit } from "../../src/http/agent-routes.js";
import { maskNodeKeyInUrl } from "../../src/http/logging.js";
import { sha256 } from "../support/carve-data.js";
import { peekEntries, peekEntry, type PeekedEntry } from "../support/catalog-peek.js";
import { filesContaining } from "../support/data-dir.js";
import { grpcFrame, startFleetManagerDouble, type FleetManagerDouble } from "../support/fleet-manager-double.js";
import { ROOT, freePort, spawnService, type ChildService } from "../support/service.js";
import { startVaultDouble, type VaultDouble } from "../support/vault-double.js";

const run = promisify(execFile);
const TEMPLATES = path.join(ROOT, "nginx/templates");
const FAST_RETRIES = [20, 40];
/** The largest block the service accepts in these tests (kept small so the 413 case is cheap). */
const MAX_BLOCK = 256 * 1024;

// ---------------------------------------------------------------------------------------------------------------
// Harness: PKI, template rendering, NGINX as a child process
// ---------------------------------------------------------------------------------------------------------------

interface Pki {
  dir: string;
  ca: string;
  /** PEM of each agent certificate and key by name */
  agents: Record<string, { cert: string; key: string }>;
  other: { cert: string; key: string };
  responder: { cert: string; key: string };
}

async function makePki(dir: string, agentNames: string[]): Promise<Pki> {
  await run("bash", [
    path.join(ROOT, "scripts/dev-pki.sh"),
    "--other-ca",
    ...agentNames.flatMap((a) => ["--agent", a]),
    dir,
  ]);
  const pem = (p: string): Promise<string> => readFile(path.join(dir, p), "utf8");
  const agents: Pki["agents"] = {};
  for (const name of agentNames)
    agents[name] = { cert: await pem(`agents/${name}.pem`), key: await pem(`agents/${name}.key`) };
  return {
    dir,
    ca: await pem("ca.pem"),
    agents,
    other: { cert: await pem("other-ca/agent.pem"), key: await pem("other-ca/agent.key") },
    responder: { cert: await pem("responder.pem"), key: await pem("responder.key") },
  };
}

/** NGINX's own client-body size for a maximum block size: docs/deployment.md, ceil(1.34 x B) + 64 KiB, in KiB. */
function clientMaxBodySize(maxBlockSize: number): string {
  return `${Math.ceil((Math.ceil(1.34 * maxBlockSize) + 65536) / 1024)}k`;
}

/**
 * Renders the templates like the official nginx image's 20-envsubst-on-templates.sh: every *.template below the
 * templates directory, keeping subdirectories, `$VAR` / `${VAR}` replaced for DEFINED variables only.
 */
async function renderTemplates(vars: Record<string, string>, outDir: string): Promise<string[]> {
  const rendered: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const entry of await readdir(path.join(TEMPLATES, rel), { withFileTypes: true })) {
      const relPath = path.join(rel, entry.name);
      if (entry.isDirectory()) await walk(relPath);
      else if (entry.name.endsWith(".template")) {
        const text = await readFile(path.join(TEMPLATES, relPath), "utf8");
        const out = text.replace(
          /\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g,
          (m, a?: string, b?: string) => {
            const name = a ?? b ?? "";
            return Object.hasOwn(vars, name) ? (vars[name] as string) : m;
          },
        );
        const target = path.join(outDir, relPath.slice(0, -".template".length));
        await mkdir(path.dirname(target), { recursive: true });
        await writeFile(target, out);
        rendered.push(target);
      }
    }
  };
  await walk("");
  return rendered;
}

/** NGINX_BIN, else nginx on PATH, else Debian's /usr/sbin/nginx (not on every user's PATH). */
function nginxBinary(): string {
  if (process.env.NGINX_BIN) return process.env.NGINX_BIN;
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    if (dir && existsSync(path.join(dir, "nginx"))) return path.join(dir, "nginx");
  }
  return "/usr/sbin/nginx";
}

interface NginxInstance {
  dir: string;
  agentUrl: string;
  responderUrl: string;
  agentPort: number;
  responderPort: number;
  stderr: string[];
  accessLog(): Promise<string>;
  stop(): Promise<void>;
}

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

/**
 * Starts NGINX in the foreground with the rendered templates included in http {}, as the official image's
 * nginx.conf does; pid file, temp paths and logs inside a temporary prefix directory.
 */
async function startNginx(
  vars: (ports: { agent: number; responder: number; dir: string }) => Record<string, string>,
): Promise<NginxInstance> {
  const dir = await mkdtemp(path.join(tmpdir(), "carve-nginx-"));
  // Workers may run as "nobody" when the tests run as root: let them reach the temp directories.
  await chmod(dir, 0o755);
  const ports = { agent: await freePort(), responder: await freePort(), dir };
  const values = vars(ports);
  const files = await renderTemplates(values, path.join(dir, "conf.d"));
  for (const f of files) {
    const left = /\$\{[A-Za-z_][A-Za-z0-9_]*\}/.exec(await readFile(f, "utf8"));
    if (left) throw new Error(`${f}: template variable ${left[0]} was not given`);
  }
  await writeFile(
    path.join(dir, "nginx.conf"),
    [
      "daemon off;",
      "worker_processes 1;",
      "pid nginx.pid;",
      "error_log stderr notice;",
      "events { worker_connections 256; }",
      "http {",
      "  client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi;",
      "  uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;",
      "  include conf.d/*.conf;",
      "}",
      "",
    ].join("\n"),
  );
  await mkdir(path.join(dir, "tmp"), { recursive: true });
  const proc: ChildProcess = spawn(
    nginxBinary(),
    ["-p", `${dir}/`, "-c", path.join(dir, "nginx.conf"), "-e", "stderr"],
    {
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const stderr: string[] = [];
  const collect = (c: Buffer): void => {
    for (const line of c.toString("utf8").split("\n")) if (line) stderr.push(line);
  };
  proc.stdout?.on("data", collect);
  proc.stderr?.on("data", collect);
  let exitCode: number | null | undefined;
  const exited = new Promise<void>((resolve) => {
    proc.once("exit", (code) => {
      exitCode = code;
      resolve();
    });
    // No nginx binary: say so (.ci/run installs Debian's nginx when it is missing).
    proc.once("error", (err) => {
      stderr.push(`cannot run ${nginxBinary()}: ${err.message} (install nginx, or set NGINX_BIN)`);
      exitCode = -1;
      resolve();
    });
  });
  const deadline = Date.now() + 30_000;
  while (!((await listening(ports.agent)) && (await listening(ports.responder)))) {
    if (exitCode !== undefined) throw new Error(`nginx exited with ${exitCode}:\n${stderr.join("\n")}`);
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`nginx did not start:\n${stderr.join("\n")}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return {
    dir,
    agentPort: ports.agent,
    responderPort: ports.responder,
    agentUrl: `https://127.0.0.1:${ports.agent}`,
    responderUrl: `https://127.0.0.1:${ports.responder}`,
    stderr,
    accessLog: async () => {
      const file = values.NGINX_ACCESS_LOG ?? "";
      return existsSync(file) ? readFile(file, "utf8") : "";
    },
    stop: async () => {
      if (exitCode === undefined) {
        proc.kill("SIGTERM");
        const timer = setTimeout(() => proc.kill("SIGKILL"), 5000);
        await exited;
        clearTimeout(timer);
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Every template variable, for a front on ephemeral loopback ports in front of `carveUpstream`. */
function frontVars(
  pki: Pki,
  ports: { agent: number; responder: number; dir: string },
  carveUpstream: string,
  overrides: Record<string, string>,
): Record<string, string> {
  return {
    NGINX_AGENT_LISTEN: `127.0.0.1:${ports.agent}`,
    NGINX_RESPONDER_LISTEN: `127.0.0.1:${ports.responder}`,
    NGINX_SERVER_NAME: "localhost",
    NGINX_TLS_CERT: path.join(pki.dir, "server.pem"),
    NGINX_TLS_KEY: path.join(pki.dir, "server.key"),
    NGINX_AGENT_MTLS: "on",
    NGINX_AGENT_CA: path.join(pki.dir, "ca.pem"),
    NGINX_RESPONDER_CA: path.join(pki.dir, "ca.pem"),
    NGINX_RESPONDER_VERIFY_CLIENT: "optional",
    NGINX_ACCESS_LOG: path.join(ports.dir, "access.log"),
    NGINX_CLIENT_MAX_BODY_SIZE: clientMaxBodySize(MAX_BLOCK),
    NGINX_CARVE_RATE: "200r/s",
    NGINX_CARVE_BURST: "400",
    NGINX_FLEET_RATE: "200r/s",
    NGINX_FLEET_BURST: "400",
    NGINX_FLEET_MAX_BODY_SIZE: "20m",
    NGINX_RESPONDER_RATE: "50r/s",
    NGINX_RESPONDER_BURST: "100",
    NGINX_RESPONDER_MAX_BODY_SIZE: "64m",
    CARVE_UPSTREAM: carveUpstream,
    CARVE_START_PATH: "/start_uploads",
    CARVE_CONTINUE_PATH: "/upload_blocks",
    NGINX_FLEET_MANAGER: "on",
    FLEET_UPSTREAM: "127.0.0.1:9",
    FLEET_TLS_NAME: "localhost",
    FLEET_TLS_VERIFY: "on",
    FLEET_CA: path.join(pki.dir, "ca.pem"),
    ...overrides,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------------------------

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

interface ClientTls {
  cert?: string;
  key?: string;
}

function request(
  url: string,
  options: { method?: string; headers?: Record<string, string>; body?: string | Buffer; tls?: ClientTls; ca: string; agent?: https.Agent },
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const body = options.body ?? "";
    const req = https.request(
      url,
      {
        method: options.method ?? "POST",
        headers: {
          "content-type": "application/json",
          "content-length": String(Buffer.byteLength(body)),
          ...options.headers,
        },
        ca: options.ca,
        servername: "localhost",
        agent: options.agent ?? false,
        ...(options.tls?.cert ? { cert: options.tls.cert, key: options.tls.key } : {}),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }),
        );
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

function isJson(text: string): boolean {
  if (text === "") return true;
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

function fingerprint(pem: string): string {
  return new X509Certificate(pem).fingerprint256;
}

function startBody(overrides: Record<string, unknown> = {}): string {
  return JSON.stringify({
    block_count: 1,
    block_size: 1024,
    carve_size: 1000,
    carve_id: randomUUID(),
    request_id: randomUUID(),
    node_key: "",
    ...overrides,
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Shared fixtures: one PKI, one service, one fleet-manager double
// ---------------------------------------------------------------------------------------------------------------

let work: string;
let pki: Pki;
let svc: ChildService;
let svcUpstream: string;
let dataDir: string;
let fleet: FleetManagerDouble;
let vault: VaultDouble;
const RESPONDER_TOKEN = `hvs.CAE${randomBytes(12).toString("hex")}`;

function assertCatalog(): void {
  // peekEntry finds nothing in a catalog that is not there: "no entry" must mean an empty answer of the real one
  if (!existsSync(path.join(dataDir, "catalog.sqlite"))) throw new Error(`no catalog.sqlite in ${dataDir}`);
}

/** The carve's catalog entry (catalog.sqlite, read beside the running service), or null. */
function readEntry(carveId: string): PeekedEntry | null {
  assertCatalog();
  return peekEntry(dataDir, carveId);
}

/** Everything stored for any carve: catalog entries, staged uploads (sessions/) and archives (carves/). */
async function storedCarveIds(): Promise<string[]> {
  assertCatalog();
  return [
    ...peekEntries(dataDir).map((e) => `catalog:${e.carveId}`),
    ...(await readdir(path.join(dataDir, "sessions"))).map((n) => `sessions:${n}`),
    ...(await readdir(path.join(dataDir, "carves"))).map((n) => `carves:${n}`),
  ].sort();
}

function keyDigest(nodeKey: string): string {
  return createHash("sha256").update(nodeKey, "utf8").digest("hex");
}

async function randomArchive(
  size: number,
): Promise<{ archive: Awaited<ReturnType<typeof buildCarveArchive>>; carveId: string }> {
  const src = path.join(work, `src-${randomUUID()}.bin`);
  await writeFile(src, randomBytes(size));
  const carveId = randomUUID();
  const archive = await buildCarveArchive({
    paths: [src],
    carveId,
    outFile: path.join(work, `${carveId}.tar`),
    paxTimes: true,
  });
  return { archive, carveId };
}

async function storedBytes(carveId: string): Promise<Buffer> {
  return readFile(path.join(dataDir, "carves", `${carveId}.tar`));
}

function agent(name: string): { cert: string; key: string } {
  const a = pki.agents[name];
  if (!a) throw new Error(`no agent certificate ${name}`);
  return a;
}

function agentTls(name: string): CarveTlsOptions {
  const a = agent(name);
  return { ca: pki.ca, cert: a.cert, key: a.key, servername: "localhost" };
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-front-"));
  pki = await makePki(path.join(work, "pki"), ["agent-1", "agent-2", "agent-3", "agent-rate"]);
  dataDir = path.join(work, "data");
  vault = await startVaultDouble();
  vault.addToken(RESPONDER_TOKEN, { policies: ["osquery-carve-download"], displayName: "ldap-responder" });
  svc = await spawnService({
    CARVE_DATA_DIR: dataDir,
    LOG_LEVEL: "debug",
    CARVE_MAX_BLOCK_SIZE: String(MAX_BLOCK),
    VAULT_ADDR: vault.url,
  });
  svcUpstream = new URL(svc.url).host;
  fleet = await startFleetManagerDouble({
    cert: await readFile(path.join(pki.dir, "server.pem")),
    key: await readFile(path.join(pki.dir, "server.key")),
  });
});

afterAll(async () => {
  await fleet?.close();
  await vault?.close();
  if (svc) {
    svc.proc.kill("SIGTERM");
    await svc.exited;
  }
  await rm(work, { recursive: true, force: true });
});

/** Waits until a fresh start request's log line is in the service output: every line logged before it is too. */
async function logBarrier(): Promise<void> {
  const marker = randomUUID();
  const res = await fetch(`${svc.url}/start_uploads`, { method: "POST", body: startBody({ carve_id: marker }) });
  expect(res.status).toBe(200);
  const deadline = Date.now() + 30_000;
  while (!svc.output.some((l) => l.includes(marker))) {
    if (Date.now() > deadline) throw new Error("the marker start was never logged");
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** No service log line may ever carry a node key. */
function serviceLogsContain(secret: string): boolean {
  return svc.output.some((l) => l.includes(secret));
}

// ---------------------------------------------------------------------------------------------------------------

describe("NGINX front with a fleet manager, mutual TLS", () => {
  let front: NginxInstance;
  beforeAll(async () => {
    front = await startNginx((ports) => frontVars(pki, ports, svcUpstream, { FLEET_UPSTREAM: fleet.address }));
  });
  afterAll(async () => {
    await front?.stop();
  });

  it("carves byte-exact with an agent certificate (largest block) and records that certificate's identity", async () => {
    const { archive, carveId } = await randomArchive(2 * MAX_BLOCK + 5000);
    const result = await runCarve({
      baseUrl: front.agentUrl,
      startEndpoint: "/start_uploads",
      continueEndpoint: "/upload_blocks",
      archivePath: archive.path,
      carveId,
      blockSize: MAX_BLOCK,
      tls: agentTls("agent-1"),
      retryDelaysMs: FAST_RETRIES,
    });
    expect(result.status).toBe("SUCCESS");
    expect(result.blockCount).toBe(3);
    const meta = readEntry(carveId);
    expect(meta?.state).toBe("complete");
    expect(meta?.sha256).toBe(archive.sha256);
    expect(sha256(await storedBytes(carveId))).toBe(archive.sha256);
    expect(meta?.agent.certificate).toEqual({
      subjectDn: "CN=agent-1,OU=agents,O=osquery-carve-server dev",
      fingerprintSha256: fingerprint(agent("agent-1").cert),
      source: "proxy",
    });
    expect(meta?.agent.address).toBe("127.0.0.1");
    // The carve went to the carve service only.
    expect(fleet.requests.some((r) => r.path.includes("upload"))).toBe(false);
    // The service reused NGINX's request id: NGINX's access log and the service's log share it.
    const log = await front.accessLog();
    const ids = [
      ...log.matchAll(
        /"request_id":"([0-9a-f]{32})","remote_addr":"127\.0\.0\.1","method":"POST","uri":"\/upload_blocks"/g,
      ),
    ].map((m) => m[1]);
    expect(ids.length).toBeGreaterThanOrEqual(3);
    expect(svc.output.some((l) => l.includes(`"${ids[0]}"`))).toBe(true);
  });

  it("refuses a client without a certificate or with one from another CA: NGINX's non-JSON 400, nothing stored, the fleet manager never asked", async () => {
    const before = await storedCarveIds();
    const fleetBefore = fleet.requests.length;
    const { archive } = await randomArchive(3000);
    for (const tls of [
      { ca: pki.ca, servername: "localhost" },
      { ca: pki.ca, cert: pki.other.cert, key: pki.other.key, servername: "localhost" },
    ]) {
      const result = await runCarve({
        baseUrl: front.agentUrl,
        startEndpoint: "/start_uploads",
        continueEndpoint: "/upload_blocks",
        archivePath: archive.path,
        tls,
        retryDelaysMs: FAST_RETRIES,
      });
      expect(result.status).toBe("START FAILED");
      expect(result.requests.every((r) => r.statusCode === 400 && r.error === "non-JSON reply")).toBe(true);
      const config = await request(`${front.agentUrl}/api/v1/osquery/config`, { body: "{}", ca: pki.ca, tls });
      expect(config.status).toBe(400);
      expect(isJson(config.body)).toBe(false);
    }
    // Forging the identity headers without a certificate changes nothing.
    const forged = await request(`${front.agentUrl}/start_uploads`, {
      body: startBody(),
      ca: pki.ca,
      headers: {
        "X-Client-Verify": "SUCCESS",
        "X-Client-Subject-DN": "CN=agent-1,OU=agents,O=osquery-carve-server dev",
        "X-Client-Cert": encodeURIComponent(agent("agent-1").cert),
      },
    });
    expect(forged.status).toBe(400);
    expect(forged.body).toContain("No required SSL certificate was sent");
    expect(await storedCarveIds()).toEqual(before);
    expect(fleet.requests.length).toBe(fleetBefore);
  });

  it("never lets identity headers a client sends reach the service or the fleet manager", async () => {
    const carveId = randomUUID();
    const other = agent("agent-2").cert;
    const forgedHeaders = {
      "X-Client-Verify": "SUCCESS",
      "x-client-subject-dn": "CN=somebody-else",
      "X-CLIENT-CERT": encodeURIComponent(other),
      "X-Real-IP": "10.6.6.6",
      "X-Forwarded-For": "10.6.6.6",
      "X-Request-Id": "forged-request-id",
    };
    const start = await request(`${front.agentUrl}/start_uploads`, {
      body: startBody({ carve_id: carveId }),
      ca: pki.ca,
      tls: agent("agent-1"),
      headers: forgedHeaders,
    });
    expect(start.status).toBe(200);
    expect(start.headers["x-request-id"]).toMatch(/^[0-9a-f]{32}$/);
    const meta = readEntry(carveId);
    expect(meta?.agent.certificate?.subjectDn).toBe("CN=agent-1,OU=agents,O=osquery-carve-server dev");
    expect(meta?.agent.certificate?.fingerprintSha256).toBe(fingerprint(agent("agent-1").cert));
    expect(meta?.agent.address).toBe("127.0.0.1");

    const res = await request(`${front.agentUrl}/api/v1/osquery/config`, {
      body: JSON.stringify({ node_key: "k" }),
      ca: pki.ca,
      tls: agent("agent-1"),
      headers: forgedHeaders,
    });
    expect(res.status).toBe(200);
    const seen = fleet.requests.at(-1);
    expect(seen?.path).toBe("/api/v1/osquery/config");
    expect(seen?.headers["x-client-verify"]).toBe("SUCCESS");
    expect(seen?.headers["x-client-subject-dn"]).toBe("CN=agent-1,OU=agents,O=osquery-carve-server dev");
    expect(fingerprint(decodeURIComponent(String(seen?.headers["x-client-cert"])))).toBe(
      fingerprint(agent("agent-1").cert),
    );
    expect(seen?.headers["x-real-ip"]).toBe("127.0.0.1");
    expect(seen?.headers["x-forwarded-for"]).toBe("127.0.0.1");
    expect(seen?.headers["x-request-id"]).toMatch(/^[0-9a-f]{32}$/);
  });

  it("answers a block body over client_max_body_size with NGINX's 413 (not JSON): the agent fails the carve, no block stored", async () => {
    const { archive, carveId } = await randomArchive(20_000);
    const result = await runCarve({
      baseUrl: front.agentUrl,
      startEndpoint: "/start_uploads",
      continueEndpoint: "/upload_blocks",
      archivePath: archive.path,
      carveId,
      blockSize: 8192,
      agentVersion: "5.23.0",
      tls: agentTls("agent-1"),
      retryDelaysMs: FAST_RETRIES,
      inject: {
        // A body beyond the limit NGINX derives from the largest block (as if a block were far larger).
        mutateBody: (kind, _id, _attempt, body) =>
          kind === "block" ? { ...body, padding: "x".repeat(2 * MAX_BLOCK) } : body,
      },
    });
    expect(result.status).toBe("DATA POST FAILED");
    const blocks = result.requests.filter((r) => r.kind === "block");
    expect(blocks.length).toBe(3); // 5.22+: three attempts, then abort
    for (const r of blocks) {
      expect(r.statusCode).toBe(413);
      expect(r.error).toBe("non-JSON reply");
      expect(r.body).toContain("413 Request Entity Too Large");
    }
    const meta = readEntry(carveId);
    expect(meta?.state).toBe("receiving");
    expect(existsSync(path.join(dataDir, "carves", `${carveId}.tar`))).toBe(false);
    // The limit itself admits the largest block the service accepts (checked in the first test by carving one).
    expect(Number.parseInt(clientMaxBodySize(MAX_BLOCK), 10) * 1024).toBeGreaterThanOrEqual(blockBodyLimit(MAX_BLOCK));
  });

  it("sends the agent's config, log, distributed and enroll requests to the fleet manager with the agent's identity, and its carve to the carve service", async () => {
    const paths = [
      "/api/v1/osquery/enroll",
      "/api/v1/osquery/config",
      "/api/v1/osquery/log",
      "/api/v1/osquery/distributed/read",
      "/api/v1/osquery/distributed/write",
      "/api/v1/osquery/carve/begin", // Fleet's own carve endpoints stay Fleet's
    ];
    const from = fleet.requests.length;
    for (const p of paths) {
      const res = await request(front.agentUrl + p, {
        body: JSON.stringify({ node_key: "fleet-node-key" }),
        ca: pki.ca,
        tls: agent("agent-2"),
        headers: { "user-agent": "osquery/5.23.0" },
      });
      expect(res.status).toBe(200);
      expect(isJson(res.body)).toBe(true);
    }
    const seen = fleet.requests.slice(from);
    expect(seen.map((r) => r.path)).toEqual(paths);
    for (const r of seen) {
      expect(r.method).toBe("POST");
      expect(r.httpVersion).toBe("1.1");
      expect(r.headers["x-client-verify"]).toBe("SUCCESS");
      expect(r.headers["x-client-subject-dn"]).toBe("CN=agent-2,OU=agents,O=osquery-carve-server dev");
      expect(fingerprint(decodeURIComponent(String(r.headers["x-client-cert"])))).toBe(
        fingerprint(agent("agent-2").cert),
      );
      expect(r.headers["user-agent"]).toBe("osquery/5.23.0");
      expect(JSON.parse(r.body.toString("utf8"))).toEqual({ node_key: "fleet-node-key" });
    }
    // The same agent's carve reaches the carve service, not the manager.
    const { archive, carveId } = await randomArchive(30_000);
    const result = await runCarve({
      baseUrl: front.agentUrl,
      startEndpoint: "/start_uploads",
      continueEndpoint: "/upload_blocks",
      archivePath: archive.path,
      carveId,
      blockSize: 8192,
      tls: agentTls("agent-2"),
      retryDelaysMs: FAST_RETRIES,
    });
    expect(result.status).toBe("SUCCESS");
    expect(sha256(await storedBytes(carveId))).toBe(archive.sha256);
    expect(readEntry(carveId)?.agent.certificate?.subjectDn).toBe(
      "CN=agent-2,OU=agents,O=osquery-carve-server dev",
    );
    expect(fleet.requests.slice(from).length).toBe(paths.length);
    // Agents do not reach the responder API through the agent port: /api/v1/ there is the manager's.
    await request(`${front.agentUrl}/api/v1/carves`, { method: "GET", ca: pki.ca, tls: agent("agent-2") });
    expect(fleet.requests.at(-1)?.path).toBe("/api/v1/carves");
  });

  it("passes gRPC (launcher-style agents, HTTP/2) through to the fleet manager with the agent's identity", async () => {
    const a = agent("agent-3");
    const session = http2.connect(front.agentUrl, { ca: pki.ca, cert: a.cert, key: a.key, servername: "localhost" });
    try {
      const reply = await new Promise<{ status: number; grpcStatus: string | undefined }>((resolve, reject) => {
        const stream = session.request({
          ":method": "POST",
          ":path": "/kolide.agent.Api/RequestConfig",
          "content-type": "application/grpc",
          te: "trailers",
        });
        let status = 0;
        stream.on("response", (h) => {
          status = Number(h[":status"]);
        });
        let grpcStatus: string | undefined;
        stream.on("trailers", (t: http2.IncomingHttpHeaders) => {
          grpcStatus = String(t["grpc-status"]);
        });
        stream.on("data", () => undefined);
        stream.on("end", () => resolve({ status, grpcStatus }));
        stream.on("error", reject);
        stream.end(grpcFrame(Buffer.from("config please")));
      });
      expect(reply).toEqual({ status: 200, grpcStatus: "0" });
    } finally {
      session.close();
    }
    const seen = fleet.requests.at(-1);
    expect(seen?.path).toBe("/kolide.agent.Api/RequestConfig");
    expect(seen?.grpc).toBe(true);
    expect(seen?.httpVersion).toBe("2.0");
    expect(seen?.headers["x-client-subject-dn"]).toBe("CN=agent-3,OU=agents,O=osquery-carve-server dev");
    expect(seen?.body.subarray(5).toString()).toBe("config please");
  });

  it("carves byte-exact in the --tls_node_api form, records the path's node key, and logs it nowhere", async () => {
    const nodeKey = `nk-${randomUUID()}`;
    const { archive, carveId } = await randomArchive(40_000);
    const result = await runCarve({
      baseUrl: front.agentUrl,
      startEndpoint: "/start_uploads",
      continueEndpoint: "/upload_blocks",
      nodeApiKey: nodeKey,
      nodeKey: "", // an agent whose start body carries no node key: the path's is recorded
      archivePath: archive.path,
      carveId,
      blockSize: 8192,
      tls: agentTls("agent-1"),
      retryDelaysMs: FAST_RETRIES,
    });
    expect(result.status).toBe("SUCCESS");
    expect(result.requests.every((r) => r.statusCode === 200)).toBe(true);
    expect(sha256(await storedBytes(carveId))).toBe(archive.sha256);
    // only the key's SHA-256 is kept: the key itself, the node's enrollment secret, is written nowhere
    expect(readEntry(carveId)?.nodeKeySha256).toBe(keyDigest(nodeKey));

    // osquery 5.x also puts the node key in the start body: that one is recorded. And the body-routed "/<key>/".
    const bodyKey = `body-${randomUUID()}`;
    const second = await randomArchive(10_000);
    const result2 = await runCarve({
      baseUrl: front.agentUrl,
      startEndpoint: "/",
      continueEndpoint: "/",
      nodeApiKey: nodeKey,
      nodeKey: bodyKey,
      archivePath: second.archive.path,
      carveId: second.carveId,
      blockSize: 4096,
      tls: agentTls("agent-1"),
      retryDelaysMs: FAST_RETRIES,
    });
    expect(result2.status).toBe("SUCCESS");
    expect(sha256(await storedBytes(second.carveId))).toBe(second.archive.sha256);
    expect(readEntry(second.carveId)?.nodeKeySha256).toBe(keyDigest(bodyKey));

    // An agent with --tls_node_api but no node key yet sends "//start_uploads": NGINX matches it as
    // /start_uploads (merge_slashes) and passes the URI on as sent; the service takes it as an empty node key.
    const emptyKeyId = randomUUID();
    const emptyKey = await request(`${front.agentUrl}//start_uploads`, {
      body: startBody({ carve_id: emptyKeyId }),
      ca: pki.ca,
      tls: agent("agent-1"),
    });
    expect(emptyKey.status).toBe(200);
    expect(readEntry(emptyKeyId)).toMatchObject({ carveId: emptyKeyId, nodeKeySha256: null });
    expect(await filesContaining(dataDir, nodeKey)).toEqual([]);
    expect(await filesContaining(dataDir, bodyKey)).toEqual([]);

    await logBarrier();
    expect(serviceLogsContain(nodeKey)).toBe(false);
    expect(serviceLogsContain(bodyKey)).toBe(false);
    expect(svc.output.some((l) => l.includes('"url":"/[node-key]/start_uploads"'))).toBe(true);
    const access = await front.accessLog();
    expect(access).not.toContain(nodeKey);
    expect(access).toContain('"uri":"/[node-key]/upload_blocks"');
    expect(access).toContain('"uri":"/[node-key]/"');
    expect(fleet.requests.some((r) => r.path.includes(nodeKey))).toBe(false);
  });

  it("lets a responder download a carve with curl through NGINX with a Vault token, in full and resumed", async () => {
    const { archive, carveId } = await randomArchive(3 * MAX_BLOCK + 777);
    const result = await runCarve({
      baseUrl: front.agentUrl,
      startEndpoint: "/start_uploads",
      continueEndpoint: "/upload_blocks",
      archivePath: archive.path,
      carveId,
      blockSize: MAX_BLOCK,
      tls: agentTls("agent-1"),
    });
    expect(result.status).toBe("SUCCESS");
    const url = `${front.responderUrl}/api/v1/carves/${carveId}/archive`;
    const out = path.join(work, `${carveId}.download.tar`);
    const curl = (...args: string[]) =>
      promisify(execFile)("curl", ["-fsS", "--cacert", path.join(pki.dir, "ca.pem"), "-H", `X-Vault-Token: ${RESPONDER_TOKEN}`, ...args], {
        timeout: 30_000,
      });
    await curl("-o", out, url);
    expect(sha256(await readFile(out))).toBe(archive.sha256);
    // an interrupted download, resumed with curl -C - (HTTP Range through NGINX)
    await writeFile(out, (await readFile(out)).subarray(0, MAX_BLOCK + 3));
    await curl("-C", "-", "-o", out, url);
    expect(sha256(await readFile(out))).toBe(archive.sha256);
    // without a token: 401, nothing sent
    const denied = await request(url, { method: "GET", ca: pki.ca });
    expect(denied.status).toBe(401);
    expect(denied.body).not.toContain(RESPONDER_TOKEN);
    expect(svc.output.some((l) => l.includes(RESPONDER_TOKEN))).toBe(false);
  });

  it("routes the responder paths on the responder port to the service, and nothing else", async () => {
    const fromFleet = fleet.requests.length;
    const before = await storedCarveIds();
    // Without a client certificate (verify optional) and with the responder's. The responder API is someone
    // else's: whatever it answers, the request must have reached the service (it logs NGINX's request id).
    for (const tls of [undefined, pki.responder]) {
      const list = await request(`${front.responderUrl}/api/v1/carves`, {
        method: "GET",
        ca: pki.ca,
        ...(tls ? { tls } : {}),
      });
      const fileRequest = await request(`${front.responderUrl}/file_request`, {
        body: "{}",
        ca: pki.ca,
        ...(tls ? { tls } : {}),
      });
      for (const res of [list, fileRequest]) {
        expect(res.status).not.toBe(502);
        const id = String(res.headers["x-request-id"]);
        expect(id).toMatch(/^[0-9a-f]{32}$/);
        await expect.poll(() => svc.output.some((l) => l.includes(`"id":"${id}"`))).toBe(true);
      }
    }
    // The web console, with the service's own security headers through the front.
    const consolePage = await request(`${front.responderUrl}/console/`, { method: "GET", ca: pki.ca });
    expect(consolePage.status).toBe(200);
    expect(String(consolePage.headers["content-security-policy"])).toContain("frame-ancestors 'none'");
    expect(consolePage.headers["referrer-policy"]).toBe("no-referrer");
    // The agent endpoints are not served there.
    const start = await request(`${front.responderUrl}/start_uploads`, {
      body: startBody(),
      ca: pki.ca,
      tls: pki.responder,
    });
    expect(start.status).toBe(404);
    expect(isJson(start.body)).toBe(false);
    expect(await storedCarveIds()).toEqual(before);
    // A certificate the responder CA did not issue is refused by NGINX even in "optional" mode.
    const bad = await request(`${front.responderUrl}/api/v1/carves`, { method: "GET", ca: pki.ca, tls: pki.other });
    expect(bad.status).toBe(400);
    expect(fleet.requests.length).toBe(fromFleet);
  });
});

describe("NGINX front without a fleet manager, low per-certificate rate", () => {
  // A sequential agent (one request at a time, as osquery sends them) is slowed to the rate, never refused.
  let front: NginxInstance;
  beforeAll(async () => {
    front = await startNginx((ports) =>
      frontVars(pki, ports, svcUpstream, {
        NGINX_FLEET_MANAGER: "off",
        NGINX_CARVE_RATE: "10r/s",
        NGINX_CARVE_BURST: "3",
      }),
    );
  });
  afterAll(async () => {
    await front?.stop();
  });

  it("carves byte-exact; every other path is NGINX's 404", async () => {
    const { archive, carveId } = await randomArchive(10_000);
    const result = await runCarve({
      baseUrl: front.agentUrl,
      startEndpoint: "/start_uploads",
      continueEndpoint: "/upload_blocks",
      archivePath: archive.path,
      carveId,
      blockSize: 4096,
      tls: agentTls("agent-1"),
      retryDelaysMs: FAST_RETRIES,
    });
    expect(result.status).toBe("SUCCESS");
    expect(result.requests.every((r) => r.statusCode === 200)).toBe(true); // slowed to 10 r/s, never refused
    expect(sha256(await storedBytes(carveId))).toBe(archive.sha256);
    const from = fleet.requests.length;
    const config = await request(`${front.agentUrl}/api/v1/osquery/config`, {
      body: "{}",
      ca: pki.ca,
      tls: agent("agent-1"),
    });
    expect(config.status).toBe(404);
    expect(isJson(config.body)).toBe(false);
    expect(fleet.requests.length).toBe(from);
  });

  it("delays requests over the rate, answers 429 (not JSON) past the burst for one certificate, and not for another", async () => {
    let replies: Reply[] = [];
    let sentAt = 0;
    // 20 TLS connections opened first (through a location that answers before limit_req), so the 20 carve
    // requests reach NGINX within a few milliseconds however slow handshakes are on a busy machine.
    const pool = new https.Agent({ keepAlive: true, maxSockets: 20 });
    try {
      const warm = await Promise.all(
        Array.from({ length: 20 }, () =>
          request(`${front.agentUrl}/api/v1/osquery/config`, { body: "{}", ca: pki.ca, tls: agent("agent-rate"), agent: pool }),
        ),
      );
      expect(warm.map((r) => r.status)).toEqual(Array.from({ length: 20 }, () => 404));
      expect(Object.values(pool.freeSockets).flat().length).toBe(20);
      sentAt = Date.now();
      replies = await Promise.all(
        Array.from({ length: 20 }, () =>
          request(`${front.agentUrl}/start_uploads`, { body: startBody(), ca: pki.ca, tls: agent("agent-rate"), agent: pool }),
        ),
      );
    } finally {
      pool.destroy();
    }
    const elapsed = (Date.now() - sentAt) / 1000;
    // 10 r/s with 3 waiting at most: one served at once, 3 queued and released at the rate, the rest refused.
    // Whatever the machine's speed, in `elapsed` seconds the limiter lets through at most 1 + 3 + 10 r/s of
    // it (NGINX counts in milliseconds: one more for rounding); on a slow machine the requests spread out and
    // more are served, never more than that. Every other request is refused, not queued for ever.
    const served = replies.filter((r) => r.status === 200);
    const limited = replies.filter((r) => r.status === 429);
    expect(served.length + limited.length, JSON.stringify(replies.map((r) => r.status))).toBe(20);
    expect(served.length).toBeGreaterThanOrEqual(1);
    expect(served.length, `served in ${elapsed} s`).toBeLessThanOrEqual(1 + 3 + Math.ceil(10 * elapsed) + 1);
    expect(limited.every((r) => !isJson(r.body))).toBe(true);
    // Another agent certificate has its own budget.
    const other = await request(`${front.agentUrl}/start_uploads`, {
      body: startBody(),
      ca: pki.ca,
      tls: agent("agent-2"),
    });
    expect(other.status).toBe(200);
  });
});

describe("NGINX front in the UNSAFE lab mode (no client certificates)", () => {
  let front: NginxInstance;
  beforeAll(async () => {
    front = await startNginx((ports) =>
      frontVars(pki, ports, svcUpstream, { NGINX_FLEET_MANAGER: "off", NGINX_AGENT_MTLS: "off-UNSAFE" }),
    );
  });
  afterAll(async () => {
    await front?.stop();
  });

  it("carves without a certificate, says so on every response, and still drops forged identity headers", async () => {
    const { archive, carveId } = await randomArchive(5000);
    const result = await runCarve({
      baseUrl: front.agentUrl,
      startEndpoint: "/start_uploads",
      continueEndpoint: "/upload_blocks",
      archivePath: archive.path,
      carveId,
      blockSize: 4096,
      tls: { ca: pki.ca, servername: "localhost" },
      retryDelaysMs: FAST_RETRIES,
    });
    expect(result.status).toBe("SUCCESS");
    expect(readEntry(carveId)).toMatchObject({ carveId, agent: { certificate: null } });

    const forgedId = randomUUID();
    const res = await request(`${front.agentUrl}/start_uploads`, {
      body: startBody({ carve_id: forgedId }),
      ca: pki.ca,
      headers: {
        "X-Client-Verify": "SUCCESS",
        "X-Client-Subject-DN": "CN=agent-1,OU=agents,O=osquery-carve-server dev",
        "X-Client-Cert": encodeURIComponent(agent("agent-1").cert),
      },
    });
    expect(res.status).toBe(200);
    expect(res.headers["x-carve-front-warning"]).toMatch(/UNSAFE/);
    expect(readEntry(forgedId)).toMatchObject({ carveId: forgedId, agent: { certificate: null } });
  });
});

describe("--tls_node_api on the service itself (no NGINX)", () => {
  async function post(p: string, body: string): Promise<{ status: number; text: string }> {
    const res = await fetch(svc.url + p, { method: "POST", headers: { "content-type": "application/json" }, body });
    return { status: res.status, text: await res.text() };
  }

  it("accepts /<node_key>/<endpoint> and /<node_key>/, prefers the body's node key, and never logs the path's", async () => {
    const key = `svc-${randomUUID()}+=:@`;
    const a = randomUUID();
    expect((await post(`/${key}/start_uploads`, startBody({ carve_id: a, node_key: "" }))).status).toBe(200);
    expect(readEntry(a)?.nodeKeySha256).toBe(keyDigest(key));
    const b = randomUUID();
    expect((await post(`/${key}/`, startBody({ carve_id: b, node_key: "from-body" }))).status).toBe(200);
    expect(readEntry(b)?.nodeKeySha256).toBe(keyDigest("from-body"));
    const c = randomUUID();
    const started = await post(`/${key}/start_uploads`, startBody({ carve_id: c, carve_size: 10, block_size: 10 }));
    const sessionId = (JSON.parse(started.text) as { session_id: string }).session_id;
    const block = await post(
      `/${key}/upload_blocks`,
      JSON.stringify({
        block_id: 0,
        session_id: sessionId,
        request_id: "x",
        data: Buffer.alloc(10).toString("base64"),
      }),
    );
    expect(block.status).toBe(403); // request_id mismatch: routed to the block handler, refused non-JSON
    expect(isJson(block.text)).toBe(false);
    // "/<key>" alone (what empty endpoint flags give with --tls_node_api) and keys with "%" or "/" are unknown paths.
    for (const p of [`/${key}`, `/${key}%2Fx/start_uploads`]) {
      const res = await post(p, startBody());
      expect(res.status).toBe(404);
      expect(isJson(res.text)).toBe(false);
    }
    // The service's own first segments are never taken for a node key.
    for (const p of ["/api/", "/file_request/", "/status/"]) {
      const id = randomUUID();
      await post(p, startBody({ carve_id: id }));
      expect(readEntry(id)).toBeNull();
    }
    // A later request's log line is out: everything the requests above logged is in the output too.
    await logBarrier();
    expect(serviceLogsContain(key)).toBe(false);
    expect(serviceLogsContain(key.slice(0, 40))).toBe(false);
    expect(await filesContaining(dataDir, key)).toEqual([]);
  });

  it("masks the first segment of paths unless they are agent endpoints or the service's own routes", () => {
    const known = ["/start_uploads", "/upload_blocks"];
    expect(maskNodeKeyInUrl("/abc/start_uploads", known)).toBe("/[node-key]/start_uploads");
    expect(maskNodeKeyInUrl("/abc/", known)).toBe("/[node-key]/");
    expect(maskNodeKeyInUrl("/abc", known)).toBe("/[node-key]");
    expect(maskNodeKeyInUrl("/abc/upload_blocks?x=1", known)).toBe("/[node-key]/upload_blocks?x=[redacted]");
    expect(maskNodeKeyInUrl("/start_uploads", known)).toBe("/start_uploads");
    expect(maskNodeKeyInUrl("/start_uploads%20", known)).toBe("/start_uploads%20"); // a mistyped flag stays readable
    expect(maskNodeKeyInUrl("/", known)).toBe("/");
    expect(maskNodeKeyInUrl("/status", known)).toBe("/status");
    expect(maskNodeKeyInUrl("/api/v1/carves/x/download", known)).toBe("/api/v1/carves/x/download");
    expect(maskNodeKeyInUrl("/carve/start", ["/carve/start"])).toBe("/carve/start");
    expect(maskNodeKeyInUrl("/k/carve/start", ["/carve/start"])).toBe("/[node-key]/carve/start");
    expect(maskNodeKeyInUrl("/whatever/path", known)).toBe("/[node-key]/path"); // every method: the safe side
  });
});

describe("slow bodies through NGINX (issue 15 item 3: NGINX streams bodies, proxy_request_buffering off)", () => {
  let front: NginxInstance;
  let slowSvc: ChildService;
  beforeAll(async () => {
    slowSvc = await spawnService({
      CARVE_DATA_DIR: path.join(work, "slow-data"),
      LOG_LEVEL: "info",
      CARVE_MAX_BLOCK_SIZE: String(MAX_BLOCK),
      CARVE_MIN_BODY_RATE_WINDOW_SECONDS: "2",
    });
    front = await startNginx((ports) => frontVars(pki, ports, new URL(slowSvc.url).host, { NGINX_FLEET_MANAGER: "off" }));
  });
  afterAll(async () => {
    await front?.stop();
    slowSvc?.proc.kill("SIGKILL");
    await slowSvc?.exited;
  });

  it("50 bodies announcing the largest block body and sending 1 byte/s with an agent certificate: another agent carves meanwhile, the slow ones are cut off", async () => {
    const a = agent("agent-1");
    const slow = Array.from({ length: 50 }, () => {
      const socket = tls.connect({ host: "127.0.0.1", port: front.agentPort, ca: pki.ca, cert: a.cert, key: a.key, servername: "localhost" });
      let raw = "";
      socket.on("data", (c: Buffer) => (raw += c.toString("utf8")));
      socket.on("error", () => undefined);
      const closed = new Promise<string>((resolve) => socket.on("close", () => resolve(raw)));
      const headSent = new Promise<void>((resolve) =>
        socket.once("secureConnect", () =>
          socket.write(`POST /upload_blocks HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${blockBodyLimit(MAX_BLOCK)}\r\n\r\n`, () => resolve()),
        ),
      );
      return { socket, closed, headSent };
    });
    const ticker = setInterval(() => slow.forEach((c) => c.socket.writable && c.socket.write("[")), 1000);
    try {
      // every slow request's head is sent (through the handshake) before the other agent starts
      await Promise.all(slow.map((c) => c.headSent));
      const { archive, carveId } = await randomArchive(3 * MAX_BLOCK + 100);
      const result = await runCarve({
        baseUrl: front.agentUrl,
        startEndpoint: "/start_uploads",
        continueEndpoint: "/upload_blocks",
        archivePath: archive.path,
        carveId,
        blockSize: MAX_BLOCK,
        agentVersion: "5.23.0",
        tls: agentTls("agent-2"),
        retryDelaysMs: FAST_RETRIES,
      });
      expect(result.status).toBe("SUCCESS");
      const replies = await Promise.all(slow.map((c) => c.closed));
      for (const raw of replies) {
        const body = raw.slice(raw.indexOf("\r\n\r\n") + 4);
        expect(raw.split("\r\n")[0]).toBe("HTTP/1.1 408 Request Timeout");
        expect(isJson(body) && body !== "", `an agent must not count the cut-off as success: ${JSON.stringify(raw.slice(0, 200))}`).toBe(false);
      }
    } finally {
      clearInterval(ticker);
      for (const c of slow) c.socket.destroy();
    }
  }, 120_000);
});
