/**
 * What a filesystem deployment's data directory holds, for tests that check "nothing stored" or "this secret
 * was never written" without going through the service. The catalog is read with catalog-peek.ts.
 */
import { existsSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { peekEntries } from "./catalog-peek.js";

export interface StoredCounts {
  /** Catalog entries in catalog.sqlite, any state. */
  entries: number;
  /** Carves with staging in sessions/ (being received). */
  staged: number;
  /** Archives in carves/. */
  published: number;
}

/**
 * Counts what the directory stores. Throws when the catalog is missing, so a count of zero always means an
 * empty catalog, never one looked for in the wrong place.
 */
export async function storedCounts(dataDir: string): Promise<StoredCounts> {
  if (!existsSync(path.join(dataDir, "catalog.sqlite"))) throw new Error(`no catalog.sqlite in ${dataDir}`);
  return {
    entries: peekEntries(dataDir).length,
    staged: (await readdir(path.join(dataDir, "sessions"))).length,
    published: (await readdir(path.join(dataDir, "carves"))).length,
  };
}

/** The files under `dir` (relative paths) whose bytes contain `needle` (UTF-8): catalog, its WAL, blobs, all. */
export async function filesContaining(dir: string, needle: string): Promise<string[]> {
  const wanted = Buffer.from(needle, "utf8");
  const hits: string[] = [];
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const full = path.join(entry.parentPath, entry.name);
    let bytes: Buffer;
    try {
      bytes = await readFile(full);
    } catch (err) {
      if ((err as { code?: string }).code === "ENOENT") continue; // removed meanwhile (a temporary file)
      throw err;
    }
    if (bytes.includes(wanted)) hits.push(path.relative(dir, full));
  }
  return hits.sort();
}
