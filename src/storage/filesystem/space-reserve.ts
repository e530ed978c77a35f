import { closeSync, ftruncateSync, fsyncSync, openSync, statSync, statfsSync, writeSync } from "node:fs";
import path from "node:path";
import type { Logger } from "../../logger.js";

/** The file that holds the reserve, in the data directory. */
export const RESERVE_FILE = "custody.reserve";
/** How often a paused store looks whether space came back. */
const RECHECK_MS = 2_000;

/**
 * Disk kept back for custody: when the disk is full, a legal hold, a verification or an audit event must still be
 * recorded (they are small, and a responder needs them most when something went wrong). The reserve is a file of
 * zeros written at start-up; when a custody write finds the disk full it is emptied and the write retried, and block
 * writes pause (STORAGE_UNAVAILABLE, agents retry) until there is room to write the reserve again, so agents cannot
 * eat it. Sized to at most an eighth of the free space, so a small disk is not filled by it.
 */
export class SpaceReserve {
  private released = false;
  private checkedAt = 0;

  private constructor(
    private readonly file: string,
    private readonly size: number,
    private readonly logger: Logger,
  ) {}

  /** Writes the reserve if it is missing or short (best effort: a disk already full gets none). */
  static open(dataDir: string, wanted: number, logger: Logger): SpaceReserve {
    const file = path.join(dataDir, RESERVE_FILE);
    const have = SpaceReserve.sizeOf(file);
    const free = SpaceReserve.free(dataDir);
    const size = Math.floor(Math.min(wanted, have + free / 8) / 4096) * 4096;
    const reserve = new SpaceReserve(file, size, logger);
    if (!reserve.fill()) reserve.released = size > 0;
    return reserve;
  }

  private static sizeOf(file: string): number {
    try {
      return statSync(file).size;
    } catch {
      return 0;
    }
  }

  private static free(dir: string): number {
    const s = statfsSync(dir);
    return s.bavail * s.bsize;
  }

  /** Writes zeros up to the reserve's size; false when the disk had no room for it. */
  private fill(): boolean {
    if (this.size === 0) return true;
    let fd: number | null = null;
    try {
      fd = openSync(this.file, "a+", 0o600);
      const zeros = Buffer.alloc(Math.min(this.size, 1024 * 1024));
      for (let at = SpaceReserve.sizeOf(this.file); at < this.size; ) {
        const n = writeSync(fd, zeros, 0, Math.min(zeros.length, this.size - at), at);
        at += n;
      }
      fsyncSync(fd);
      return true;
    } catch (err) {
      this.logger.warn({ err: (err as Error).message, bytes: this.size }, "no room for the custody reserve");
      if (fd !== null) ftruncateSync(fd, 0);
      return false;
    } finally {
      if (fd !== null) closeSync(fd);
    }
  }

  get bytes(): number {
    return this.size;
  }

  /** Empties the reserve for a custody write that found the disk full. False when there is nothing left to give. */
  release(): boolean {
    if (this.released || this.size === 0) return false;
    const fd = openSync(this.file, "r+");
    try {
      ftruncateSync(fd, 0);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    this.released = true;
    this.logger.error({ bytes: this.size }, "storage full: custody reserve released for holds and audit; block writes paused until space is freed");
    return true;
  }

  /**
   * Whether block writes may go on: always while the reserve is in place; once released, only after there is room
   * for the reserve and as much again, when it is written back (looked at every few seconds, not per block).
   */
  writable(dataDir: string): boolean {
    if (!this.released) return true;
    const now = Date.now();
    if (now - this.checkedAt < RECHECK_MS) return false;
    this.checkedAt = now;
    if (SpaceReserve.free(dataDir) < 2 * this.size || !this.fill()) return false;
    this.released = false;
    this.logger.info({ bytes: this.size }, "space freed: custody reserve restored, block writes resume");
    return true;
  }
}
