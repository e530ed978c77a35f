/**
 * The only place the crash test looks inside a backend's storage layout: what a crash left on disk or in
 * MongoDB, in backend-neutral terms. Everything else the crash test checks goes through the HTTP API and the
 * agent emulator's results. A storage redesign adapts these two readers and nothing else.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import Database from "better-sqlite3";
import { MongoClient, type Binary } from "mongodb";

export interface LayoutSnapshot {
  /** Archives published as complete (carves/ files, GridFS files documents), by carve id: SHA-256 of each
   * copy's bytes, or "incomplete:..." when a copy is not whole (a missing chunk). */
  published: Map<string, string[]>;
  /** Carve ids that still own staging (session directory with journal/partial data; chunks or block
   * markers of a carve that is not complete), with what it is. */
  staging: Map<string, string>;
  /** The store's own record of every carve id it knows, visible or not (receiving, complete, deleting...). */
  records: Map<string, string>;
  /** Things owned by no carve: temporary files, chunks of no session, index entries of no carve. */
  orphans: string[];
}

export interface LayoutReader {
  snapshot(): Promise<LayoutSnapshot>;
  close(): Promise<void>;
}

async function entries(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if ((err as { code?: string }).code === "ENOENT") return [];
    throw err;
  }
}

/**
 * Filesystem deployment (src/storage/filesystem/filesystem-blobs.ts, src/storage/sqlite/): carves/, sessions/,
 * tmp/ and the catalog in catalog.sqlite (read-only here: the service may be running).
 */
export function filesystemLayout(dataDir: string): LayoutReader {
  return {
    close: () => Promise.resolve(),
    async snapshot() {
      const snap: LayoutSnapshot = { published: new Map(), staging: new Map(), records: new Map(), orphans: [] };
      for (const name of await entries(path.join(dataDir, "carves"))) {
        const m = /^(.+?)\.tar(\.zst)?$/.exec(name);
        const id = m?.[1] ?? name;
        const bytes = await readFile(path.join(dataDir, "carves", name));
        const list = snap.published.get(id) ?? [];
        list.push(createHash("sha256").update(bytes).digest("hex"));
        snap.published.set(id, list);
      }
      const file = path.join(dataDir, "catalog.sqlite");
      if (existsSync(file)) {
        const db = new Database(file, { readonly: true, fileMustExist: true });
        try {
          db.pragma("busy_timeout = 5000");
          for (const row of db.prepare("SELECT carve_id, state FROM carves").all() as Array<{ carve_id: string; state: string }>) {
            snap.records.set(row.carve_id, row.state);
          }
        } finally {
          db.close();
        }
      }
      for (const id of await entries(path.join(dataDir, "sessions"))) {
        const files = await entries(path.join(dataDir, "sessions", id));
        snap.staging.set(id, `sessions/${id}/ [${files.join(", ")}]`);
      }
      for (const name of await entries(path.join(dataDir, "tmp"))) snap.orphans.push(`tmp/${name}`);
      for (const legacy of ["meta", "index", "audit"]) {
        if (existsSync(path.join(dataDir, legacy))) snap.orphans.push(`${legacy}/ (the previous release's layout)`);
      }
      return snap;
    },
  };
}

interface CarveRow {
  _id: string;
  sessionId: string;
  state: string;
}

interface UploadRow {
  _id: string;
  sessionId: string;
  b?: Record<string, number>;
}

/** MongoDB deployment (src/storage/mongo/, src/storage/gridfs/gridfs-blobs.ts): <bucket>.carves, .sessions, .chunks, .files. */
export function gridfsLayout(uri: string, database: string, bucket = "carves"): LayoutReader {
  const client = new MongoClient(uri, { serverSelectionTimeoutMS: 10_000 });
  const db = client.db(database);
  return {
    close: () => client.close(),
    async snapshot() {
      const snap: LayoutSnapshot = { published: new Map(), staging: new Map(), records: new Map(), orphans: [] };
      const carves = await db.collection<CarveRow>(`${bucket}.carves`).find({}, { projection: { _id: 1, sessionId: 1, state: 1 } }).toArray();
      const uploads = await db.collection<UploadRow>(`${bucket}.sessions`).find({}).toArray();
      const chunks = db.collection<{ _id: string; files_id: string; n: number; data: Binary }>(`${bucket}.chunks`);
      const bySession = new Map(carves.map((c) => [c.sessionId, c]));
      for (const c of carves) snap.records.set(c._id, c.state);
      const files = await db
        .collection<{ _id: string; length: number; chunkSize: number; metadata?: { carve_id?: string } }>(`${bucket}.files`)
        .find({})
        .toArray();
      for (const f of files) {
        const id = f.metadata?.carve_id ?? bySession.get(f._id)?._id ?? `files:${f._id}`;
        const total = f.length === 0 ? 0 : Math.ceil(f.length / f.chunkSize);
        const hash = createHash("sha256");
        let state = "";
        const docs = await chunks.find({ files_id: f._id }).sort({ n: 1 }).toArray();
        for (let n = 0; n < total; n++) {
          const doc = docs[n];
          if (!doc || doc.n !== n) {
            state = `incomplete:chunk ${n} missing`;
            break;
          }
          hash.update(doc.data.buffer.subarray(0, doc.data.position));
        }
        const list = snap.published.get(id) ?? [];
        list.push(state || hash.digest("hex"));
        snap.published.set(id, list);
      }
      const counts = new Map<string, number>();
      for (const c of await chunks.find({}, { projection: { files_id: 1 } }).toArray()) {
        counts.set(c.files_id, (counts.get(c.files_id) ?? 0) + 1);
      }
      for (const [filesId, n] of counts) {
        const owner = bySession.get(filesId);
        if (!owner) snap.orphans.push(`${n} chunks of files_id ${filesId} (no carve)`);
        else if (owner.state !== "complete") snap.staging.set(owner._id, `${n} chunks, state ${owner.state}`);
      }
      for (const u of uploads) {
        const owner = bySession.get(u.sessionId);
        if (!owner) snap.orphans.push(`upload progress of ${u._id} (no carve)`);
        else if (owner.state === "complete") snap.staging.set(u._id, `upload progress left on a complete carve (${Object.keys(u.b ?? {}).length} markers)`);
        else snap.staging.set(u._id, snap.staging.get(u._id) ?? `upload progress, state ${owner.state}`);
      }
      return snap;
    },
  };
}
