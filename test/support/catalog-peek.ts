/**
 * What the embedded deployment's catalog holds for a carve, read straight from <dataDir>/catalog.sqlite (read-only,
 * beside a running service: WAL lets a reader in). For tests that check what was stored without going through
 * the service (a child process, a crash). The shape is the catalog's own (src/storage/sqlite/sqlite-catalog.ts).
 */
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import Database from "better-sqlite3";

export interface PeekedEntry {
  carveId: string;
  sessionId: string;
  requestId: string;
  nodeKeySha256: string | null;
  blockCount: number;
  blockSize: number;
  carveSize: number;
  agent: { address: string | null; userAgent: string | null; certificate: { subjectDn: string; fingerprintSha256: string; source: string } | null };
  createdAt: Date;
  state: string;
  stateSince: Date;
  claim: string | null;
  completedAt: Date | null;
  sha256: string | null;
  compression: string | null;
  hold: { by: string; reason: string; at: string } | null;
  origin: string;
}

interface Row {
  carve_id: string;
  session_id: string;
  request_id: string;
  node_key_sha256: string | null;
  block_count: number;
  block_size: number;
  carve_size: number;
  agent: string;
  created_at: number;
  state: string;
  state_since: number;
  claim: string | null;
  completed_at: number | null;
  sha256: string | null;
  compression: string | null;
  hold: string | null;
  origin: string;
}

function read<T>(dataDir: string, fn: (db: Database.Database) => T, empty: T): T {
  const file = path.join(dataDir, "catalog.sqlite");
  if (!existsSync(file)) return empty;
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    db.pragma("busy_timeout = 5000");
    return fn(db);
  } finally {
    db.close();
  }
}

function entryOf(r: Row): PeekedEntry {
  return {
    carveId: r.carve_id,
    sessionId: r.session_id,
    requestId: r.request_id,
    nodeKeySha256: r.node_key_sha256,
    blockCount: r.block_count,
    blockSize: r.block_size,
    carveSize: r.carve_size,
    agent: JSON.parse(r.agent) as PeekedEntry["agent"],
    createdAt: new Date(r.created_at),
    state: r.state,
    stateSince: new Date(r.state_since),
    claim: r.claim,
    completedAt: r.completed_at === null ? null : new Date(r.completed_at),
    sha256: r.sha256,
    compression: r.compression,
    hold: r.hold === null ? null : (JSON.parse(r.hold) as PeekedEntry["hold"]),
    origin: r.origin,
  };
}

/** The catalog entry of a carve in any state, or null. */
export function peekEntry(dataDir: string, carveId: string): PeekedEntry | null {
  return read(dataDir, (db) => {
    const row = db.prepare("SELECT * FROM carves WHERE carve_id = ?").get(carveId) as Row | undefined;
    return row ? entryOf(row) : null;
  }, null);
}

/** Every catalog entry, any state. */
export function peekEntries(dataDir: string): PeekedEntry[] {
  return read(dataDir, (db) => (db.prepare("SELECT * FROM carves ORDER BY created_at").all() as Row[]).map(entryOf), []);
}

/**
 * Every catalog entry of a data directory that only a namespace sees (test/support/tmpfs-namespace.ts). SQLite
 * resolves the symlinks of a path, and /proc/<pid>/root resolves to this process's own "/", so the catalog is
 * read by a node process started inside with `wrapper`, with SQLite's locking as any reader.
 * @throws Error when there is no catalog.sqlite in `dataDir` (as the namespace sees it)
 */
export function peekEntriesInside(wrapper: string[], dataDir: string): PeekedEntry[] {
  const sqlite = createRequire(import.meta.url).resolve("better-sqlite3");
  const script = `
    const Database = require(process.argv[1]);
    const db = new Database(process.argv[2], { readonly: true, fileMustExist: true });
    db.pragma("busy_timeout = 5000");
    process.stdout.write(JSON.stringify(db.prepare("SELECT * FROM carves ORDER BY created_at").all()));
    db.close();`;
  const [command, ...args] = [...wrapper, process.execPath, "-e", script, sqlite, path.join(dataDir, "catalog.sqlite")];
  const out = execFileSync(command, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 30_000 });
  return (JSON.parse(out) as Row[]).map(entryOf);
}
