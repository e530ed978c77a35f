import { createHash, randomBytes } from "node:crypto";
import { promises as fsp, writeSync } from "node:fs";
import path from "node:path";
import type { FileHandle } from "node:fs/promises";
import { AppError } from "../../errors.js";
import { crashPoint } from "../../util/crash-point.js";
import type { ImportLimits } from "../contracts.js";
import type { StoreHealth } from "../model.js";

/** Writes up to this size are done synchronously (see writeFully). */
export const SYNC_WRITE_MAX = 64 * 1024;

export function wrapIo(err: unknown, what: string): AppError {
  if (err instanceof AppError) return err;
  return new AppError("STORAGE_UNAVAILABLE", undefined, { cause: Object.assign(new Error(what), { cause: err }) });
}

export function errno(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

/**
 * Writes all of `data` at `position`. Small writes (journal records, osquery's default 8 KiB blocks) go
 * straight to the page cache synchronously: a thread-pool round trip costs more than the copy itself.
 */
export async function writeFully(fd: FileHandle, data: Buffer, position: number): Promise<void> {
  if (data.length <= SYNC_WRITE_MAX) {
    writeFullySync(fd.fd, data, position);
    return;
  }
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fd.write(data, done, data.length - done, position + done);
    if (bytesWritten <= 0) throw new Error("short write");
    done += bytesWritten;
  }
}

export function writeFullySync(fd: number, data: Buffer, position: number): void {
  let done = 0;
  while (done < data.length) {
    const n = writeSync(fd, data, done, data.length - done, position + done);
    if (n <= 0) throw new Error("short write");
    done += n;
  }
}

export async function readFully(fd: FileHandle, length: number, position: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fd.read(buf, done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done === length ? buf : buf.subarray(0, done);
}

export async function fsyncDir(dir: string): Promise<void> {
  const fd = await fsp.open(dir, "r");
  try {
    await fd.sync();
  } catch (err) {
    // Some filesystems refuse fsync on directories; the rename itself is still atomic.
    if (errno(err) !== "EINVAL" && errno(err) !== "EISDIR") throw err;
  } finally {
    await fd.close();
  }
}

/** SHA-256 and size of a whole file, read in 1 MiB chunks; `heartbeat` every 64 MiB. */
export async function hashFile(file: string, heartbeat?: () => Promise<void>): Promise<{ sha256: string; size: number }> {
  const hash = createHash("sha256");
  let size = 0;
  let sinceBeat = 0;
  for await (const chunk of (await fsp.open(file, "r")).createReadStream({ highWaterMark: 1024 * 1024 })) {
    const buf = chunk as Buffer;
    hash.update(buf);
    size += buf.length;
    sinceBeat += buf.length;
    if (heartbeat && sinceBeat >= 64 * 1024 * 1024) {
      await heartbeat();
      sinceBeat = 0;
    }
  }
  return { sha256: hash.digest("hex"), size };
}

/**
 * Streams `data` into `fd` from offset 0, hashing it, within `limits.maxBytes`; `heartbeat` every 16 MiB.
 * @throws AppError IMPORT_TOO_LARGE, IMPORT_ABORTED (the source failed; its own AppError is rethrown as is)
 */
export async function streamToFile(
  fd: FileHandle,
  data: AsyncIterable<Buffer>,
  limits: ImportLimits,
  heartbeat?: () => Promise<void>,
): Promise<{ sha256: string; head: Buffer; size: number }> {
  const hash = createHash("sha256");
  let head = Buffer.alloc(0);
  let size = 0;
  let sinceBeat = 0;
  try {
    for await (const chunk of data) {
      size += chunk.length;
      if (size > limits.maxBytes) throw new AppError("IMPORT_TOO_LARGE");
      hash.update(chunk);
      if (head.length < 4) head = Buffer.concat([head, chunk.subarray(0, 4 - head.length)]);
      await writeFully(fd, chunk, size - chunk.length);
      crashPoint("import.mid-stream");
      sinceBeat += chunk.length;
      if (heartbeat && sinceBeat >= 16 * 1024 * 1024) {
        await heartbeat();
        sinceBeat = 0;
      }
    }
  } catch (err) {
    if (err instanceof AppError) throw err;
    throw new AppError("IMPORT_ABORTED", undefined, { cause: err });
  }
  return { sha256: hash.digest("hex"), head, size };
}

export async function freeBytesOf(root: string): Promise<number> {
  try {
    const fs = await fsp.statfs(root);
    return fs.bavail * fs.bsize;
  } catch (err) {
    throw wrapIo(err, "statfs");
  }
}

/** Healthy when a file can be created and removed in tmp/ and the filesystem answers statfs. */
export async function probeHealth(backend: string, root: string, extra: Record<string, number>): Promise<StoreHealth> {
  const detail: Record<string, string | number | boolean | null> = { dataDir: root, ...extra };
  try {
    const probe = path.join(root, "tmp", `${randomBytes(8).toString("hex")}.probe`);
    await fsp.writeFile(probe, "probe", { flag: "wx" });
    await fsp.unlink(probe);
    detail.freeBytes = await freeBytesOf(root);
    return { ok: true, backend, detail };
  } catch (err) {
    detail.error = errno(err) ?? errno((err as { cause?: { cause?: unknown } }).cause?.cause) ?? (err instanceof Error ? err.message : "unknown");
    return { ok: false, backend, detail };
  }
}
