import type Database from "better-sqlite3";
import { AppError } from "../../errors.js";
import type {
  CarveCatalog,
  CatalogEntry,
  EntryCondition,
  EntryPage,
  EntryPatch,
  EntryState,
  ExpirySweep,
  ReceivingLoad,
} from "../contracts.js";
import { decodeCursor, encodeCursor } from "../listing.js";
import {
  MAX_VERIFICATIONS_KEPT,
  type AgentInfo,
  type ExpiryCriteria,
  type ImportSource,
  type LegalHold,
  type ListQuery,
  type StoreHealth,
  type Verification,
} from "../model.js";
import {
  BUSY_SLICE_MS,
  IDLE,
  LISTED_COMPLETE,
  LISTED_RECEIVING,
  openCatalogDatabase,
  RETENTION,
  STALE,
  runStep,
  statementCache,
  VISIBLE,
} from "./sqlite-database.js";

/*
 * The catalog of the embedded deployment, one row per carve in <dataDir>/catalog.sqlite (schema in
 * sqlite-database.ts). Every query names the index it runs on (INDEXED BY: SQLite refuses the query rather than
 * fall back to a table scan), and every change is one statement or one IMMEDIATE transaction, so several
 * processes on one file stay correct without any lock of their own.
 */

export interface CarveRow {
  carve_id: string;
  session_id: string;
  request_id: string;
  node_key_sha256: string | null;
  block_count: number;
  block_size: number;
  carve_size: number;
  agent: string;
  created_at: number;
  state: EntryState;
  state_since: number;
  claim: string | null;
  completed_at: number | null;
  sha256: string | null;
  compression: "none" | "zstd" | null;
  hold: string | null;
  origin: "agent" | "import";
  imported: string | null;
  verifications: string;
}

const COLUMNS =
  "carve_id, session_id, request_id, node_key_sha256, block_count, block_size, carve_size, agent, created_at, state, " +
  "state_since, claim, completed_at, sha256, compression, hold, origin, imported, verifications";

/** Inserts a row unless its carve id or session id is taken (then returns nothing). */
export const INSERT_CARVE =
  `INSERT INTO carves (${COLUMNS}) VALUES (${COLUMNS.split(", ").map((c) => `@${c}`).join(", ")}) ` +
  "ON CONFLICT DO NOTHING RETURNING *";

interface StoredHold {
  by: string;
  reason: string;
  at: number;
}
interface StoredVerification {
  claimedSha256: string;
  match: boolean;
  by: string | null;
  at: number;
}

const ms = (d: Date | null): number | null => (d ? d.getTime() : null);
const holdJson = (h: LegalHold | null): string | null => (h ? JSON.stringify({ by: h.by, reason: h.reason, at: h.at.getTime() } satisfies StoredHold) : null);
const verificationJson = (v: Verification): string =>
  JSON.stringify({ claimedSha256: v.claimedSha256, match: v.match, by: v.by, at: v.at.getTime() } satisfies StoredVerification);

function agentJson(a: AgentInfo): string {
  const c = a.certificate;
  return JSON.stringify({
    address: a.address,
    userAgent: a.userAgent,
    certificate: c ? { subjectDn: c.subjectDn, fingerprintSha256: c.fingerprintSha256, source: c.source } : null,
  });
}

function importedJson(i: ImportSource | null): string | null {
  if (!i) return null;
  const { host, originalPath, description } = i;
  return JSON.stringify({ host, originalPath, description, importedBy: { displayName: i.importedBy.displayName, entityId: i.importedBy.entityId } });
}

/** The named parameters of INSERT_CARVE for an entry. */
export function rowOf(e: CatalogEntry): CarveRow {
  return {
    carve_id: e.carveId,
    session_id: e.sessionId,
    request_id: e.requestId,
    node_key_sha256: e.nodeKeySha256,
    block_count: e.blockCount,
    block_size: e.blockSize,
    carve_size: e.carveSize,
    agent: agentJson(e.agent),
    created_at: e.createdAt.getTime(),
    state: e.state,
    state_since: e.stateSince.getTime(),
    claim: e.claim,
    completed_at: ms(e.completedAt),
    sha256: e.sha256,
    compression: e.compression,
    hold: holdJson(e.hold),
    origin: e.origin,
    imported: importedJson(e.imported),
    verifications: `[${e.verifications.slice(-MAX_VERIFICATIONS_KEPT).map(verificationJson).join(",")}]`,
  };
}

export function entryOf(r: CarveRow): CatalogEntry {
  const hold = r.hold ? (JSON.parse(r.hold) as StoredHold) : null;
  return {
    carveId: r.carve_id,
    sessionId: r.session_id,
    requestId: r.request_id,
    nodeKeySha256: r.node_key_sha256,
    blockCount: r.block_count,
    blockSize: r.block_size,
    carveSize: r.carve_size,
    agent: JSON.parse(r.agent) as AgentInfo,
    createdAt: new Date(r.created_at),
    state: r.state,
    stateSince: new Date(r.state_since),
    claim: r.claim,
    completedAt: r.completed_at === null ? null : new Date(r.completed_at),
    sha256: r.sha256,
    compression: r.compression,
    hold: hold ? { ...hold, at: new Date(hold.at) } : null,
    origin: r.origin,
    imported: r.imported ? (JSON.parse(r.imported) as ImportSource) : null,
    verifications: (JSON.parse(r.verifications) as StoredVerification[]).map((v) => ({ ...v, at: new Date(v.at) })),
  };
}

type Params = Record<string, string | number | null>;

/** WHERE terms of an EntryCondition (after `carve_id = @carveId`), with their parameters. */
function conditionSql(c: EntryCondition, params: Params): string {
  const terms = ["carve_id = @carveId"];
  const term = (sql: string, name: string, value: string | number | null): void => {
    params[name] = value;
    terms.push(sql);
  };
  if (c.states !== undefined) {
    const names = c.states.map((state, i) => {
      params[`s${i}`] = state;
      return `@s${i}`;
    });
    terms.push(names.length ? `state IN (${names.join(", ")})` : "0");
  }
  if (c.sessionId !== undefined) term("session_id = @cSession", "cSession", c.sessionId);
  if (c.claim !== undefined) term("claim IS @cClaim", "cClaim", c.claim);
  if (c.stateSinceBefore !== undefined) term("state_since < @cSinceBefore", "cSinceBefore", c.stateSinceBefore.getTime());
  if (c.stateSince !== undefined) term("state_since = @cSince", "cSince", c.stateSince.getTime());
  if (c.unheld) terms.push("hold IS NULL");
  if (c.completedBefore !== undefined) term("completed_at < @cCompleted", "cCompleted", c.completedBefore.getTime());
  return terms.join(" AND ");
}

/** SET clauses of an EntryPatch, with their parameters. */
function patchSql(p: EntryPatch, params: Params): string {
  const sets: string[] = [];
  const set = (column: string, value: string | number | null): void => {
    params[`p_${column}`] = value;
    sets.push(`${column} = @p_${column}`);
  };
  if (p.state !== undefined) set("state", p.state);
  if (p.stateSince !== undefined) set("state_since", p.stateSince.getTime());
  if (p.claim !== undefined) set("claim", p.claim);
  if (p.completedAt !== undefined) set("completed_at", ms(p.completedAt));
  if (p.sha256 !== undefined) set("sha256", p.sha256);
  if (p.compression !== undefined) set("compression", p.compression);
  if (p.hold !== undefined) set("hold", holdJson(p.hold));
  if (p.blockCount !== undefined) set("block_count", p.blockCount);
  if (p.blockSize !== undefined) set("block_size", p.blockSize);
  if (p.carveSize !== undefined) set("carve_size", p.carveSize);
  if (p.addVerification !== undefined) {
    params.pVerification = verificationJson(p.addVerification);
    params.pKeep = MAX_VERIFICATIONS_KEPT;
    // Appended, then only the newest pKeep array positions kept (json_each's key is the position).
    sets.push(
      "verifications = (SELECT json_group_array(json(value) ORDER BY key) " +
        "FROM json_each(json_insert(verifications, '$[#]', json(@pVerification))) " +
        "WHERE key > json_array_length(verifications) - @pKeep)",
    );
  }
  return sets.length ? sets.join(", ") : "carve_id = carve_id";
}

export class SqliteCatalog implements CarveCatalog {
  readonly kind = "sqlite";
  private closed = false;
  private readonly createTx: (row: CarveRow) => { row: CarveRow; created: boolean } | null;

  private readonly stmt: (sql: string) => Database.Statement;

  private constructor(
    private readonly db: Database.Database,
    private readonly file: string,
  ) {
    this.stmt = statementCache(db);
    const insert = this.stmt(INSERT_CARVE);
    const byId = this.stmt("SELECT * FROM carves WHERE carve_id = ?");
    const tx = db.transaction((row: CarveRow) => {
      const inserted = insert.get(row) as CarveRow | undefined;
      if (inserted) return { row: inserted, created: true };
      const existing = byId.get(row.carve_id) as CarveRow | undefined;
      return existing ? { row: existing, created: false } : null;
    });
    this.createTx = (row) => tx.immediate(row);
  }

  /**
   * Opens the catalog of a data directory (creating the database when needed).
   * @throws AppError STORAGE_UNAVAILABLE
   */
  static async open(options: { dataDir: string }): Promise<SqliteCatalog> {
    const db = openCatalogDatabase(options.dataDir, { busySliceMs: BUSY_SLICE_MS });
    return Promise.resolve(new SqliteCatalog(db, db.name));
  }

  private run<T>(what: string, step: () => T): Promise<T> {
    return runStep(this.db, () => (this.closed ? "catalog is closed" : null), what, step);
  }

  create(entry: CatalogEntry): Promise<{ entry: CatalogEntry; created: boolean }> {
    return this.run(`create ${entry.carveId}`, () => {
      const result = this.createTx(rowOf(entry));
      if (!result) throw new AppError("CARVE_ID_CONFLICT", "the session id belongs to another carve");
      return { entry: entryOf(result.row), created: result.created };
    });
  }

  get(carveId: string): Promise<CatalogEntry | null> {
    return this.run(`get ${carveId}`, () => {
      const row = this.stmt("SELECT * FROM carves WHERE carve_id = ?").get(carveId) as CarveRow | undefined;
      return row ? entryOf(row) : null;
    });
  }

  getBySession(sessionId: string): Promise<CatalogEntry | null> {
    return this.run("get by session", () => {
      const row = this.stmt("SELECT * FROM carves WHERE session_id = ?").get(sessionId) as CarveRow | undefined;
      return row ? entryOf(row) : null;
    });
  }

  list(query: ListQuery): Promise<EntryPage> {
    return this.run("list", () => {
      const { sql, params } = SqliteCatalog.listSql(query);
      const rows = this.stmt(sql).all(params) as CarveRow[];
      const entries = rows.slice(0, query.limit).map(entryOf);
      const last = entries[entries.length - 1];
      return { entries, nextCursor: rows.length > query.limit && last ? encodeCursor(last) : null };
    });
  }

  /** The statement of a list query: exported shapes are checked against the query plan in the tests. */
  static listSql(query: ListQuery): { sql: string; params: Params } {
    if (!Number.isSafeInteger(query.limit) || query.limit < 1) throw new AppError("INVALID_QUERY", "limit must be a positive integer");
    const params: Params = { limit: query.limit + 1 };
    const where = [VISIBLE];
    let index = "carves_visible";
    if (query.status === "receiving") {
      where.push(LISTED_RECEIVING);
      index = "carves_receiving";
    } else if (query.status === "complete") {
      where.push(LISTED_COMPLETE);
      index = "carves_complete";
    }
    const node = query.nodeSha256Prefix;
    if (node !== undefined) {
      index = "carves_node";
      if (node.length === 64) {
        params.node = node;
        where.push("node_key_sha256 = @node");
      } else {
        // Node keys are lower-case hex: every key starting with the prefix lies in [prefix, prefix + "g").
        params.nodeLow = node;
        params.nodeHigh = `${node}g`;
        where.push("node_key_sha256 >= @nodeLow", "node_key_sha256 < @nodeHigh");
      }
    }
    if (query.since) {
      params.since = query.since.getTime();
      where.push("created_at >= @since");
    }
    if (query.until) {
      params.until = query.until.getTime();
      where.push("created_at < @until");
    }
    if (query.cursor !== undefined) {
      const after = decodeCursor(query.cursor);
      params.afterT = after.t;
      params.afterId = after.id;
      // The first term bounds the index range; the second drops what the cursor's own instant already gave.
      where.push("created_at <= @afterT", "(created_at < @afterT OR carve_id > @afterId)");
    }
    const order = "ORDER BY created_at DESC, carve_id LIMIT @limit";
    const filter = `FROM carves INDEXED BY ${index} WHERE ${where.join(" AND ")}`;
    // A node prefix spans many keys, so its range comes out of the index unsorted: sort the index entries
    // alone (the index covers every column the filter needs), then read only the rows of the page.
    const sql =
      node === undefined
        ? `SELECT * ${filter} ${order}`
        : `SELECT * FROM carves WHERE rowid IN (SELECT rowid ${filter} ${order}) ORDER BY created_at DESC, carve_id`;
    return { sql, params };
  }

  update(carveId: string, condition: EntryCondition, patch: EntryPatch): Promise<CatalogEntry | null> {
    return this.run(`update ${carveId}`, () => {
      const params: Params = { carveId };
      const sql = `UPDATE carves SET ${patchSql(patch, params)} WHERE ${conditionSql(condition, params)} RETURNING *`;
      // all(), not get(): get() resets the statement after its first row, and an autocommit statement commits at
      // that reset, where a failed commit (a full disk) goes unreported; all() steps to the end and throws it.
      const [row] = this.stmt(sql).all(params) as CarveRow[];
      return row ? entryOf(row) : null;
    });
  }

  remove(carveId: string, condition: EntryCondition): Promise<boolean> {
    return this.run(`remove ${carveId}`, () => {
      const params: Params = { carveId };
      return this.stmt(`DELETE FROM carves WHERE ${conditionSql(condition, params)}`).run(params).changes === 1;
    });
  }

  /** The three sweep statements, by kind (checked against the query plan in the tests). */
  static readonly SWEEP_SQL = {
    retention: `SELECT * FROM carves INDEXED BY carves_retention WHERE ${RETENTION} AND completed_at < @before ORDER BY completed_at, carve_id LIMIT @limit`,
    idle: `SELECT * FROM carves INDEXED BY carves_idle WHERE ${IDLE} AND created_at < @before ORDER BY created_at, carve_id LIMIT @limit`,
    stale: `SELECT * FROM carves INDEXED BY carves_stale WHERE ${STALE} AND state_since < @before ORDER BY state_since, carve_id LIMIT @limit`,
  } as const;

  sweep(criteria: ExpiryCriteria, limit: number): Promise<ExpirySweep> {
    return this.run("sweep", () => {
      const kind = (sql: string, before: Date): CatalogEntry[] =>
        (this.stmt(sql).all({ before: before.getTime(), limit }) as CarveRow[]).map(entryOf);
      const read = this.db.transaction(() => ({
        retention: kind(SqliteCatalog.SWEEP_SQL.retention, criteria.completedBefore),
        idle: kind(SqliteCatalog.SWEEP_SQL.idle, criteria.idleBefore),
        stale: kind(SqliteCatalog.SWEEP_SQL.stale, criteria.staleDeleteBefore),
      }));
      return read();
    });
  }

  count(): Promise<{ receiving: number; complete: number }> {
    return this.run("count", () => this.counts());
  }

  /** Over the receiving entries' partial index: as many rows as carves are being received, not all carves. */
  static readonly RECEIVING_LOAD_SQL =
    "SELECT count(*) AS carves, coalesce(sum(carve_size), 0) AS declaredBytes, coalesce(sum(CASE WHEN @fingerprint IS NOT NULL " +
    "THEN json_extract(agent, '$.certificate.fingerprintSha256') IS @fingerprint " +
    "ELSE json_extract(agent, '$.certificate') IS NULL AND json_extract(agent, '$.address') IS @address END), 0) AS fromAgent " +
    `FROM carves INDEXED BY carves_receiving WHERE ${LISTED_RECEIVING}`;

  receivingLoad(agent: AgentInfo): Promise<ReceivingLoad> {
    return this.run("receiving load", () => {
      const params = { fingerprint: agent.certificate?.fingerprintSha256 ?? null, address: agent.address };
      return this.stmt(SqliteCatalog.RECEIVING_LOAD_SQL).get(params) as ReceivingLoad;
    });
  }

  private counts(): { receiving: number; complete: number } {
    const rows = this.stmt("SELECT bucket, n FROM carve_counts").all() as Array<{ bucket: string; n: number }>;
    const n = (bucket: string): number => rows.find((r) => r.bucket === bucket)?.n ?? 0;
    return { receiving: n("receiving"), complete: n("complete") };
  }

  health(): Promise<StoreHealth> {
    const detail: StoreHealth["detail"] = { file: this.file };
    try {
      if (this.closed) throw new Error("catalog is closed");
      Object.assign(detail, this.counts());
      return Promise.resolve({ ok: true, backend: this.kind, detail });
    } catch (err) {
      detail.error = err instanceof Error ? err.message : "unknown";
      return Promise.resolve({ ok: false, backend: this.kind, detail });
    }
  }

  close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.db.close();
    }
    return Promise.resolve();
  }
}
