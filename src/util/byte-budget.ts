/**
 * A counting semaphore over bytes. Agent request bodies take their bytes as they arrive (not as they are
 * declared), so the memory held by bodies in flight is bounded whatever the number of agents, and a client that
 * announces a large body and trickles it holds only what it really sent. A body that has to wait is paused:
 * TCP backpressure keeps its next bytes in the kernel. Whoever already holds everything in use may always take
 * more, so one request larger than the whole budget still runs (alone).
 */
export class ByteBudget {
  private used = 0;
  private readonly waiting: Array<{ bytes: number; held: number; grant: () => void }> = [];

  constructor(readonly capacity: number) {}

  /** Resolves with a release function once `bytes` fit. */
  async acquire(bytes: number): Promise<() => void> {
    const want = Math.min(Math.max(bytes, 0), this.capacity);
    await (this.take(want) ?? Promise.resolve());
    return this.releaser(want);
  }

  /**
   * Takes `bytes` for a holder that already holds `held` of the bytes in use: null when granted at once (no
   * promise made on the hot path), else a promise that resolves once granted. Give them back with give().
   */
  take(bytes: number, held = 0): Promise<void> | null {
    if (this.waiting.length === 0 && this.fits(bytes, held)) {
      this.used += bytes;
      return null;
    }
    return new Promise<void>((resolve) => this.waiting.push({ bytes, held, grant: resolve }));
  }

  give(bytes: number): void {
    this.used -= bytes;
    this.drain();
  }

  private fits(bytes: number, held: number): boolean {
    return this.used + bytes <= this.capacity || this.used <= held;
  }

  private releaser(bytes: number): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.give(bytes);
    };
  }

  /** First come, first served: a large request is not starved by a stream of small ones. */
  private drain(): void {
    while (this.waiting.length > 0) {
      const next = this.waiting[0] as { bytes: number; held: number; grant: () => void };
      if (!this.fits(next.bytes, next.held)) return;
      this.waiting.shift();
      this.used += next.bytes;
      next.grant();
    }
  }

  get inUse(): number {
    return this.used;
  }

  get queued(): number {
    return this.waiting.length;
  }
}
