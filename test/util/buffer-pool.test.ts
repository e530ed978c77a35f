import { describe, expect, it } from "vitest";
import { BufferPool } from "../../src/util/buffer-pool.js";

describe("BufferPool", () => {
  it("hands out buffers of a power-of-two class at least as large as asked", () => {
    const pool = new BufferPool(1 << 30, 16 * 1024);
    expect(pool.acquire(1).length).toBe(16 * 1024);
    expect(pool.acquire(16 * 1024).length).toBe(16 * 1024);
    expect(pool.acquire(16 * 1024 + 1).length).toBe(32 * 1024);
    expect(pool.acquire(1_398_200).length).toBe(2 * 1024 * 1024);
  });

  it("reuses a released buffer of the same class, and only of that class", () => {
    const pool = new BufferPool(1 << 30);
    const a = pool.acquire(100_000);
    pool.release(a);
    expect(pool.retainedBytes).toBe(a.length);
    expect(pool.acquire(300_000)).not.toBe(a);
    expect(pool.acquire(100_001)).toBe(a);
    expect(pool.retainedBytes).toBe(0);
    expect(pool.acquire(100_000)).not.toBe(a);
  });

  it("keeps no more free bytes than its bound", () => {
    const pool = new BufferPool(64 * 1024);
    const bufs = [pool.acquire(20_000), pool.acquire(20_000), pool.acquire(20_000)];
    for (const b of bufs) pool.release(b);
    expect(pool.retainedBytes).toBe(64 * 1024); // two 32 KiB buffers; the third was dropped
    const again = [pool.acquire(20_000), pool.acquire(20_000), pool.acquire(20_000)];
    expect(again.filter((b) => bufs.includes(b))).toHaveLength(2);
  });

  it("refuses buffers it did not make (views, odd sizes)", () => {
    const pool = new BufferPool(1 << 30);
    pool.release(Buffer.alloc(20_000));
    pool.release(pool.acquire(20_000).subarray(16));
    pool.release(Buffer.alloc(64 * 1024).subarray(32 * 1024));
    expect(pool.retainedBytes).toBe(0);
  });
});
