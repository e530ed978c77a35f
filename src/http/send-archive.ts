import type { ServerResponse } from "node:http";

/** Reads of this size, and this many buffers in flight at most: 1 MiB per download, reused throughout. */
const READ_SIZE = 256 * 1024;
const BUFFERS = 4;

export class ClientGoneError extends Error {
  readonly code = "ERR_STREAM_PREMATURE_CLOSE";
  constructor() {
    super("the client closed the connection");
  }
}

/**
 * Sends bytes [start, end] of an archive with positional reads into a few reused buffers. Streaming a file
 * through a read stream allocates a fresh buffer per chunk; a 1 GiB download made 4096 of them, and the
 * garbage collector, pressed by that external memory, took ~40% of the service's time while serving.
 * A buffer is reused only after the response's write callback: the bytes have been handed to the socket.
 *
 * `onSent` learns the bytes given to the response so far. Resolves once the response has finished; rejects
 * with ClientGoneError if the client went away first, or with the read's error (the response is then
 * destroyed: its headers are out, so a cut connection is the only way left to say it failed).
 */
export async function sendRange(
  res: ServerResponse,
  readAt: (buffer: Buffer, length: number, position: number) => Promise<number>,
  start: number,
  end: number,
  onSent: (bytes: number) => void,
): Promise<void> {
  const free: Buffer[] = [];
  let allocated = 0;
  let wake: (() => void) | null = null;
  const notify = (): void => {
    const w = wake;
    wake = null;
    w?.();
  };
  res.on("close", notify);
  res.on("drain", notify);
  const gone = (): boolean => res.destroyed || (res.socket?.destroyed ?? false);
  let pending = 0; // writes whose callback has not come yet
  let writeFailed = false;
  try {
    let position = start;
    while (position <= end) {
      if (gone()) throw new ClientGoneError();
      let buf = free.pop();
      if (!buf) {
        if (allocated < BUFFERS) {
          buf = Buffer.allocUnsafeSlow(READ_SIZE);
          allocated++;
        } else {
          await new Promise<void>((resolve) => (wake = resolve));
          continue;
        }
      }
      const length = Math.min(READ_SIZE, end - position + 1);
      const n = await readAt(buf, length, position);
      if (n <= 0) throw new Error(`archive ended at byte ${position}, expected ${end + 1}`);
      if (gone()) throw new ClientGoneError();
      position += n;
      const chunk = buf;
      pending++;
      const more = res.write(chunk.subarray(0, n), (err) => {
        pending--;
        if (err) writeFailed = true;
        else free.push(chunk); // only now: until then the socket may still be reading it
        notify();
      });
      onSent(n);
      if (!more && !gone()) await new Promise<void>((resolve) => (wake = resolve));
    }
    if (!gone()) {
      await new Promise<void>((resolve) => {
        res.once("close", resolve);
        res.end(() => {
          res.off("close", resolve);
          resolve();
        });
      });
    }
    // Every byte handed to the OS: complete, even if the client closed the connection the moment it had
    // them (curl does, sometimes before Node reports the response finished).
    if (pending > 0 || writeFailed) throw new ClientGoneError();
  } catch (err) {
    if (!(err instanceof ClientGoneError)) res.destroy();
    throw err;
  } finally {
    res.off("close", notify);
    res.off("drain", notify);
  }
}
