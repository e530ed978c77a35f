/**
 * A small tmpfs that only a test's service child sees: a holder process runs in its own user and mount
 * namespaces (`unshare --user --map-root-user --mount`), mounts a size-limited tmpfs there and sleeps; the
 * service is started inside those namespaces with `nsenter`, so a restart keeps the same data; the test
 * reads and writes the tmpfs through /proc/<holder>/root. When the tmpfs is full, writes fail with a real
 * ENOSPC from the kernel. Nothing is mounted in the test's own namespace: killing the holder (and the
 * service) makes the mount disappear.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync, statfsSync, unlinkSync, writeSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";

export const PAGE = 4096;

export interface TmpfsNamespace {
  /** The mount point, as the service (inside the namespace) sees it. */
  mountPoint: string;
  /** The same path seen from the test process. */
  outside(...parts: string[]): string;
  /** Command prefix that runs a program inside the namespaces (it execs, the pid stays the program's). */
  wrapper: string[];
  /** Free bytes of the tmpfs. */
  freeBytes(): number;
  /** Fills the tmpfs with a file until only `leaveBytes` (rounded down to pages) remain free. */
  fill(name: string, leaveBytes?: number): void;
  /** Removes a filler file. */
  free(name: string): void;
  close(): Promise<void>;
}

export async function openTmpfsNamespace(sizeBytes: number): Promise<TmpfsNamespace> {
  const mountPoint = await mkdtemp(path.join(tmpdir(), "carve-tmpfs-"));
  const holder: ChildProcess = spawn(
    "unshare",
    [
      "--user",
      "--map-root-user",
      "--mount",
      "--propagation",
      "private",
      "sh",
      "-c",
      'mount -t tmpfs -o "size=$1" tmpfs "$2" && echo READY && exec sleep 100000',
      "sh",
      String(sizeBytes),
      mountPoint,
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let output = "";
  await new Promise<void>((resolve, reject) => {
    const onData = (c: Buffer): void => {
      output += c.toString("utf8");
      if (output.includes("READY")) resolve();
    };
    holder.stdout?.on("data", onData);
    holder.stderr?.on("data", (c: Buffer) => (output += c.toString("utf8")));
    holder.once("error", reject);
    holder.once("exit", (code) => reject(new Error(`unshare/mount exited with ${code}: ${output.trim()}`)));
  }).catch(async (err: unknown) => {
    holder.kill("SIGKILL");
    await rm(mountPoint, { recursive: true, force: true });
    throw err;
  });
  const pid = holder.pid as number;
  const outside = (...parts: string[]): string => path.join(`/proc/${pid}/root`, mountPoint, ...parts);
  const ns: TmpfsNamespace = {
    mountPoint,
    outside,
    wrapper: ["nsenter", `--target=${pid}`, "--user", "--mount", "--"],
    freeBytes: () => {
      const s = statfsSync(outside());
      return s.bavail * s.bsize;
    },
    fill: (name, leaveBytes = 0) => {
      const fd = openSync(outside(name), "w");
      try {
        const chunk = Buffer.alloc(64 * 1024, 0x5a);
        for (;;) {
          const want = ns.freeBytes() - Math.floor(leaveBytes / PAGE) * PAGE;
          if (want <= 0) break;
          try {
            writeSync(fd, chunk, 0, Math.min(chunk.length, want));
          } catch (err) {
            if ((err as { code?: string }).code === "ENOSPC") break;
            throw err;
          }
        }
      } finally {
        closeSync(fd);
      }
    },
    free: (name) => unlinkSync(outside(name)),
    close: async () => {
      if (holder.exitCode === null && holder.signalCode === null) {
        const gone = new Promise((r) => holder.once("exit", r));
        holder.kill("SIGKILL");
        await gone;
      }
      await rm(mountPoint, { recursive: true, force: true });
    },
  };
  return ns;
}

/** null when a tmpfs namespace can be made here and really runs out of space; else what went wrong. */
export async function tmpfsNamespaceProblem(): Promise<string | null> {
  let ns: TmpfsNamespace | undefined;
  try {
    ns = await openTmpfsNamespace(256 * 1024);
    ns.fill("probe");
    if (ns.freeBytes() !== 0) return `filling the tmpfs left ${ns.freeBytes()} bytes free`;
    try {
      const fd = openSync(ns.outside("more"), "w");
      try {
        writeSync(fd, Buffer.alloc(PAGE));
      } finally {
        closeSync(fd);
      }
      return "a write to a full tmpfs succeeded";
    } catch (err) {
      if ((err as { code?: string }).code !== "ENOSPC") throw err;
    }
    return null;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  } finally {
    await ns?.close();
  }
}
