import type { Server } from "node:net";
import type { Socket } from "node:net";
import type { Logger } from "../logger.js";

/**
 * Bounds a listener's TCP connections, in all and per client address, counted from accept (before any TLS
 * handshake: 20,000 idle connections that never said hello once took every descriptor). A connection over a
 * bound is closed at once; the addresses of trusted proxies (NGINX, which carries many clients) only count
 * towards the total. Also keeps every accepted socket, so shutdown can end those HTTP does not know about
 * (connections still in, or stuck before, their TLS handshake).
 */
export class ConnectionGuard {
  private readonly sockets = new Set<Socket>();
  private readonly used = new WeakSet<Socket>();
  private readonly perAddress = new Map<string, number>();
  private refusedSinceLog = 0;
  private lastLog = 0;

  constructor(
    private readonly options: {
      maxConnections: number;
      maxPerAddress: number;
      isTrustedProxy: (address: string | undefined) => boolean;
      logger: Logger;
      listener: string;
    },
  ) {}

  attach(server: Server): void {
    // 'connection' fires for the raw TCP socket, before a TLS server starts the handshake.
    server.prependListener("connection", (socket: Socket) => this.admit(socket));
  }

  private admit(socket: Socket): void {
    const address = socket.remoteAddress ?? "unknown";
    const count = this.perAddress.get(address) ?? 0;
    const overTotal = this.sockets.size >= this.options.maxConnections;
    const overAddress = count >= this.options.maxPerAddress && !this.options.isTrustedProxy(socket.remoteAddress);
    if (overTotal || overAddress) {
      socket.destroy();
      this.noteRefusal(overTotal ? "total" : "per-address", address);
      return;
    }
    this.sockets.add(socket);
    this.perAddress.set(address, count + 1);
    socket.once("close", () => {
      this.sockets.delete(socket);
      const left = (this.perAddress.get(address) ?? 1) - 1;
      if (left <= 0) this.perAddress.delete(address);
      else this.perAddress.set(address, left);
    });
  }

  /** At most one warning a second, with the count refused meanwhile: a flood must not flood the log. */
  private noteRefusal(bound: "total" | "per-address", address: string): void {
    this.refusedSinceLog++;
    const now = Date.now();
    if (now - this.lastLog < 1000) return;
    this.options.logger.warn(
      { listener: this.options.listener, bound, address, refused: this.refusedSinceLog, open: this.sockets.size },
      "connection refused: connection limit reached",
    );
    this.refusedSinceLog = 0;
    this.lastLog = now;
  }

  get open(): number {
    return this.sockets.size;
  }

  /** Ends every connection still open (the grace period is over, or it never carried a request). */
  destroyAll(): void {
    for (const s of this.sockets) s.destroy();
  }

  /**
   * Ends connections that never got as far as an HTTP request (idle before or inside the TLS handshake):
   * `closeIdleConnections` cannot see them, and one such socket kept the process alive past its grace period.
   */
  destroyNeverUsed(): void {
    for (const s of this.sockets) if (!this.used.has(s)) s.destroy();
  }

  /** Marks the raw socket under a request (for HTTPS, the TLS socket's parent) as having carried one. */
  noteRequest(socket: Socket): void {
    const raw = (socket as Socket & { _parent?: Socket })._parent ?? socket;
    this.used.add(raw);
  }
}
