/**
 * Reads the configuration file of the seed Go server (CptOfEvilMinions/osquerey-file-carve-server,
 * conf/osquery-file-carve/osquery-file-carve.yml) so its users can start this service with the file they
 * have. Each seed key is translated into this service's configuration with a warning naming both, so the
 * operator can write the native file (conf/carve-server.yml) at leisure; keys with no equivalent are named
 * in a warning and ignored. docs/migrating-from-the-go-server.md has the table.
 */

/** The seed's top-level sections; a file with any of them (and none of ours) is a seed file. */
const SEED_SECTIONS = ["Webserver", "Storage", "Vault", "Cleanup"] as const;
const NATIVE_SECTIONS = ["server", "agent", "import", "storage", "vault", "retention", "logging"];

export interface SeedTranslation {
  /** The equivalent native configuration (before environment overrides and validation). */
  raw: Record<string, unknown>;
  /** One line per seed key: how it was translated, or why it was not. */
  warnings: string[];
}

type Mapping = Record<string, unknown>;

function isMapping(v: unknown): v is Mapping {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

export function isSeedConfig(raw: Mapping): boolean {
  const keys = Object.keys(raw);
  return keys.some((k) => (SEED_SECTIONS as readonly string[]).includes(k)) && !keys.some((k) => NATIVE_SECTIONS.includes(k));
}

function set(target: Mapping, path: string, value: unknown): void {
  const keys = path.split(".");
  let node = target;
  for (const key of keys.slice(0, -1)) {
    if (!isMapping(node[key])) node[key] = {};
    node = node[key] as Mapping;
  }
  node[keys[keys.length - 1] as string] = value;
}

/** The seed's Mongo connection string (pkg/database/initMongo.go builds it the same way, authSource=admin). */
function mongoUri(mongo: Mapping): string {
  const host = typeof mongo.host === "string" && mongo.host !== "" ? mongo.host : "localhost";
  const port = typeof mongo.port === "number" ? mongo.port : 27017;
  const user = typeof mongo.username === "string" ? mongo.username : "";
  const password = typeof mongo.password === "string" ? mongo.password : "";
  const auth = user !== "" && password !== "" ? `${encodeURIComponent(user)}:${encodeURIComponent(password)}@` : "";
  const params = new URLSearchParams({ authSource: "admin" });
  if (mongo.ssl === true) params.set("tls", "true");
  if (typeof mongo.pool_size === "number") params.set("maxPoolSize", String(mongo.pool_size));
  let query = params.toString();
  if (typeof mongo.options === "string" && mongo.options.trim() !== "") query += `&${mongo.options.trim().replace(/^[?&]+/, "")}`;
  return `mongodb://${auth}${host}:${port}/?${query}`;
}

/**
 * @returns the translation, or null when `raw` is not a seed file.
 */
export function translateSeedConfig(raw: Mapping): SeedTranslation | null {
  if (!isSeedConfig(raw)) return null;
  const out: Mapping = {};
  const warnings: string[] = [];
  const said = (seedKey: string, native: string, env: string, shown: unknown): void => {
    warnings.push(`seed configuration: ${seedKey} read as ${native} (${env}) = ${JSON.stringify(shown)}`);
  };
  const ignored = (seedKey: string, why: string): void => {
    warnings.push(`seed configuration: ${seedKey} not translated: ${why}`);
  };

  for (const [section, value] of Object.entries(raw)) {
    if (!(SEED_SECTIONS as readonly string[]).includes(section)) ignored(section, "not a key of the seed server");
    else if (!isMapping(value)) ignored(section, "not a mapping");
  }

  const web = isMapping(raw.Webserver) ? raw.Webserver : {};
  for (const [key, value] of Object.entries(web)) {
    if (key === "port") {
      set(out, "server.port", value);
      said("Webserver.port", "server.port", "CARVE_PORT", value);
    } else ignored(`Webserver.${key}`, "no equivalent");
  }

  const storage = isMapping(raw.Storage) ? raw.Storage : {};
  const file = isMapping(storage.File) ? storage.File : {};
  const mongo = isMapping(storage.Mongo) ? storage.Mongo : {};
  // The seed used Mongo when Storage.Mongo.enabled, else the disk (main.go setupRoutes).
  if (mongo.enabled === true) {
    set(out, "storage.backend", "gridfs");
    said("Storage.Mongo.enabled", "storage.backend", "CARVE_STORAGE", "gridfs");
    set(out, "storage.gridfs.uri", mongoUri(mongo));
    const shown = mongoUri({ ...mongo, password: typeof mongo.password === "string" && mongo.password !== "" ? "***" : "" });
    said(
      "Storage.Mongo.host/port/username/password/ssl/pool_size/options",
      "storage.gridfs.uri",
      "CARVE_MONGODB_URI",
      shown,
    );
    if (typeof mongo.database === "string") {
      set(out, "storage.gridfs.database", mongo.database);
      said("Storage.Mongo.database", "storage.gridfs.database", "CARVE_MONGODB_DATABASE", mongo.database);
    }
    warnings.push(
      "seed configuration: the seed's carves stay in its GridFS bucket 'fs'; this service uses the bucket 'carves': " +
        "bring them over with `npm run import-seed -- --gridfs` (docs/migrating-from-the-go-server.md)",
    );
    if (file.enabled === true) ignored("Storage.File.enabled", "Storage.Mongo.enabled wins, as in the seed");
  } else {
    set(out, "storage.backend", "filesystem");
    said("Storage.File.enabled", "storage.backend", "CARVE_STORAGE", "filesystem");
  }
  if (typeof file.location === "string" && file.location !== "") {
    if (mongo.enabled !== true) {
      set(out, "storage.filesystem.dataDir", file.location);
      said("Storage.File.location", "storage.filesystem.dataDir", "CARVE_DATA_DIR", file.location);
      warnings.push(
        `seed configuration: ${file.location} now holds this service's layout (carves/, meta/, sessions/); the seed's ` +
          "<carve_id>.tar files in it are not carves of this service until imported with `npm run import-seed -- --dir " +
          `${file.location}\` (better: point CARVE_DATA_DIR at a directory of its own)`,
      );
    } else ignored("Storage.File.location", "the Mongo backend is enabled");
  }
  for (const key of Object.keys(file)) if (key !== "enabled" && key !== "location") ignored(`Storage.File.${key}`, "no equivalent");
  const mongoKeys = ["enabled", "host", "port", "username", "password", "ssl", "pool_size", "options", "database"];
  for (const key of Object.keys(mongo)) if (!mongoKeys.includes(key)) ignored(`Storage.Mongo.${key}`, "no equivalent");
  for (const key of Object.keys(storage)) if (key !== "File" && key !== "Mongo") ignored(`Storage.${key}`, "no equivalent");

  const vault = isMapping(raw.Vault) ? raw.Vault : {};
  if (typeof vault.hostname === "string" && vault.hostname !== "") {
    // The seed always spoke HTTPS to Vault (pkg/auth/vault.go).
    const address = `https://${vault.hostname}${typeof vault.port === "number" ? `:${vault.port}` : ""}`;
    set(out, "vault.address", address);
    said("Vault.hostname/port", "vault.address", "VAULT_ADDR", address);
  }
  if (vault.verifyTLS === false) {
    ignored("Vault.verifyTLS", "this service always verifies Vault's certificate: give its CA with CARVE_VAULT_CA_FILE");
  }
  if (typeof vault.policy === "string") {
    set(out, "vault.policy", vault.policy);
    said("Vault.policy", "vault.policy", "CARVE_VAULT_POLICY", vault.policy);
  }
  for (const key of Object.keys(vault)) {
    if (!["hostname", "port", "verifyTLS", "policy"].includes(key)) ignored(`Vault.${key}`, "no equivalent");
  }

  const cleanup = isMapping(raw.Cleanup) ? raw.Cleanup : {};
  for (const [key, value] of Object.entries(cleanup)) {
    if (key === "time_invterval" && typeof value === "number") {
      set(out, "retention.intervalMinutes", value / 60);
      said("Cleanup.time_invterval (seconds)", "retention.intervalMinutes", "CARVE_RETENTION_INTERVAL_MINUTES", value / 60);
    } else if (key === "expire_interval" && typeof value === "number") {
      // Seconds, as the seed's own file documents it and its Mongo cleanup reads it (its disk cleanup read
      // the same number as hours).
      set(out, "retention.days", value / 86_400);
      said("Cleanup.expire_interval (seconds)", "retention.days", "CARVE_RETENTION_DAYS", value / 86_400);
    } else ignored(`Cleanup.${key}`, "no equivalent");
  }
  return { raw: out, warnings };
}
