/**
 * Named crash points for crash-point testing: with `CARVE_CRASH_AT=<name>:<n>` in the environment, the n-th time
 * the service reaches `crashPoint(name)` (n defaults to 1) the process kills itself with SIGKILL, exactly as a
 * power cut or an OOM kill would stop it at that instruction. `CARVE_CRASH_AT=*:<n>` counts every point. Unset (as
 * in production), `crashPoint` is an empty function that V8 inlines away, so the hot path pays nothing.
 *
 * The names in use are listed in CRASH_POINTS so the crash test can pick among them; a name not listed is refused
 * when the module loads, so a typo in a test cannot silently never fire.
 */

export const CRASH_POINTS = [
  /** A block is about to be written (nothing of it is on storage yet). */
  "block.before-write",
  /** The block's bytes are written; its journal record (what makes it count as stored) is not. */
  "block.after-bytes",
  /** Bytes and journal record are written; the agent has not been answered. */
  "block.after-journal",
  /** Completion: every block is in and the SHA-256 is computed; the archive is not yet published. */
  "complete.after-hash",
  /** Completion: the archive is published (renamed / files document inserted); the catalog record still says receiving. */
  "complete.after-publish",
  /** Completion: the catalog record says complete; staging (journal, session index) is not yet cleaned up. */
  "complete.after-record",
  /** Object-store completion: some parts of the multipart upload are sent; the object does not exist yet. */
  "object.mid-upload",
  /** Object-store completion: the object is uploaded and confirmed; the staging is not yet deleted. */
  "object.after-upload",
  /** Deletion: the record is marked for deletion; the bytes are still there. */
  "delete.after-mark",
  /** Deletion: the bytes are gone; the record is not. */
  "delete.after-bytes",
  /** Import: part of the stream is stored; the archive is not yet published. */
  "import.mid-stream",
  /** Import: bytes are stored and hashed; the archive and its record are not yet published. */
  "import.before-publish",
  /** Migration of a store written by an earlier release: part of the records are migrated. Hit after each
   *  committed batch of rows and after each batch of source files removed (src/storage/sqlite/migrate-filesystem.ts). */
  "migrate.mid",
  /** GridFS upgrade: a record's catalog entry is written; its old sessions document is not yet stripped or removed. */
  "migrate.mid-gridfs",
] as const;

export type CrashPointName = (typeof CRASH_POINTS)[number];

function parse(spec: string | undefined): ((name: CrashPointName) => void) | null {
  if (!spec) return null;
  const m = /^([a-z*][a-z.-]*)(?::(\d+))?$/.exec(spec.trim());
  const target = m?.[1];
  if (!m || !target || (target !== "*" && !(CRASH_POINTS as readonly string[]).includes(target))) {
    throw new Error(`CARVE_CRASH_AT=${spec}: expected <name>[:<n>] with a name from ${CRASH_POINTS.join(", ")} or *`);
  }
  const at = m[2] ? Number(m[2]) : 1;
  if (!Number.isSafeInteger(at) || at < 1) throw new Error(`CARVE_CRASH_AT=${spec}: n must be a positive integer`);
  let seen = 0;
  return (name) => {
    if (target !== "*" && name !== target) return;
    seen += 1;
    if (seen === at) {
      // Synchronous on purpose: nothing after this line may run, not even a pending write callback.
      process.stderr.write(`crash-point: SIGKILL at ${name} (hit ${seen})\n`);
      process.kill(process.pid, "SIGKILL");
    }
  };
}

const hit = parse(process.env.CARVE_CRASH_AT);

/** Marks a place where a crash must leave storage recoverable. No-op unless CARVE_CRASH_AT names it. */
export const crashPoint: (name: CrashPointName) => void = hit ?? (() => {});
