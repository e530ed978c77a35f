/**
 * One holder of a budget's bytes (a request body being read): `held` is what it has taken so far.
 */
export interface BudgetHolder {
  held: number;
}

interface Waiter {
  /** Granted all at once: what the holder needs now, plus what it asked to take ahead. */
  bytes: number;
  holder: BudgetHolder | undefined;
  grant: (granted: number) => void;
}

/**
 * A counting semaphore over bytes. Agent request bodies take their bytes as they arrive (not as they are
 * declared), so the memory held by bodies in flight is bounded whatever the number of agents, and a client that
 * announces a large body and trickles it holds only what it really sent. A body that has to wait is paused:
 * TCP backpressure keeps its next bytes in the kernel.
 *
 * Bodies taken in pieces can wait on each other: 50 agents sending 1.4 MB bodies into 16 MiB filled the budget
 * with 23 half-read bodies, none of which could finish, and the service stopped (every later request waited
 * too). So the oldest holder (the first body still holding or waiting for bytes) may always take more, even past
 * the capacity: one body at a time always progresses, and memory stays under the capacity plus one body. A
 * holder that holds everything in use may always take more too (one request larger than the whole budget still
 * runs, alone). A senior that stops sending is the progress watch's business (it is not paused, so its clock
 * runs): it is cut off and the next oldest goes.
 */
export class ByteBudget {
  private used = 0;
  private readonly waiting: Waiter[] = [];
  /** Holders in the order they first took (or waited for) bytes; the first is the senior. */
  private readonly holders = new Set<BudgetHolder>();

  constructor(readonly capacity: number) {}

  /** Resolves with a release function once `bytes` fit. */
  async acquire(bytes: number): Promise<() => void> {
    const want = Math.min(Math.max(bytes, 0), this.capacity);
    await (this.take(want) ?? Promise.resolve());
    return this.releaser(want);
  }

  /**
   * Takes `bytes` for `holder` (whose `held` the caller keeps up to date): null when granted at once (no promise
   * made on the hot path), else a promise that resolves with the bytes granted once they fit: `ahead` of them
   * (at least `bytes`) when the take had to wait. A holder has at most one take waiting. Give the bytes back with
   * release(holder) (or give() without a holder).
   */
  take(bytes: number, holder?: BudgetHolder, ahead = bytes): Promise<number> | null {
    if (holder !== undefined) this.holders.add(holder);
    if ((this.waiting.length === 0 || (holder !== undefined && holder === this.senior())) && this.fits(bytes, holder)) {
      this.used += bytes;
      return null;
    }
    const want = Math.max(ahead, bytes);
    return new Promise<number>((resolve) => this.waiting.push({ bytes: want, holder, grant: () => resolve(want) }));
  }

  give(bytes: number): void {
    this.used -= bytes;
    this.drain();
  }

  /**
   * Gives back everything `holder` holds and forgets it. A take of its still waiting is granted (and is the
   * caller's to give back: a read that failed while waiting does so when the grant arrives).
   */
  release(holder: BudgetHolder): void {
    this.used -= holder.held;
    holder.held = 0;
    this.holders.delete(holder);
    for (let i = this.waiting.length - 1; i >= 0; i--) {
      const w = this.waiting[i] as Waiter;
      if (w.holder !== holder) continue;
      this.waiting.splice(i, 1);
      this.used += w.bytes;
      w.grant(w.bytes);
    }
    this.drain();
  }

  private senior(): BudgetHolder | undefined {
    for (const h of this.holders) return h;
    return undefined;
  }

  private fits(bytes: number, holder: BudgetHolder | undefined): boolean {
    if (this.used + bytes <= this.capacity) return true;
    return holder !== undefined && (this.used <= holder.held || holder === this.senior());
  }

  private releaser(bytes: number): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.give(bytes);
    };
  }

  /** The senior first, then first come, first served: a large request is not starved by a stream of small ones. */
  private drain(): void {
    const senior = this.senior();
    if (senior !== undefined) {
      const at = this.waiting.findIndex((w) => w.holder === senior);
      if (at >= 0) {
        const w = this.waiting[at] as Waiter;
        this.waiting.splice(at, 1);
        this.used += w.bytes;
        w.grant(w.bytes);
      }
    }
    while (this.waiting.length > 0) {
      const next = this.waiting[0] as Waiter;
      if (!this.fits(next.bytes, next.holder)) return;
      this.waiting.shift();
      this.used += next.bytes;
      next.grant(next.bytes);
    }
  }

  get inUse(): number {
    return this.used;
  }

  get queued(): number {
    return this.waiting.length;
  }
}
