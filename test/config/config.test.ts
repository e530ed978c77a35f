import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { parse as parseYaml } from "yaml";
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { ConfigError, ENV_OVERRIDES, loadConfig } from "../../src/config/load.js";
import { configSchema } from "../../src/config/schema.js";
import { ROOT } from "../support/service.js";

async function dirWith(yaml?: string): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), "carve-conf-"));
  if (yaml !== undefined) {
    await import("node:fs/promises").then((f) => f.mkdir(path.join(dir, "conf")));
    await writeFile(path.join(dir, "conf/carve-server.yml"), yaml);
  }
  return dir;
}

function problemsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error("expected a ConfigError");
}

describe("configuration", () => {
  it("uses the documented defaults with no file and no environment", async () => {
    const config = loadConfig({ cwd: await dirWith(), env: {} });
    expect(config).toEqual({
      server: {
        host: "127.0.0.1",
        port: 8000,
        shutdownGraceSeconds: 30,
        requestTimeoutSeconds: 60,
        headersTimeoutSeconds: 20,
        tlsHandshakeTimeoutSeconds: 10,
        maxConnections: 4096,
        maxConnectionsPerAddress: 128,
        trustedProxies: ["127.0.0.1", "::1"],
        tls: { watch: false },
        responder: {},
      },
      agent: {
        startPath: "/start_uploads",
        continuePath: "/upload_blocks",
        maxBlockSize: 8 * 1024 * 1024,
        maxCarveSize: 4 * 1024 ** 3,
        inflightBytes: 16 * 1024 * 1024,
        minBodyBytesPerSecond: 500,
        minBodyRateWindowSeconds: 20,
        maxReceivingCarves: 1000,
        maxReceivingCarvesPerAgent: 20,
        firstBlockWithinSeconds: 600,
        requireSameCertificate: false,
      },
      import: { maxSize: 4 * 1024 ** 3 },
      audit: { unauthenticatedWindowSeconds: 60 },
      listing: { maxMembers: 100_000, maxBytesExamined: 8 * 1024 ** 3 },
      storage: {
        backend: "filesystem",
        filesystem: { dataDir: "./data", fsyncEachBlock: false, minFreeBytes: 1024 ** 3 },
        gridfs: { database: "osquery_carves", bucket: "carves" },
        blobs: "local",
        s3: { prefix: "carves/", forcePathStyle: false, sse: "none", partSize: 8 * 1024 * 1024 },
      },
      vault: {
        timeoutMs: 5000,
        policy: "osquery-carve-download",
        adminPolicy: "osquery-carve-admin",
        authMode: "policy",
        pathTemplate: "osquery-carves/{carve_id}",
        auditPath: "osquery-carves-admin/audit",
        importPolicy: "osquery-carve-import",
        importPath: "osquery-carves-import/import",
        cacheSeconds: 30,
      },
      retention: {
        enabled: true,
        days: 30,
        abandonedAfterHours: 6,
        intervalMinutes: 60,
        batchSize: 100,
        maxBatchesPerRun: 20,
        staleDeleteAfterMinutes: 10,
      },
      logging: { level: "info" },
    });
    expect(Object.isFrozen(config.agent)).toBe(true);
  });

  it("ships a conf/carve-server.yml that documents every key with the built-in default", () => {
    const shipped = parseYaml(readFileSync(path.join(ROOT, "conf/carve-server.yml"), "utf8")) as unknown;
    expect(configSchema.parse(shipped)).toEqual(configSchema.parse({}));
    const text = readFileSync(path.join(ROOT, "conf/carve-server.yml"), "utf8");
    for (const name of Object.keys(ENV_OVERRIDES)) expect(text, `${name} documented`).toContain(name);
  });

  it("lets the environment override the file", async () => {
    const cwd = await dirWith("server:\n  port: 9000\nagent:\n  maxBlockSize: 1MiB\n");
    const config = loadConfig({
      cwd,
      env: {
        CARVE_PORT: "9100",
        CARVE_HOST: "0.0.0.0",
        CARVE_STORAGE: "filesystem",
        CARVE_DATA_DIR: "/srv/carves",
        CARVE_MAX_CARVE_SIZE: "2GiB",
        CARVE_FSYNC_EACH_BLOCK: "true",
        LOG_LEVEL: "warn",
        CARVE_TRUSTED_PROXIES: "10.0.0.5, 10.1.0.0/16",
      },
    });
    expect(config.server.trustedProxies).toEqual(["10.0.0.5", "10.1.0.0/16"]);
    expect(config.server).toMatchObject({ port: 9100, host: "0.0.0.0" });
    expect(config.agent.maxBlockSize).toBe(1024 * 1024);
    expect(config.agent.maxCarveSize).toBe(2 * 1024 ** 3);
    expect(config.storage.filesystem).toEqual({ dataDir: "/srv/carves", fsyncEachBlock: true, minFreeBytes: 1024 ** 3 });
    expect(config.logging.level).toBe("warn");
  });

  it("reads the file named by CARVE_CONFIG and fails if it is missing", async () => {
    const cwd = await dirWith();
    await writeFile(path.join(cwd, "other.yml"), "server:\n  port: 8123\n");
    expect(loadConfig({ cwd, env: { CARVE_CONFIG: "other.yml" } }).server.port).toBe(8123);
    const problems = problemsOf(() => loadConfig({ cwd, env: { CARVE_CONFIG: "missing.yml" } }));
    expect(problems.join("\n")).toMatch(/missing\.yml/);
  });

  it("reports every problem at once, naming the environment variable that caused it", async () => {
    const cwd = await dirWith("server:\n  prot: 1\nagent:\n  startPath: no-slash\n");
    const problems = problemsOf(() =>
      loadConfig({
        cwd,
        env: {
          CARVE_PORT: "99999",
          CARVE_STORAGE: "s3",
          CARVE_MAX_BLOCK_SIZE: "lots",
          LOG_LEVEL: "loud",
          CARVE_FSYNC_EACH_BLOCK: "maybe",
          CARVE_TRUSTED_PROXIES: "10.0.0.1,nginx.local",
        },
      }),
    );
    const text = problems.join("\n");
    expect(text).toMatch(/server: .*prot/i);
    expect(text).toMatch(/agent\.startPath/);
    expect(text).toMatch(/server\.port \(from CARVE_PORT\)/);
    expect(text).toMatch(/storage\.backend \(from CARVE_STORAGE\)/);
    expect(text).toMatch(/agent\.maxBlockSize \(from CARVE_MAX_BLOCK_SIZE\).*not a byte size/);
    expect(text).toMatch(/logging\.level \(from LOG_LEVEL\)/);
    expect(text).toMatch(/CARVE_FSYNC_EACH_BLOCK: expected true or false/);
    expect(text).toMatch(/server\.trustedProxies \(from CARVE_TRUSTED_PROXIES\): each entry must be an IP/);
    expect(problems.length).toBeGreaterThanOrEqual(8);
  });

  it("refuses inconsistent limits and paths", async () => {
    const cwd = await dirWith();
    const problems = problemsOf(() =>
      loadConfig({
        cwd,
        env: { CARVE_MAX_BLOCK_SIZE: "16MiB", CARVE_MAX_CARVE_SIZE: "1MiB", CARVE_START_PATH: "/x", CARVE_CONTINUE_PATH: "/x" },
      }),
    );
    expect(problems.join("\n")).toMatch(/maxBlockSize.*: must not exceed/);
    expect(problems.join("\n")).toMatch(/continuePath.*: must differ/);
    expect(problemsOf(() => loadConfig({ cwd, env: { CARVE_MAX_BLOCK_SIZE: "1GiB" } })).join()).toMatch(/between/);
  });

  it("requires a MongoDB URI for the gridfs backend", async () => {
    const cwd = await dirWith();
    expect(problemsOf(() => loadConfig({ cwd, env: { CARVE_STORAGE: "gridfs" } })).join()).toMatch(
      /storage\.gridfs\.uri: required/,
    );
    expect(problemsOf(() => loadConfig({ cwd, env: { CARVE_MONGODB_URI: "http://x" } })).join()).toMatch(/mongodb/);
    const ok = loadConfig({ cwd, env: { CARVE_STORAGE: "gridfs", CARVE_MONGODB_URI: "mongodb://127.0.0.1:27017/" } });
    expect(ok.storage.gridfs.uri).toBe("mongodb://127.0.0.1:27017/");
  });

  it("reads the Vault settings from the environment and checks them", async () => {
    const cwd = await dirWith();
    const config = loadConfig({
      cwd,
      env: {
        VAULT_ADDR: "https://vault.example.com:8200/",
        VAULT_NAMESPACE: "/security/ir/",
        CARVE_VAULT_CA_FILE: "/etc/vault-ca.pem",
        CARVE_VAULT_TIMEOUT_MS: "1500",
        CARVE_VAULT_POLICY: "carve-read",
        CARVE_VAULT_ADMIN_POLICY: "carve-admin",
        CARVE_VAULT_AUTH_MODE: "capabilities",
        CARVE_VAULT_PATH_TEMPLATE: "/secret/carves/{carve_id}",
        CARVE_VAULT_AUDIT_PATH: "secret/carves-audit",
        CARVE_VAULT_IMPORT_POLICY: "carve-import",
        CARVE_VAULT_IMPORT_PATH: "/secret/carves-import/new",
        CARVE_VAULT_CACHE_SECONDS: "0",
      },
    });
    expect(config.vault).toEqual({
      address: "https://vault.example.com:8200",
      namespace: "security/ir",
      caFile: "/etc/vault-ca.pem",
      timeoutMs: 1500,
      policy: "carve-read",
      adminPolicy: "carve-admin",
      authMode: "capabilities",
      pathTemplate: "secret/carves/{carve_id}",
      auditPath: "secret/carves-audit",
      importPolicy: "carve-import",
      importPath: "secret/carves-import/new",
      cacheSeconds: 0,
    });
    const problems = problemsOf(() =>
      loadConfig({
        cwd,
        env: {
          VAULT_ADDR: "vault:8200",
          CARVE_VAULT_CACHE_SECONDS: "61",
          CARVE_VAULT_AUTH_MODE: "acl",
          CARVE_VAULT_PATH_TEMPLATE: "osquery-carves/all",
          CARVE_VAULT_POLICY: "Bad Policy",
          CARVE_VAULT_TIMEOUT_MS: "10",
          CARVE_VAULT_IMPORT_POLICY: "Import!",
          CARVE_VAULT_IMPORT_PATH: "carves/{carve_id}",
        },
      }),
    ).join("\n");
    expect(problems).toMatch(/vault\.address \(from VAULT_ADDR\)/);
    expect(problems).toMatch(/vault\.cacheSeconds \(from CARVE_VAULT_CACHE_SECONDS\)/);
    expect(problems).toMatch(/vault\.authMode \(from CARVE_VAULT_AUTH_MODE\)/);
    expect(problems).toMatch(/vault\.pathTemplate \(from CARVE_VAULT_PATH_TEMPLATE\): must contain \{carve_id\}/);
    expect(problems).toMatch(/vault\.policy \(from CARVE_VAULT_POLICY\)/);
    expect(problems).toMatch(/vault\.timeoutMs \(from CARVE_VAULT_TIMEOUT_MS\)/);
    expect(problems).toMatch(/vault\.importPolicy \(from CARVE_VAULT_IMPORT_POLICY\)/);
    expect(problems).toMatch(/vault\.importPath \(from CARVE_VAULT_IMPORT_PATH\): must not contain placeholders/);
  });

  it("reads the largest import size with the byte-size syntax", async () => {
    const cwd = await dirWith("import:\n  maxSize: 1GiB\n");
    expect(loadConfig({ cwd, env: {} }).import.maxSize).toBe(1024 ** 3);
    expect(loadConfig({ cwd, env: { CARVE_MAX_IMPORT_SIZE: "200MB" } }).import.maxSize).toBe(200_000_000);
    expect(loadConfig({ cwd, env: { CARVE_MAX_IMPORT_SIZE: "1048576" } }).import.maxSize).toBe(1024 * 1024);
    expect(problemsOf(() => loadConfig({ cwd, env: { CARVE_MAX_IMPORT_SIZE: "huge" } })).join()).toMatch(
      /import\.maxSize \(from CARVE_MAX_IMPORT_SIZE\): not a byte size/,
    );
    expect(problemsOf(() => loadConfig({ cwd, env: { CARVE_MAX_IMPORT_SIZE: "2TiB" } })).join()).toMatch(/import\.maxSize.*between/);
  });

  it("reports a YAML syntax error with the file name", async () => {
    const cwd = await dirWith("server: [unclosed\n");
    expect(problemsOf(() => loadConfig({ cwd, env: {} })).join()).toMatch(/carve-server\.yml/);
  });
});
