/**
 * A counting semaphore over bytes: request bodies wait for room before they are read, so the memory held
 * by bodies in flight is bounded whatever the number of agents (a waiting request's socket stays paused:
 * TCP backpressure keeps its bytes in the kernel). A single request larger than the whole budget runs
 * alone.
 */
export class ByteBudget {
  private used = 0;
  private readonly waiting: Array<{ bytes: number; grant: () => void }> = [];

  constructor(readonly capacity: number) {}

  /** Resolves with a release function once `bytes` fit. */
  async acquire(bytes: number): Promise<() => void> {
    const want = Math.min(Math.max(bytes, 0), this.capacity);
    if (this.waiting.length === 0 && this.used + want <= this.capacity) {
      this.used += want;
      return this.releaser(want);
    }
    await new Promise<void>((resolve) => this.waiting.push({ bytes: want, grant: resolve }));
    return this.releaser(want);
  }

  private releaser(bytes: number): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.used -= bytes;
      this.drain();
    };
  }

  /** First come, first served: a large request is not starved by a stream of small ones. */
  private drain(): void {
    while (this.waiting.length > 0) {
      const next = this.waiting[0] as { bytes: number; grant: () => void };
      if (this.used + next.bytes > this.capacity) return;
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
