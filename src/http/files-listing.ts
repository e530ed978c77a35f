import { listTar, TarFormatError, type ListingLimits, type TarListing } from "../carves/tar-listing.js";
import { zstdDecompress, ZstdFormatError } from "../carves/zstd-stream.js";
import { AppError, isAppError } from "../errors.js";
import type { CarveReads } from "../services/types.js";
import { ByteBudget } from "../util/byte-budget.js";
import { LruMap } from "../util/lru.js";

/** Listings computed at once, all carves together: each is CPU-bound (zstd in JS, SHA-256 of every member). */
const CONCURRENT_LISTINGS = 2;
/** Listings kept: an archive is immutable once complete, so its listing is computed once per process. */
const CACHED_LISTINGS = 32;

export interface FilesListing extends TarListing {
  sha256: string | null;
  compression: string | null;
}

/**
 * The member listing of a complete carve's archive, within the configured bounds. Kept per carve and SHA-256
 * (a deleted and re-imported carve id gets a new one); concurrent requests for one carve share one read, and at
 * most CONCURRENT_LISTINGS archives are read at once.
 */
export class FilesLister {
  private readonly cache = new LruMap<string, FilesListing>(CACHED_LISTINGS);
  private readonly inFlight = new Map<string, Promise<FilesListing>>();
  private readonly slots = new ByteBudget(CONCURRENT_LISTINGS);

  constructor(
    private readonly reads: CarveReads,
    readonly limits: ListingLimits,
  ) {}

  /** @throws AppError ARCHIVE_NOT_TAR, CARVE_NOT_FOUND, CARVE_NOT_COMPLETE, STORAGE_UNAVAILABLE */
  async list(carveId: string, sha256: string | null): Promise<FilesListing> {
    const key = `${carveId}:${sha256 ?? ""}`;
    const cached = this.cache.get(key);
    if (cached) return cached;
    let running = this.inFlight.get(key);
    if (!running) {
      running = this.read(carveId).finally(() => this.inFlight.delete(key));
      this.inFlight.set(key, running);
    }
    const listing = await running;
    if (listing.sha256 === sha256) this.cache.set(key, listing);
    return listing;
  }

  private async read(carveId: string): Promise<FilesListing> {
    const release = await this.slots.acquire(1);
    try {
      const handle = await this.reads.openArchive(carveId);
      try {
        const source = handle.record.compression === "zstd" ? zstdDecompress(handle.stream) : (handle.stream as AsyncIterable<Buffer>);
        const listing = await listTar(source, this.limits);
        return { ...listing, sha256: handle.record.sha256, compression: handle.record.compression };
      } catch (err) {
        if (err instanceof TarFormatError || err instanceof ZstdFormatError) throw new AppError("ARCHIVE_NOT_TAR", err.message);
        if (isAppError(err)) throw err;
        throw new AppError("STORAGE_UNAVAILABLE", "archive stream failed", { cause: err });
      } finally {
        handle.stream.destroy();
      }
    } finally {
      release();
    }
  }
}
