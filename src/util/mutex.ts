/** Serialises async critical sections in this process. Used only where one process owns the data
 * (the filesystem store holds an exclusive lock on its data directory). */
export class Mutex {
  private tail: Promise<void> = Promise.resolve();
  private pending = 0;

  run<T>(fn: () => Promise<T>): Promise<T> {
    this.pending++;
    const result = this.tail.then(fn);
    this.tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result.finally(() => {
      this.pending--;
    });
  }

  get idle(): boolean {
    return this.pending === 0;
  }
}
