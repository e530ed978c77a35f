/**
 * The only place the crash test looks inside a backend's storage layout: what a crash left on disk or in
 * MongoDB, in backend-neutral terms. Everything else the crash test checks goes through the HTTP API and the
 * agent emulator's results. A storage redesign adapts these two readers and nothing else.
 */
import { createHash } from "node:crypto";
import { readdir, readFile, readlink } from "node:fs/promises";
import path from "node:path";
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

/** Filesystem layout (src/storage/filesystem/filesystem-carve-store.ts): carves/, meta/, sessions/, index/, tmp/. */
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
      for (const name of await entries(path.join(dataDir, "meta"))) {
        if (!name.endsWith(".json")) continue;
        const id = name.slice(0, -".json".length);
        try {
          const meta = JSON.parse(await readFile(path.join(dataDir, "meta", name), "utf8")) as { status: string };
          snap.records.set(id, meta.status);
        } catch {
          snap.records.set(id, "unreadable");
        }
      }
      for (const id of await entries(path.join(dataDir, "sessions"))) {
        const files = await entries(path.join(dataDir, "sessions", id));
        snap.staging.set(id, `sessions/${id}/ [${files.join(", ")}]`);
      }
      for (const name of await entries(path.join(dataDir, "tmp"))) snap.orphans.push(`tmp/${name}`);
      for (const sid of await entries(path.join(dataDir, "index"))) {
        let target = "";
        try {
          target = await readlink(path.join(dataDir, "index", sid));
        } catch {
          // not a symlink: an orphan as well
        }
        if (!snap.records.has(target)) snap.orphans.push(`index/${sid} -> ${target || "?"}`);
      }
      return snap;
    },
  };
}

interface SessionRow {
  _id: string;
  sessionId: string;
  status: string;
  b?: Record<string, number>;
}

/** GridFS layout (src/storage/gridfs/gridfs-carve-store.ts): <bucket>.sessions, .chunks, .files. */
export function gridfsLayout(uri: string, database: string, bucket = "carves"): LayoutReader {
  const client = new MongoClient(uri, { serverSelectionTimeoutMS: 10_000 });
  const db = client.db(database);
  return {
    close: () => client.close(),
    async snapshot() {
      const snap: LayoutSnapshot = { published: new Map(), staging: new Map(), records: new Map(), orphans: [] };
      const sessions = await db.collection<SessionRow>(`${bucket}.sessions`).find({}).toArray();
      const chunks = db.collection<{ _id: string; files_id: string; n: number; data: Binary }>(`${bucket}.chunks`);
      const bySession = new Map(sessions.map((s) => [s.sessionId, s]));
      for (const s of sessions) snap.records.set(s._id, s.status);
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
        if (!owner) snap.orphans.push(`${n} chunks of files_id ${filesId} (no session)`);
        else if (owner.status !== "complete") snap.staging.set(owner._id, `${n} chunks, status ${owner.status}`);
      }
      for (const s of sessions) {
        if (s.status === "complete" && s.b && Object.keys(s.b).length > 0) {
          snap.staging.set(s._id, `${Object.keys(s.b).length} block markers left on a complete carve`);
        }
      }
      return snap;
    },
  };
}
