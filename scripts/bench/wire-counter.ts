/**
 * Counts the service's MongoDB round trips: a TCP relay between the GridFS service child and the
 * MongoDB-wire server that reads the header of every client message (MongoDB wire protocol: int32 length,
 * requestID, responseTo, opCode, little-endian) and, for OP_MSG, the command name (the first key of the
 * section-0 document). Each client message is one request/reply exchange, i.e. one database round trip;
 * the per-block figure of the benchmark is (messages during the run - monitoring) / blocks. Nothing in the
 * service is changed or instrumented for it.
 */
import net from "node:net";

const OP_MSG = 2013;
/** Monitoring and handshakes, not caused by carve traffic. */
export const MONITORING_COMMANDS = new Set([
  "hello",
  "ismaster",
  "isMaster",
  "ping",
  "buildInfo",
  "endSessions",
  // OP_QUERY: only the legacy handshake of a new connection.
  "opCode 2004",
]);

export interface WireCounts {
  messages: number;
  byCommand: Record<string, number>;
}

export interface WireCounter {
  /** host:port the service connects to instead of the database. */
  port: number;
  snapshot(): WireCounts;
  close(): Promise<void>;
}

/** Reads command names out of one connection's client byte stream. */
class ClientStream {
  /** Bytes of the current message still to skip, once its header is read. */
  private skip = 0;
  private head: Buffer = Buffer.alloc(0);

  constructor(private readonly count: (name: string) => void) {}

  feed(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - at);
        this.skip -= n;
        at += n;
        continue;
      }
      // Collect enough of the message start to read its length, opCode and (OP_MSG) command name.
      const want = 64 - this.head.length;
      const take = chunk.subarray(at, at + want);
      this.head = this.head.length === 0 ? Buffer.from(take) : Buffer.concat([this.head, take]);
      at += take.length;
      if (this.head.length < 16) continue;
      const length = this.head.readInt32LE(0);
      if (this.head.length < Math.min(64, length)) continue;
      this.count(commandName(this.head));
      this.skip = length - this.head.length;
      if (this.skip < 0) {
        // The 64 bytes read cover this message and the start of the next: go back to it.
        at += this.skip;
        this.skip = 0;
      }
      this.head = Buffer.alloc(0);
    }
  }
}

function commandName(head: Buffer): string {
  const opCode = head.readInt32LE(12);
  if (opCode !== OP_MSG) return `opCode ${opCode}`;
  // header 16, flagBits 4, section kind 1 (0 = body), document length 4, element type 1, then the name.
  if (head.length < 27 || head[20] !== 0) return "OP_MSG";
  const end = head.indexOf(0, 26);
  return end < 0 ? "OP_MSG" : head.toString("latin1", 26, end);
}

export async function startWireCounter(upstreamHost: string, upstreamPort: number): Promise<WireCounter> {
  const counts: WireCounts = { messages: 0, byCommand: {} };
  const count = (name: string): void => {
    counts.messages++;
    counts.byCommand[name] = (counts.byCommand[name] ?? 0) + 1;
  };
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect({ host: upstreamHost, port: upstreamPort, noDelay: true });
    client.setNoDelay(true);
    sockets.add(client);
    sockets.add(upstream);
    const stream = new ClientStream(count);
    client.on("data", (chunk: Buffer) => stream.feed(chunk));
    client.pipe(upstream);
    upstream.pipe(client);
    const end = (): void => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("error", end);
    upstream.on("error", end);
    client.on("close", end);
    upstream.on("close", end);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    snapshot: () => ({ messages: counts.messages, byCommand: { ...counts.byCommand } }),
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Messages and commands between two snapshots, monitoring excluded from `carveMessages`. */
export function wireDelta(
  before: WireCounts,
  after: WireCounts,
): { carveMessages: number; byCommand: Record<string, number> } {
  const byCommand: Record<string, number> = {};
  let carveMessages = 0;
  for (const [name, n] of Object.entries(after.byCommand)) {
    const d = n - (before.byCommand[name] ?? 0);
    if (d <= 0) continue;
    byCommand[name] = d;
    if (!MONITORING_COMMANDS.has(name)) carveMessages += d;
  }
  return { carveMessages, byCommand };
}
