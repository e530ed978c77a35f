/**
 * Reusable buffers for request bodies. A 1 MiB block arrives as a ~1.4 MB body; allocating one per request
 * and dropping it made garbage collection about a fifth of the service's CPU and most of its peak RSS. Buffers
 * come in power-of-two size classes (the blocks of one carve are all the same size, so classes are reused
 * almost always); at most `maxRetainedBytes` of free buffers are kept, the rest are left to the collector.
 *
 * A buffer must be given back only when nothing else can still read or write it.
 */
export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private retained = 0;

  constructor(
    private readonly maxRetainedBytes: number,
    private readonly minClassBytes = 16 * 1024,
  ) {}

  /** Bytes of free buffers held for reuse. */
  get retainedBytes(): number {
    return this.retained;
  }

  private classOf(length: number): number {
    let size = this.minClassBytes;
    while (size < length) size *= 2;
    return size;
  }

  /** A buffer of at least `length` bytes (its contents are whatever was there before). */
  acquire(length: number): Buffer {
    const size = this.classOf(length);
    const list = this.free.get(size);
    const buf = list?.pop();
    if (buf) {
      this.retained -= size;
      return buf;
    }
    return Buffer.allocUnsafeSlow(size);
  }

  /** Gives back a buffer from acquire(). Kept for reuse while the pool has room, else dropped. */
  release(buf: Buffer): void {
    const size = buf.length;
    if (size !== this.classOf(size) || buf.byteOffset !== 0) return; // not one of ours
    if (this.retained + size > this.maxRetainedBytes) return;
    let list = this.free.get(size);
    if (!list) {
      list = [];
      this.free.set(size, list);
    }
    list.push(buf);
    this.retained += size;
  }
}
