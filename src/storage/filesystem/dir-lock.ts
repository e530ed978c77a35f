import { promises as fsp } from "node:fs";
import path from "node:path";

export interface DirLock {
  release(): Promise<void>;
}

/** Directories locked by this process (a store dropped without close() during a test keeps its entry). */
const heldHere = new Set<string>();

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as { code?: string }).code === "EPERM";
  }
}

/**
 * Makes this process the only owner of a data directory: the filesystem store's in-process locking is
 * correct only if no other process writes there. A lock left by a dead process (kill -9) is taken over.
 * @throws Error naming the live owner's pid.
 */
export async function acquireDirLock(dir: string): Promise<DirLock> {
  const file = path.join(dir, ".lock");
  if (heldHere.has(dir)) throw new Error(`data directory ${dir} is already open in this process`);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await fsp.writeFile(file, `${process.pid}\n`, { flag: "wx", mode: 0o640 });
      heldHere.add(dir);
      return {
        release: async () => {
          heldHere.delete(dir);
          await fsp.unlink(file).catch(() => undefined);
        },
      };
    } catch (err) {
      if ((err as { code?: string }).code !== "EEXIST") throw err;
    }
    const owner = Number.parseInt((await fsp.readFile(file, "utf8").catch(() => "")).trim(), 10);
    if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && alive(owner)) {
      throw new Error(`data directory ${dir} is in use by process ${owner} (remove ${file} if that is wrong)`);
    }
    // Stale: its owner is gone (or it is our own pid from an earlier life in a container).
    await fsp.unlink(file).catch(() => undefined);
  }
  throw new Error(`could not lock data directory ${dir}`);
}
