import http from "node:http";
import type { AddressInfo } from "node:net";

/** A minimal load balancer: each request goes to the next upstream in turn (what NGINX upstream does). */
export async function startRoundRobinProxy(upstreams: string[]): Promise<{ url: string; hits: number[]; close(): Promise<void> }> {
  let next = 0;
  const hits = upstreams.map(() => 0);
  const agent = new http.Agent({ keepAlive: true });
  const server = http.createServer((req, res) => {
    const i = next++ % upstreams.length;
    hits[i] = (hits[i] ?? 0) + 1;
    const target = new URL(req.url ?? "/", upstreams[i]);
    const upstream = http.request(
      target,
      { method: req.method, headers: { ...req.headers, host: target.host }, agent },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
      },
    );
    upstream.on("error", () => {
      if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain" });
      res.end("bad gateway\n");
    });
    req.pipe(upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    hits,
    close: async () => {
      agent.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
