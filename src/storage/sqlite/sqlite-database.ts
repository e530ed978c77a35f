import { closeSync, mkdirSync, openSync } from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { AppError } from "../../errors.js";

/*
 * The one SQLite file of the embedded deployment, shared by the catalog and the audit log: <dataDir>/catalog.sqlite.
 * Several processes may open it at once (the cleanup CLI beside the service): WAL lets readers run beside the one
 * writer, a busy timeout makes a second writer wait instead of failing, and every write transaction begins
 * IMMEDIATE so two writers never deadlock upgrading read locks. Writes happen per start, completion and
 * responder action, never per block, so each commit is synced (synchronous=FULL): an acknowledged start or audit
 * event survives a power cut.
 */

export const CATALOG_FILE = "catalog.sqlite";
/** How long, in all, a write waits for another process's write lock before it fails (STORAGE_UNAVAILABLE). */
export const BUSY_TIMEOUT_MS = 5000;
/**
 * How long one attempt of a service's statement may block the event loop waiting for that lock (SQLite's busy
 * handler sleeps in the calling thread): the rest of the wait is spent between attempts, asynchronously, so that
 * an operator's shell holding the lock holds up that write, not every request (it stalled /status for ~5 s).
 */
export const BUSY_SLICE_MS = 10;

/** The partial-index conditions, written once: a query uses such an index only if it repeats the exact term. */
export const VISIBLE = "state IN ('receiving', 'completing', 'complete')";
export const LISTED_RECEIVING = "state IN ('receiving', 'completing')";
export const LISTED_COMPLETE = "state = 'complete'";
export const RETENTION = "state = 'complete' AND hold IS NULL";
export const IDLE = "state = 'receiving' AND hold IS NULL";
export const STALE = "state IN ('deleting', 'importing', 'completing')";

const BUCKET = (row: "NEW" | "OLD"): string =>
  `CASE WHEN ${row}.state IN ('receiving', 'completing') THEN 'receiving' WHEN ${row}.state = 'complete' THEN 'complete' END`;

/** Schema versions in order; user_version is the number applied. Append, never edit a shipped step. */
const SCHEMA: readonly string[] = [
  `
  CREATE TABLE carves (
    carve_id        TEXT PRIMARY KEY,
    session_id      TEXT NOT NULL UNIQUE,
    request_id      TEXT NOT NULL,
    node_key_sha256 TEXT,
    block_count     INTEGER NOT NULL,
    block_size      INTEGER NOT NULL,
    carve_size      INTEGER NOT NULL,
    agent           TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('receiving', 'completing', 'complete', 'importing', 'deleting')),
    state_since     INTEGER NOT NULL,
    claim           TEXT,
    completed_at    INTEGER,
    sha256          TEXT,
    compression     TEXT CHECK (compression IN ('none', 'zstd')),
    hold            TEXT,
    origin          TEXT NOT NULL CHECK (origin IN ('agent', 'import')),
    imported        TEXT,
    verifications   TEXT NOT NULL
  ) STRICT;
  CREATE INDEX carves_visible ON carves (created_at DESC, carve_id) WHERE ${VISIBLE};
  CREATE INDEX carves_receiving ON carves (created_at DESC, carve_id) WHERE ${LISTED_RECEIVING};
  CREATE INDEX carves_complete ON carves (created_at DESC, carve_id) WHERE ${LISTED_COMPLETE};
  CREATE INDEX carves_node ON carves (node_key_sha256, created_at DESC, carve_id, state) WHERE ${VISIBLE};
  CREATE INDEX carves_retention ON carves (completed_at, carve_id) WHERE ${RETENTION};
  CREATE INDEX carves_idle ON carves (created_at, carve_id) WHERE ${IDLE};
  CREATE INDEX carves_stale ON carves (state_since, carve_id) WHERE ${STALE};

  -- count() runs on every start (capacity checks): kept by triggers rather than counted over an index.
  CREATE TABLE carve_counts (bucket TEXT PRIMARY KEY, n INTEGER NOT NULL) STRICT;
  INSERT INTO carve_counts VALUES ('receiving', 0), ('complete', 0);
  CREATE TRIGGER carves_counted_insert AFTER INSERT ON carves BEGIN
    UPDATE carve_counts SET n = n + 1 WHERE bucket = ${BUCKET("NEW")};
  END;
  CREATE TRIGGER carves_counted_delete AFTER DELETE ON carves BEGIN
    UPDATE carve_counts SET n = n - 1 WHERE bucket = ${BUCKET("OLD")};
  END;
  CREATE TRIGGER carves_counted_update AFTER UPDATE OF state ON carves BEGIN
    UPDATE carve_counts SET n = n - 1 WHERE bucket = ${BUCKET("OLD")};
    UPDATE carve_counts SET n = n + 1 WHERE bucket = ${BUCKET("NEW")};
  END;

  CREATE TABLE audit (
    id       TEXT PRIMARY KEY,
    at       INTEGER NOT NULL,
    action   TEXT NOT NULL,
    result   TEXT NOT NULL,
    actor    TEXT NOT NULL,
    client   TEXT NOT NULL,
    carve_id TEXT,
    detail   TEXT NOT NULL
  ) STRICT;
  CREATE INDEX audit_at ON audit (at DESC, id DESC);
  CREATE INDEX audit_carve ON audit (carve_id, at DESC, id DESC);
  CREATE INDEX audit_action ON audit (action, at DESC, id DESC);

  `,
];

export function storageFailure(err: unknown, what: string): AppError {
  if (err instanceof AppError) return err;
  return new AppError("STORAGE_UNAVAILABLE", undefined, { cause: Object.assign(new Error(what), { cause: err }) });
}

function createIfMissing(file: string): void {
  try {
    closeSync(openSync(file, "wx", 0o640));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  }
}

/**
 * Opens <dataDir>/catalog.sqlite, creating it (mode 0640, like the archives) and its schema when needed.
 * @throws AppError STORAGE_UNAVAILABLE when the file cannot be opened or was written by a newer release.
 */
export function openCatalogDatabase(dataDir: string, options: { busySliceMs?: number } = {}): Database.Database {
  const file = path.join(path.resolve(dataDir), CATALOG_FILE);
  let db: Database.Database | null = null;
  try {
    mkdirSync(path.dirname(file), { recursive: true });
    // SQLite gives its -wal and -shm files the database file's mode, so the file is created with it when missing.
    // An existing file is never opened here: closing any descriptor of it drops every POSIX lock this process holds
    // on it (an open connection's too), and a sqlite3 shell closing beside the service would then take itself for
    // the last connection and delete the WAL the service still writes to.
    createIfMissing(file);
    db = new Database(file, { timeout: BUSY_TIMEOUT_MS });
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = FULL");
    const conn = db;
    conn
      .transaction(() => {
        const version = conn.pragma("user_version", { simple: true }) as number;
        if (version > SCHEMA.length) {
          throw new Error(`${file} has schema version ${version}, newer than this release's ${SCHEMA.length}`);
        }
        for (let v = version; v < SCHEMA.length; v++) conn.exec(SCHEMA[v] as string);
        if (version !== SCHEMA.length) conn.pragma(`user_version = ${SCHEMA.length}`);
      })
      .immediate();
    // Opening (schema, upgrade) waits the whole timeout at once: nothing else runs yet. Later statements, through
    // runStep, wait in slices.
    if (options.busySliceMs !== undefined) db.pragma(`busy_timeout = ${options.busySliceMs}`);
    return db;
  } catch (err) {
    db?.close();
    throw storageFailure(err, `open ${file}`);
  }
}

/** Prepared statements of one connection, by SQL text: each is compiled once. */
export function statementCache(db: Database.Database): (sql: string) => Database.Statement {
  const statements = new Map<string, Database.Statement>();
  return (sql) => {
    let s = statements.get(sql);
    if (!s) {
      s = db.prepare(sql);
      statements.set(sql, s);
    }
    return s;
  };
}

type Attempt<T> = { ok: true; value: T } | { ok: false; err: unknown };

function attempt<T>(db: Database.Database, closed: () => string | null, step: () => T): Attempt<T> {
  try {
    const reason = closed();
    if (reason !== null) throw new AppError("STORAGE_UNAVAILABLE", reason);
    return { ok: true, value: step() };
  } catch (err) {
    if (db.inTransaction) {
      try {
        db.exec("ROLLBACK");
      } catch {
        // already rolled back by SQLite itself
      }
    }
    return { ok: false, err };
  }
}

/** Another connection (another process) holds the lock this step needs: nothing of the step happened. */
function isBusy(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && code.startsWith("SQLITE_BUSY");
}

/**
 * Runs a synchronous database step as the contracts ask: a closed store rejects with STORAGE_UNAVAILABLE, failures
 * are wrapped (cause kept). A write that failed for lack of space can leave SQLite's implicit transaction open;
 * whatever ran next on the connection would then never be committed, so it is ended here and the caller's retry (or
 * the next request) starts clean. A step refused because another process holds the write lock (SQLITE_BUSY, after
 * the connection's short busy slice) changed nothing and is tried again, asynchronously, until BUSY_TIMEOUT_MS.
 */
export function runStep<T>(db: Database.Database, closed: () => string | null, what: string, step: () => T): Promise<T> {
  const first = attempt(db, closed, step);
  if (first.ok) return Promise.resolve(first.value);
  if (!isBusy(first.err)) return Promise.reject(storageFailure(first.err, what));
  return retryWhileBusy(db, closed, what, step, first.err);
}

async function retryWhileBusy<T>(db: Database.Database, closed: () => string | null, what: string, step: () => T, busy: unknown): Promise<T> {
  const deadline = Date.now() + BUSY_TIMEOUT_MS;
  let last = busy;
  for (let pause = 5; Date.now() < deadline; pause = Math.min(pause * 2, 100)) {
    await new Promise((resolve) => setTimeout(resolve, Math.min(pause, Math.max(deadline - Date.now(), 0))));
    const next = attempt(db, closed, step);
    if (next.ok) return next.value;
    if (!isBusy(next.err)) throw storageFailure(next.err, what);
    last = next.err;
  }
  throw storageFailure(last, what);
}
