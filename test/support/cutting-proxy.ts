import net from "node:net";

/**
 * A TCP proxy in front of a service that breaks replies the way networks do: `cut(n)` closes a connection
 * once n bytes of reply went through it, `stall(n)` stops forwarding there (the client waits, as behind a
 * dead link). Applies to connections opened after the call; `pass()` restores plain forwarding.
 */
export interface CuttingProxy {
  url: string;
  cut(afterBytes: number): void;
  stall(afterBytes: number): void;
  pass(): void;
  close(): Promise<void>;
}

export async function startCuttingProxy(upstreamPort: number): Promise<CuttingProxy> {
  let mode: { kind: "pass" } | { kind: "cut" | "stall"; after: number } = { kind: "pass" };
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const rule = mode;
    const upstream = net.connect(upstreamPort, "127.0.0.1");
    sockets.add(client).add(upstream);
    client.on("close", () => sockets.delete(client));
    upstream.on("close", () => sockets.delete(upstream));
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
    client.pipe(upstream);
    let sent = 0;
    upstream.on("data", (chunk: Buffer) => {
      if (rule.kind === "pass") {
        client.write(chunk);
        return;
      }
      const room = rule.after - sent;
      if (room <= 0) return;
      client.write(chunk.subarray(0, room));
      sent += Math.min(room, chunk.length);
      if (sent >= rule.after) {
        if (rule.kind === "cut") {
          client.end();
          upstream.destroy();
        } else upstream.pause();
      }
    });
    upstream.on("end", () => client.end());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    cut: (after) => (mode = { kind: "cut", after }),
    stall: (after) => (mode = { kind: "stall", after }),
    pass: () => (mode = { kind: "pass" }),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
