import type { IncomingMessage, ServerResponse } from "node:http";
import type { Logger } from "../logger.js";

/**
 * Progress-based request timeouts. Node's own `requestTimeout` cuts a request off after a fixed time however
 * fast its body moves (a 256 MiB import on a busy machine got a 408 while still streaming); here a request is
 * cut off only when it stops moving:
 *  - idle: no byte of it arrived for `idleMs` (every request, from its headers until its body is complete);
 *  - too slow: a body marked with `requireRate` (agent bodies) received fewer than `minBytesPerSecond` x window
 *    bytes in a window of `windowMs`. A trickling sender is dropped within two windows, whatever it declared.
 * Time a request spends paused by the service itself (waiting for the in-flight budget) is not held against it.
 * One shared timer checks every watched request once a second: progress is read from `socket.bytesRead`.
 */
export interface BodyWatchOptions {
  idleMs: number;
  minBytesPerSecond: number;
  windowMs: number;
  logger: Logger;
}

interface Entry {
  req: IncomingMessage;
  res: ServerResponse;
  lastBytes: number;
  lastProgressAt: number;
  rate: boolean;
  windowStart: number;
  windowBytes: number;
  paused: boolean;
  onTimeout: ((reason: TimeoutReason) => void) | null;
}

export type TimeoutReason = "idle" | "too-slow";

const TICK_MS = 1000;

export class BodyWatch {
  private readonly entries = new Map<IncomingMessage, Entry>();
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly options: BodyWatchOptions) {}

  /** Watches a request until its body is complete (or it closes). */
  watch(req: IncomingMessage, res: ServerResponse): void {
    if (req.complete || this.entries.has(req)) return;
    const now = Date.now();
    const bytes = req.socket.bytesRead;
    this.entries.set(req, {
      req,
      res,
      lastBytes: bytes,
      lastProgressAt: now,
      rate: false,
      windowStart: now,
      windowBytes: bytes,
      paused: false,
      onTimeout: null,
    });
    req.once("close", () => this.entries.delete(req));
    if (this.timer === null) {
      this.timer = setInterval(() => this.tick(), TICK_MS);
      this.timer.unref();
    }
  }

  /** Holds this body to the minimum rate; `onTimeout` (else the default 408) runs when it stalls. */
  requireRate(req: IncomingMessage, onTimeout?: (reason: TimeoutReason) => void): void {
    const e = this.entries.get(req);
    if (!e) return;
    e.rate = this.options.minBytesPerSecond > 0;
    if (onTimeout) e.onTimeout = onTimeout;
  }

  /** Sets who answers a timeout of this request (the reader of its body). */
  onTimeout(req: IncomingMessage, handler: (reason: TimeoutReason) => void): void {
    const e = this.entries.get(req);
    if (e) e.onTimeout = handler;
  }

  /** The service stopped reading this request (budget wait): its clock stops until `resume`. */
  pause(req: IncomingMessage): void {
    const e = this.entries.get(req);
    if (e) e.paused = true;
  }

  resume(req: IncomingMessage): void {
    const e = this.entries.get(req);
    if (!e) return;
    e.paused = false;
    const now = Date.now();
    e.lastBytes = req.socket.bytesRead;
    e.lastProgressAt = now;
    e.windowStart = now;
    e.windowBytes = e.lastBytes;
  }

  get size(): number {
    return this.entries.size;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.entries.clear();
  }

  private tick(): void {
    const now = Date.now();
    const { idleMs, minBytesPerSecond, windowMs } = this.options;
    for (const e of this.entries.values()) {
      if (e.req.complete || e.req.destroyed) {
        this.entries.delete(e.req);
        continue;
      }
      if (e.paused) continue;
      const bytes = e.req.socket.bytesRead;
      if (bytes !== e.lastBytes) {
        e.lastBytes = bytes;
        e.lastProgressAt = now;
      }
      let reason: TimeoutReason | null = null;
      if (now - e.lastProgressAt >= idleMs) reason = "idle";
      else if (e.rate && now - e.windowStart >= windowMs) {
        const want = (minBytesPerSecond * (now - e.windowStart)) / 1000;
        if (bytes - e.windowBytes < want) reason = "too-slow";
        e.windowStart = now;
        e.windowBytes = bytes;
      }
      if (reason === null) continue;
      this.entries.delete(e.req);
      this.options.logger.warn(
        { reason, bytesRead: bytes, remoteAddress: e.req.socket.remoteAddress, method: e.req.method },
        "request cut off: its body stopped moving",
      );
      if (e.onTimeout) e.onTimeout(reason);
      else answerTimeout(e.req, e.res, reason);
    }
  }
}

export function timeoutMessage(reason: TimeoutReason): string {
  return reason === "idle" ? "the request stopped arriving" : "the request body arrives too slowly";
}

/**
 * Text an agent counts as failure (not JSON), then the request is destroyed: the rest of its body is never
 * read, and whoever still reads it gets an error instead of waiting forever (a request whose reply is finished
 * never emits 'close' on its own).
 */
export function answerTimeout(req: IncomingMessage, res: ServerResponse, reason: TimeoutReason): void {
  const end = (): void => {
    req.destroy();
    res.socket?.destroy();
  };
  if (!res.headersSent && !res.writableEnded) {
    const body = `refused: REQUEST_TIMEOUT: ${timeoutMessage(reason)}\n`;
    res.statusCode = 408;
    res.setHeader("Content-Type", "text/plain; charset=utf-8");
    res.setHeader("Content-Length", Buffer.byteLength(body));
    res.setHeader("Connection", "close");
    res.end(body, end);
    // A client that does not read its reply must not keep the socket either.
    setTimeout(end, 2000).unref();
    return;
  }
  end();
}
