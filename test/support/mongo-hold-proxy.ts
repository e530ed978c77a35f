import net from "node:net";
import { BSON } from "mongodb";

/** One message a client sent through the proxy: its command name and the collection it names, if any. */
export interface SeenCommand {
  name: string;
  collection: string | null;
  at: number;
  /** sent while the proxy was holding (queued, not yet forwarded when it was seen) */
  held: boolean;
}

export interface MongoHoldProxy {
  /** mongodb://127.0.0.1:<port>/ plus the upstream URI's query */
  uri: string;
  commands: SeenCommand[];
  /**
   * From the first message matching `when` on, nothing any client sends is forwarded (replies to what went
   * before still come back): whoever waits for that message's reply waits until release(). Resolves when it holds.
   */
  holdAt(when: (c: SeenCommand) => boolean): Promise<SeenCommand>;
  release(): void;
  /** At the first message matching `when`, drop every connection (that message is never forwarded) and refuse new ones. */
  cutAt(when: (c: SeenCommand) => boolean): Promise<SeenCommand>;
  close(): Promise<void>;
}

const OP_MSG = 2013;

function commandOf(msg: Buffer): { name: string; collection: string | null } {
  if (msg.length < 21 || msg.readInt32LE(12) !== OP_MSG) return { name: `opcode-${msg.length >= 16 ? msg.readInt32LE(12) : "?"}`, collection: null };
  for (let pos = 20; pos < msg.length; ) {
    const kind = msg[pos] as number;
    const size = msg.readInt32LE(pos + 1);
    if (kind === 0) {
      const doc = BSON.deserialize(msg.subarray(pos + 1, pos + 1 + size));
      const name = Object.keys(doc)[0] ?? "";
      const target = doc[name] as unknown;
      return { name, collection: typeof target === "string" ? target : null };
    }
    pos += 1 + size;
  }
  return { name: "no-body", collection: null };
}

/**
 * A TCP proxy in front of the MongoDB-wire server that reads the commands clients send and can stop forwarding
 * them at a chosen one: a storage that stalls exactly where a test wants it to, for as long as it wants, or
 * that goes away there.
 */
export async function startMongoHoldProxy(upstreamUri: string): Promise<MongoHoldProxy> {
  const upstream = new URL(upstreamUri);
  const commands: SeenCommand[] = [];
  const sockets = new Set<net.Socket>();
  let holding = false;
  let trigger: { when: (c: SeenCommand) => boolean; resolve: (c: SeenCommand) => void; cut: boolean } | null = null;
  let cut = false;
  const queued: Array<() => void> = [];

  const server = net.createServer((client) => {
    if (cut) {
      client.destroy();
      return;
    }
    const up = net.connect(Number(upstream.port), upstream.hostname);
    sockets.add(client);
    sockets.add(up);
    const drop = (): void => {
      client.destroy();
      up.destroy();
      sockets.delete(client);
      sockets.delete(up);
    };
    client.on("error", drop).on("close", drop);
    up.on("error", drop).on("close", drop);
    up.pipe(client);
    let pending: Buffer = Buffer.alloc(0);
    client.on("data", (chunk: Buffer) => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      while (pending.length >= 4 && pending.length >= pending.readInt32LE(0)) {
        const length = pending.readInt32LE(0);
        const msg = Buffer.from(pending.subarray(0, length));
        pending = pending.subarray(length);
        const seen: SeenCommand = { ...commandOf(msg), at: Date.now(), held: holding };
        commands.push(seen);
        if (!holding && trigger?.when(seen)) {
          const { resolve, cut: cutHere } = trigger;
          trigger = null;
          if (cutHere) {
            cut = true;
            for (const s of sockets) s.destroy();
            resolve(seen);
            return;
          }
          holding = true;
          seen.held = true;
          resolve(seen);
        }
        if (holding) queued.push(() => up.write(msg));
        else up.write(msg);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    uri: `mongodb://127.0.0.1:${port}/${upstream.search}`,
    commands,
    holdAt: (when) => new Promise((resolve) => (trigger = { when, resolve, cut: false })),
    cutAt: (when) => new Promise((resolve) => (trigger = { when, resolve, cut: true })),
    release: () => {
      holding = false;
      for (const send of queued.splice(0)) send();
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
