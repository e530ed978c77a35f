/**
 * Users of the seed Go server (CptOfEvilMinions/osquerey-file-carve-server): its test client
 * (tests/osquery_mock_client.py) sends the start as GET with a JSON body, no Content-Type, and an empty
 * request_id; its blocks are POSTed without a Content-Type. The service treats that GET as the start it is
 * (a bodiless GET stays a 404) and the carve completes byte-exact. Its configuration file is read key by
 * key with a warning for each translation.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config/load.js";
import { rawPost } from "../support/raw-http.js";
import { spawnService, startTestService, type TestService } from "../support/service.js";

let svc: TestService;

/** GET with a body, as Python's requests.get(url, data=json.dumps(...)) sends it: no Content-Type. */
function getWithBody(url: string, p: string, body: string | null): Promise<{ status: number; text: string }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { "user-agent": "osquery-python-mock-client" };
    if (body !== null) headers["content-length"] = String(Buffer.byteLength(body));
    const req = http.request({ host: u.hostname, port: Number(u.port), path: p, method: "GET", headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body ?? undefined);
  });
}

beforeAll(async () => {
  svc = await startTestService();
});

afterAll(async () => {
  await svc.dispose();
});

describe("the seed server's test client", () => {
  it("starts with GET + JSON body + no Content-Type + empty request_id, and its blocks complete the carve", async () => {
    const archive = randomBytes(25_000);
    const blockSize = 10_000;
    const carveId = randomUUID();
    const start = await getWithBody(
      svc.url,
      "/start_uploads",
      JSON.stringify({
        block_count: Math.ceil(archive.length / blockSize),
        block_size: blockSize,
        carve_size: archive.length,
        carve_id: carveId,
        request_id: "",
        node_key: "5",
      }),
    );
    expect(start.status).toBe(200);
    const sessionId = (JSON.parse(start.text) as { session_id: string }).session_id;
    expect(sessionId).toMatch(/^[A-Za-z0-9._-]+$/);
    expect(svc.logs.text).toContain("start request sent as GET with a body");

    for (let b = 0; b * blockSize < archive.length; b++) {
      const data = archive.subarray(b * blockSize, (b + 1) * blockSize).toString("base64");
      const body = Buffer.from(JSON.stringify({ block_id: b, session_id: sessionId, request_id: "", data }));
      const r = await rawPost(svc.url, "/upload_blocks", body, { headers: { "user-agent": "osquery-python-mock-client" } });
      expect(r.status, r.text).toBe(200);
    }
    const record = await svc.store.getCarve(carveId);
    expect(record).toMatchObject({ status: "complete", requestId: "", sha256: createHash("sha256").update(archive).digest("hex") });
  });

  it("a GET without a body is no start: 404, nothing created", async () => {
    const r = await getWithBody(svc.url, "/start_uploads", null);
    expect(r.status).toBe(404);
    expect(r.text).not.toContain("session_id");
  });

  it("a GET start with a bad body is refused like a POST one (JSON error, no session)", async () => {
    const r = await getWithBody(svc.url, "/start_uploads", JSON.stringify({ block_count: 1, block_size: 10, carve_size: 999, carve_id: "x", request_id: "" }));
    expect(r.status).toBe(400);
    expect(JSON.parse(r.text)).toMatchObject({ error: { code: "INVALID_START" } });
  });
});

/** The seed's own configuration file, conf/osquery-file-carve/osquery-file-carve.yml, as it ships. */
const SEED_MONGO_YML = `Cleanup:
  time_invterval: 3600      # 1 Hour
  expire_interval: 28800    # 8 Hours
Webserver:
  port: 8000
Storage:
  File:
    enabled: false
    location: '/tmp'
  Mongo:
    enabled: true
    host: 'mongo'
    port: 27017
    pool_size: 5
    database: 'osquery-file-carve'
    username: 'mongo'
    password: 'mongo'
    ssl: false
    options: 'retryWrites=true'
Vault:
  hostname: 'vault.hackinglab.local'
  port: 443
  verifyTLS: true
  policy: 'osquery-file-carve-file-requests'
`;

/** conf/osquery-file-carve/osquery-file-carve-dev-disk.yml, with a key the seed never had. */
const SEED_DISK_YML = `Cleanup:
  time_invterval: 60
  expire_interval: 28800
Webserver:
  port: 8001
  tls: true
Storage:
  File:
    enabled: true
    location: '/srv/seed-carves'
Vault:
  hostname: 'vault.example.com'
  port: 8200
  verifyTLS: false
  policy: 'osquery-file-carve-file-requests'
`;

describe("the seed server's configuration file", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "seed-conf-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("is translated key by key into the native configuration, with a warning per key", async () => {
    const file = path.join(dir, "osquery-file-carve.yml");
    await writeFile(file, SEED_MONGO_YML);
    const warnings: string[] = [];
    const config = loadConfig({ env: { CARVE_CONFIG: file }, cwd: dir, onWarning: (w) => warnings.push(w) });
    expect(config.server.port).toBe(8000);
    expect(config.storage.backend).toBe("gridfs");
    expect(config.storage.gridfs.uri).toBe(
      "mongodb://mongo:mongo@mongo:27017/?authSource=admin&maxPoolSize=5&retryWrites=true",
    );
    expect(config.storage.gridfs.database).toBe("osquery-file-carve");
    expect(config.vault.address).toBe("https://vault.hackinglab.local:443");
    expect(config.vault.policy).toBe("osquery-file-carve-file-requests");
    expect(config.retention.intervalMinutes).toBe(60);
    expect(config.retention.days).toBeCloseTo(1 / 3, 10);

    const said = (seedKey: string): string | undefined => warnings.find((w) => w.includes(`seed configuration: ${seedKey}`));
    expect(said("Webserver.port")).toMatch(/server\.port \(CARVE_PORT\) = 8000/);
    expect(said("Storage.Mongo.enabled")).toMatch(/CARVE_STORAGE\) = "gridfs"/);
    expect(said("Storage.Mongo.host")).toMatch(/CARVE_MONGODB_URI/);
    expect(said("Storage.Mongo.database")).toMatch(/CARVE_MONGODB_DATABASE/);
    expect(said("Vault.hostname")).toMatch(/VAULT_ADDR/);
    expect(said("Vault.policy")).toMatch(/CARVE_VAULT_POLICY/);
    expect(said("Cleanup.time_invterval")).toMatch(/CARVE_RETENTION_INTERVAL_MINUTES/);
    expect(said("Cleanup.expire_interval")).toMatch(/CARVE_RETENTION_DAYS/);
    expect(said("Storage.File.location")).toMatch(/not translated: the Mongo backend is enabled/);
    expect(warnings.some((w) => w.includes("npm run import-seed -- --gridfs"))).toBe(true);
    // The password is never repeated in a warning.
    expect(warnings.join("\n")).not.toContain("mongo:mongo@");
    for (const w of warnings) expect(w.startsWith(`${file}: seed configuration: `)).toBe(true);
  });

  it("the disk variant: data directory, what has no equivalent, and the environment still wins", async () => {
    const file = path.join(dir, "osquery-file-carve-dev-disk.yml");
    await writeFile(file, SEED_DISK_YML);
    const warnings: string[] = [];
    const config = loadConfig({ env: { CARVE_CONFIG: file, CARVE_PORT: "9000" }, cwd: dir, onWarning: (w) => warnings.push(w) });
    expect(config.server.port).toBe(9000);
    expect(config.storage.backend).toBe("filesystem");
    expect(config.storage.filesystem.dataDir).toBe("/srv/seed-carves");
    expect(config.retention.intervalMinutes).toBe(1);
    expect(config.vault.address).toBe("https://vault.example.com:8200");
    expect(warnings.find((w) => w.includes("Webserver.tls"))).toMatch(/not translated: no equivalent/);
    expect(warnings.find((w) => w.includes("Vault.verifyTLS"))).toMatch(/always verifies.*CARVE_VAULT_CA_FILE/);
    expect(warnings.some((w) => w.includes("npm run import-seed -- --dir /srv/seed-carves"))).toBe(true);
  });

  it("the service started with the seed's file says each translation in its log, then serves", async () => {
    const data = path.join(dir, "seed-data");
    const file = path.join(dir, "seed-started.yml");
    await writeFile(file, SEED_DISK_YML.replace("/srv/seed-carves", data));
    const child = await spawnService({ CARVE_CONFIG: file, LOG_LEVEL: "info" });
    try {
      const warned = child.output
        .map((l) => {
          try {
            return JSON.parse(l) as { level?: string; msg?: string };
          } catch {
            return {};
          }
        })
        .filter((e) => e.level === "warn" && (e.msg ?? "").includes("seed configuration: "))
        .map((e) => e.msg ?? "");
      for (const key of ["Webserver.port", "Storage.File.enabled", "Storage.File.location", "Vault.hostname", "Vault.policy", "Cleanup.time_invterval", "Cleanup.expire_interval", "Webserver.tls", "Vault.verifyTLS"]) {
        expect(warned.some((w) => w.includes(`seed configuration: ${key}`)), key).toBe(true);
      }
      expect((await fetch(`${child.url}/status`)).status).toBe(200);
    } finally {
      child.proc.kill("SIGTERM");
      await child.exited;
    }
  });

  it("a native file is not mistaken for a seed one", () => {
    const warnings: string[] = [];
    loadConfig({ onWarning: (w) => warnings.push(w) });
    expect(warnings).toEqual([]);
  });
});
