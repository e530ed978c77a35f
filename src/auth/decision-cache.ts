import { createHmac, randomBytes } from "node:crypto";
import { LruMap } from "../util/lru.js";

interface Entry<V> {
  value: V;
  expiresAtMs: number;
}

/**
 * A short-lived cache of authorization decisions.
 *
 * Keys are HMAC-SHA256 under a key drawn at random when the cache is made, over the token, the namespace
 * and the question. So an entry can only be found by presenting the very token again: a token accessor
 * (not a secret: Vault lists and logs them) or another token never reaches another token's entry, and the
 * keys held in memory are useless outside this process (no offline guessing, no replay).
 *
 * Concurrent identical questions share one in-flight computation.
 */
export class DecisionCache<V> {
  private readonly hmacKey = randomBytes(32);
  private entries: LruMap<string, Entry<V>>;
  private readonly inFlight = new Map<string, Promise<V>>();

  constructor(
    private readonly options: {
      /** Upper bound for any entry's life, in milliseconds (0 disables caching). */
      maxAgeMs: number;
      maxEntries: number;
      now: () => number;
    },
  ) {
    this.entries = new LruMap(options.maxEntries);
  }

  /** The cache key of a token and a question: never stored or logged anywhere else. */
  keyOf(token: string, namespace: string, question: readonly string[]): string {
    // JSON keeps the parts apart: ("ab","c") and ("a","bc") differ.
    return createHmac("sha256", this.hmacKey).update(JSON.stringify([token, namespace, ...question]), "utf8").digest("hex");
  }

  get(key: string): V | undefined {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    if (this.options.now() >= entry.expiresAtMs) {
      this.entries.delete(key);
      return undefined;
    }
    return entry.value;
  }

  /**
   * Remembers a value until `min(now + maxAge, notAfterMs)`. Nothing is kept when that is not in the future.
   * @param notAfterMs e.g. the token's expiry; null = no limit of its own.
   */
  set(key: string, value: V, notAfterMs: number | null): void {
    const now = this.options.now();
    const expiresAtMs = Math.min(now + this.options.maxAgeMs, notAfterMs ?? Number.POSITIVE_INFINITY);
    if (expiresAtMs <= now) return;
    this.entries.set(key, { value, expiresAtMs });
  }

  /** Runs `compute` once for concurrent callers of the same key. */
  shared(key: string, compute: () => Promise<V>): Promise<V> {
    const pending = this.inFlight.get(key);
    if (pending) return pending;
    const p = compute().finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, p);
    return p;
  }

  clear(): void {
    this.entries = new LruMap(this.options.maxEntries);
  }

  get size(): number {
    return this.entries.size;
  }
}
