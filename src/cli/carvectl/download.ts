import { createHash, type Hash } from "node:crypto";
import { createReadStream } from "node:fs";
import { link, open, rename, stat, unlink } from "node:fs/promises";
import { ApiError, type CarveApiClient } from "../../client/api-client.js";
import { CliError, EXIT, humanBytes, printable, type CliIo, type ExitCode } from "./common.js";

export interface GetOptions {
  carveId: string;
  /** File to write; "-" for stdout; default the server's file name for the archive. */
  output?: string | undefined;
  force: boolean;
  json: boolean;
}

const SAFE_FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$/;

/** Progress on a terminal: one line rewritten in place, at most a few times a second. */
export class Progress {
  private last = 0;
  private shown = false;
  constructor(
    private readonly io: CliIo,
    private readonly label: string,
    private readonly total: number | null,
  ) {}
  update(done: number, force = false): void {
    if (!this.io.stderr.isTTY) return;
    const now = Date.now();
    if (!force && now - this.last < 200) return;
    this.last = now;
    const pct = this.total ? ` ${Math.floor((done / this.total) * 100)}%` : "";
    const of = this.total !== null ? ` / ${humanBytes(this.total)}` : "";
    this.io.stderr.write(`\r${this.label}: ${humanBytes(done)}${of}${pct}\u001b[K`);
    this.shown = true;
  }
  end(): void {
    if (this.shown) this.io.stderr.write("\n");
    this.shown = false;
  }
}

async function hashFile(file: string, hash: Hash): Promise<void> {
  for await (const chunk of createReadStream(file) as AsyncIterable<Buffer>) hash.update(chunk);
}

async function sizeOf(file: string): Promise<number | null> {
  try {
    return (await stat(file)).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw err;
  }
}

/** Writes one chunk to stdout, waiting while it is full. */
function toStdout(io: CliIo, chunk: Uint8Array): Promise<void> | undefined {
  if (io.stdout.write(chunk)) return undefined;
  return new Promise((resolve) => io.stdout.once("drain", resolve));
}

/**
 * `carvectl get`: the archive as stored, into FILE.part first, resumed with Range (If-Range: its SHA-256, so
 * a different archive restarts it) when a .part is there, moved to FILE only once its SHA-256 equals the
 * carve's. An existing FILE is kept unless --force.
 */
export async function getArchive(client: CarveApiClient, io: CliIo, opts: GetOptions): Promise<ExitCode> {
  const carve = await client.getCarve(opts.carveId);
  if (carve.status !== "complete" || carve.archive === null || carve.sha256 === null) {
    throw new CliError(EXIT.CONFLICT, `carve ${carve.carveId} is ${carve.status} (${carve.blocksReceived} of ${carve.blockCount} blocks): nothing to download yet`);
  }
  const expected = carve.sha256;
  const size = carve.archive.size;
  const proposed = SAFE_FILE_NAME.test(carve.archive.fileName) ? carve.archive.fileName : `${carve.carveId}.tar`;
  const output = opts.output ?? proposed;
  if (output === "-") return toStdoutVerified(client, io, opts.carveId, expected);

  if (!opts.force && (await sizeOf(output)) !== null) {
    throw new CliError(EXIT.EXISTS, `${output} exists: pass --force to replace it, or -o another file`);
  }
  const part = `${output}.part`;
  const hash = createHash("sha256");
  let have = (await sizeOf(part)) ?? 0;
  if (have > size) have = 0; // not a prefix of this archive
  if (have > 0) await hashFile(part, hash);
  const resumedFrom = have;

  const progress = new Progress(io, printable(output), size);
  let actual: string | null = null;
  if (have < size) {
    let download;
    try {
      download = await client.openArchive(opts.carveId, { from: have, sha256: expected, signal: io.signal });
    } catch (err) {
      // The .part already holds every byte the server has: nothing left to fetch, verify what is there.
      if (!(err instanceof ApiError && err.code === "RANGE_NOT_SATISFIABLE")) throw err;
    }
    if (download) actual = await receive(download, part, have, hash, progress, io, size);
  }
  progress.end();
  actual ??= hash.digest("hex");
  const got = (await sizeOf(part)) ?? 0;
  if (actual !== expected || got !== size) {
    await unlink(part).catch(() => undefined);
    throw new CliError(EXIT.INTEGRITY, `downloaded ${got} bytes with SHA-256 ${actual}, the carve has ${size} bytes with ${expected}: the partial file was removed; run the command again`);
  }
  if (opts.force) await rename(part, output);
  else {
    // link() refuses an existing name (rename would replace a file that appeared meanwhile).
    try {
      await link(part, output);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EEXIST") throw new CliError(EXIT.EXISTS, `${output} appeared meanwhile: pass --force to replace it (${part} is complete)`);
      throw err;
    }
    await unlink(part);
  }
  const summary = { carveId: carve.carveId, file: output, bytes: size, sha256: expected, verified: true, resumedFrom };
  if (opts.json || !io.stdout.isTTY) io.stdout.write(`${JSON.stringify(summary)}\n`);
  else io.stdout.write(`saved ${printable(output)}: ${humanBytes(size)}, SHA-256 ${expected} verified${resumedFrom > 0 ? ` (resumed at byte ${resumedFrom})` : ""}\n`);
  return EXIT.OK;
}

/** Appends the reply to the .part (or rewrites it when the whole archive came back); the SHA-256 of all of it. */
async function receive(
  download: Awaited<ReturnType<CarveApiClient["openArchive"]>>,
  part: string,
  have: number,
  prefix: Hash,
  progress: Progress,
  io: CliIo,
  size: number,
): Promise<string> {
  // 200 to a range request: If-Range did not match (another archive under that id): start over.
  const whole = download.status !== 206;
  if (!whole && download.start !== have) throw new CliError(EXIT.FAILED, `asked for bytes from ${have}, the server sent from ${download.start}`);
  const hash = whole ? createHash("sha256") : prefix;
  let written = whole ? 0 : have;
  const fh = await open(part, whole ? "w" : "a");
  try {
    for await (const chunk of download.body) {
      hash.update(chunk);
      await fh.write(chunk);
      written += chunk.length;
      progress.update(written);
    }
    progress.update(written, true);
  } catch (err) {
    progress.end();
    if ((err as { name?: unknown }).name === "AbortError" || io.signal.aborted) {
      throw new CliError(EXIT.INTERRUPTED, `interrupted at ${written} of ${size} bytes: ${part} is kept; run the same command again to resume`);
    }
    throw new CliError(EXIT.UNAVAILABLE, `the download broke off at ${written} of ${size} bytes: ${part} is kept; run the same command again to resume`);
  } finally {
    await fh.close();
  }
  return hash.digest("hex");
}

/** `get -o -`: the archive to stdout (nothing to resume), its SHA-256 checked at the end. */
async function toStdoutVerified(client: CarveApiClient, io: CliIo, carveId: string, expected: string): Promise<ExitCode> {
  const download = await client.openArchive(carveId, { signal: io.signal });
  const hash = createHash("sha256");
  for await (const chunk of download.body) {
    hash.update(chunk);
    const wait = toStdout(io, chunk);
    if (wait) await wait;
  }
  const actual = hash.digest("hex");
  if (actual !== expected) throw new CliError(EXIT.INTEGRITY, `the bytes written have SHA-256 ${actual}, the carve has ${expected}: discard them`);
  return EXIT.OK;
}
