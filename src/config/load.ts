import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { parse as parseYaml } from "yaml";
import { configSchema, type Config } from "./schema.js";
import { translateSeedConfig } from "./seed-config.js";

/**
 * Environment variables that override conf/carve-server.yml. The names are a public contract
 * (README, docker-compose.yml, nginx templates): rename nothing without a deprecation.
 */
export const ENV_OVERRIDES: Record<string, readonly string[]> = {
  CARVE_HOST: ["server", "host"],
  CARVE_PORT: ["server", "port"],
  CARVE_SHUTDOWN_GRACE_SECONDS: ["server", "shutdownGraceSeconds"],
  CARVE_REQUEST_TIMEOUT_SECONDS: ["server", "requestTimeoutSeconds"],
  CARVE_HEADERS_TIMEOUT_SECONDS: ["server", "headersTimeoutSeconds"],
  CARVE_TLS_HANDSHAKE_TIMEOUT_SECONDS: ["server", "tlsHandshakeTimeoutSeconds"],
  CARVE_MAX_CONNECTIONS: ["server", "maxConnections"],
  CARVE_MAX_CONNECTIONS_PER_ADDRESS: ["server", "maxConnectionsPerAddress"],
  CARVE_TRUSTED_PROXIES: ["server", "trustedProxies"],
  CARVE_TLS_CERT: ["server", "tls", "cert"],
  CARVE_TLS_KEY: ["server", "tls", "key"],
  CARVE_TLS_CLIENT_CA: ["server", "tls", "clientCa"],
  CARVE_TLS_WATCH: ["server", "tls", "watch"],
  CARVE_RESPONDER_PORT: ["server", "responder", "port"],
  CARVE_RESPONDER_HOST: ["server", "responder", "host"],
  CARVE_RESPONDER_TLS_CLIENT_CA: ["server", "responder", "tlsClientCa"],
  CARVE_REQUIRE_SAME_CERTIFICATE: ["agent", "requireSameCertificate"],
  CARVE_START_PATH: ["agent", "startPath"],
  CARVE_CONTINUE_PATH: ["agent", "continuePath"],
  CARVE_MAX_BLOCK_SIZE: ["agent", "maxBlockSize"],
  CARVE_MAX_CARVE_SIZE: ["agent", "maxCarveSize"],
  CARVE_MAX_INFLIGHT_BYTES: ["agent", "inflightBytes"],
  CARVE_MIN_BODY_BYTES_PER_SECOND: ["agent", "minBodyBytesPerSecond"],
  CARVE_MIN_BODY_RATE_WINDOW_SECONDS: ["agent", "minBodyRateWindowSeconds"],
  CARVE_MAX_RECEIVING_CARVES: ["agent", "maxReceivingCarves"],
  CARVE_MAX_RECEIVING_CARVES_PER_AGENT: ["agent", "maxReceivingCarvesPerAgent"],
  CARVE_FIRST_BLOCK_WITHIN_SECONDS: ["agent", "firstBlockWithinSeconds"],
  CARVE_MAX_IMPORT_SIZE: ["import", "maxSize"],
  CARVE_AUDIT_UNAUTHENTICATED_WINDOW_SECONDS: ["audit", "unauthenticatedWindowSeconds"],
  CARVE_LISTING_MAX_MEMBERS: ["listing", "maxMembers"],
  CARVE_LISTING_MAX_BYTES: ["listing", "maxBytesExamined"],
  CARVE_STORAGE: ["storage", "backend"],
  CARVE_DATA_DIR: ["storage", "filesystem", "dataDir"],
  CARVE_FSYNC_EACH_BLOCK: ["storage", "filesystem", "fsyncEachBlock"],
  CARVE_MIN_FREE_DISK: ["storage", "filesystem", "minFreeBytes"],
  CARVE_MONGODB_URI: ["storage", "gridfs", "uri"],
  CARVE_MONGODB_DATABASE: ["storage", "gridfs", "database"],
  CARVE_GRIDFS_BUCKET: ["storage", "gridfs", "bucket"],
  CARVE_BLOBS: ["storage", "blobs"],
  CARVE_S3_ENDPOINT: ["storage", "s3", "endpoint"],
  CARVE_S3_REGION: ["storage", "s3", "region"],
  CARVE_S3_BUCKET: ["storage", "s3", "bucket"],
  CARVE_S3_PREFIX: ["storage", "s3", "prefix"],
  CARVE_S3_FORCE_PATH_STYLE: ["storage", "s3", "forcePathStyle"],
  CARVE_S3_SSE: ["storage", "s3", "sse"],
  CARVE_S3_SSE_KMS_KEY_ID: ["storage", "s3", "sseKmsKeyId"],
  CARVE_S3_PART_SIZE: ["storage", "s3", "partSize"],
  VAULT_ADDR: ["vault", "address"],
  VAULT_NAMESPACE: ["vault", "namespace"],
  CARVE_VAULT_CA_FILE: ["vault", "caFile"],
  CARVE_VAULT_TIMEOUT_MS: ["vault", "timeoutMs"],
  CARVE_VAULT_POLICY: ["vault", "policy"],
  CARVE_VAULT_ADMIN_POLICY: ["vault", "adminPolicy"],
  CARVE_VAULT_AUTH_MODE: ["vault", "authMode"],
  CARVE_VAULT_PATH_TEMPLATE: ["vault", "pathTemplate"],
  CARVE_VAULT_AUDIT_PATH: ["vault", "auditPath"],
  CARVE_VAULT_IMPORT_POLICY: ["vault", "importPolicy"],
  CARVE_VAULT_IMPORT_PATH: ["vault", "importPath"],
  CARVE_VAULT_CACHE_SECONDS: ["vault", "cacheSeconds"],
  CARVE_RETENTION_ENABLED: ["retention", "enabled"],
  CARVE_RETENTION_DAYS: ["retention", "days"],
  CARVE_ABANDONED_AFTER_HOURS: ["retention", "abandonedAfterHours"],
  CARVE_RETENTION_INTERVAL_MINUTES: ["retention", "intervalMinutes"],
  CARVE_RETENTION_BATCH_SIZE: ["retention", "batchSize"],
  LOG_LEVEL: ["logging", "level"],
};

/** Keys whose environment value is a boolean. */
const BOOLEAN_ENV = new Set([
  "CARVE_FSYNC_EACH_BLOCK",
  "CARVE_REQUIRE_SAME_CERTIFICATE",
  "CARVE_RETENTION_ENABLED",
  "CARVE_TLS_WATCH",
  "CARVE_S3_FORCE_PATH_STYLE",
]);

export const DEFAULT_CONFIG_FILE = "conf/carve-server.yml";

export class ConfigError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(`invalid configuration:\n  - ${problems.join("\n  - ")}`);
    this.name = "ConfigError";
    this.problems = problems;
  }
}

export interface LoadOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Told about things that work but deserve a word (a seed server's file translated key by key). */
  onWarning?: (message: string) => void;
}

function setPath(target: Record<string, unknown>, keys: readonly string[], value: unknown): void {
  let node = target;
  for (const key of keys.slice(0, -1)) {
    const next = node[key];
    if (typeof next !== "object" || next === null || Array.isArray(next)) {
      node[key] = {};
    }
    node = node[key] as Record<string, unknown>;
  }
  node[keys[keys.length - 1] as string] = value;
}

/**
 * Loads the configuration: the YAML file (CARVE_CONFIG, else conf/carve-server.yml when present, else
 * built-in defaults), then environment overrides, then validation. Every problem is reported at once in a
 * ConfigError; the result is deeply frozen.
 *
 * @throws ConfigError when the file cannot be read or parsed, or any value is invalid.
 */
export function loadConfig(options: LoadOptions = {}): Config {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  const problems: string[] = [];
  let raw: Record<string, unknown> = {};

  const explicit = env.CARVE_CONFIG;
  const file = explicit ? path.resolve(cwd, explicit) : path.resolve(cwd, DEFAULT_CONFIG_FILE);
  if (explicit || existsSync(file)) {
    try {
      const parsed: unknown = parseYaml(readFileSync(file, "utf8"));
      if (parsed === null || parsed === undefined) raw = {};
      else if (typeof parsed === "object" && !Array.isArray(parsed)) raw = parsed as Record<string, unknown>;
      else problems.push(`${file}: top level must be a mapping`);
      const seed = translateSeedConfig(raw);
      if (seed) {
        raw = seed.raw;
        for (const w of seed.warnings) options.onWarning?.(`${file}: ${w}`);
      }
    } catch (err) {
      problems.push(`${file}: ${err instanceof Error ? err.message.split("\n")[0] : String(err)}`);
    }
  }

  for (const [name, keys] of Object.entries(ENV_OVERRIDES)) {
    const value = env[name];
    if (value === undefined || value === "") continue;
    if (BOOLEAN_ENV.has(name)) {
      if (/^(1|true|yes|on)$/i.test(value)) setPath(raw, keys, true);
      else if (/^(0|false|no|off)$/i.test(value)) setPath(raw, keys, false);
      else problems.push(`${name}: expected true or false, got ${JSON.stringify(value)}`);
      continue;
    }
    setPath(raw, keys, value);
  }

  const result = configSchema.safeParse(raw);
  if (!result.success) {
    const envByPath = new Map(Object.entries(ENV_OVERRIDES).map(([name, keys]) => [keys.join("."), name]));
    for (const issue of result.error.issues) {
      const where = issue.path.join(".") || "(top level)";
      const envName = envByPath.get(where);
      const source = envName && env[envName] ? ` (from ${envName})` : "";
      problems.push(`${where}${source}: ${issue.message}`);
    }
  }
  if (problems.length > 0 || !result.success) throw new ConfigError(problems);
  return deepFreeze(result.data);
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === "object") {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
