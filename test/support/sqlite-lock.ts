import { spawn, type ChildProcess } from "node:child_process";

export interface LockHolder {
  proc: ChildProcess;
  /** Rolls back and quits; rejects unless sqlite3 exits 0. */
  release(): Promise<void>;
}

/**
 * `sqlite3 <file>` in another process, inside BEGIN IMMEDIATE: it holds the database's write lock until release(),
 * as an operator's shell or a backup tool can. Writers of that file wait for their busy timeout and then fail;
 * readers go on (WAL).
 */
export async function holdWriteLock(file: string): Promise<LockHolder> {
  const proc = spawn("sqlite3", [file], { stdio: ["pipe", "pipe", "pipe"] });
  let out = "";
  proc.stdout.on("data", (c: Buffer) => (out += c.toString()));
  proc.stderr.on("data", (c: Buffer) => (out += c.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once("exit", resolve));
  // .bail: if BEGIN fails, sqlite3 exits instead of printing the marker
  proc.stdin.write(".bail on\n.timeout 10000\nBEGIN IMMEDIATE;\nSELECT 'write-' || 'lock-held';\n");
  const deadline = Date.now() + 30_000;
  while (!out.includes("write-lock-held")) {
    if (Date.now() > deadline || proc.exitCode !== null) throw new Error(`sqlite3 did not take the lock: ${out}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    proc,
    release: async () => {
      proc.stdin.end("ROLLBACK;\n.quit\n");
      const code = await exited;
      if (code !== 0) throw new Error(`sqlite3 exited with ${code}: ${out}`);
    },
  };
}
