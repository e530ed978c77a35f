import http from "node:http";
import type { AddressInfo } from "node:net";

/**
 * An HTTP proxy in front of the service that holds back agent block uploads until the test lets them through:
 * `open(n)` passes n more blocks, `openAll()` every one from then on. Everything else goes straight through.
 * A test watches a carve's progress advance step by step without timing anything.
 */
export interface GatedProxy {
  url: string;
  /** Block requests forwarded so far (retries included). */
  readonly forwarded: number;
  open(blocks: number): void;
  openAll(): void;
  close(): Promise<void>;
}

export async function startGatedProxy(upstream: string, continuePath = "/upload_blocks"): Promise<GatedProxy> {
  let permits = 0;
  let all = false;
  let forwarded = 0;
  const waiting: Array<() => void> = [];
  const release = (): void => {
    while (waiting.length > 0 && (all || permits > 0)) {
      if (!all) permits--;
      (waiting.shift() as () => void)();
    }
  };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const pass = (): void => {
        const body = Buffer.concat(chunks);
        if (req.url === continuePath) forwarded++;
        const headers = { ...req.headers, "content-length": String(body.length) };
        delete headers.connection;
        const up = http.request(`${upstream}${req.url ?? "/"}`, { method: req.method, headers }, (upRes) => {
          res.writeHead(upRes.statusCode ?? 502, upRes.headers);
          upRes.pipe(res);
        });
        up.on("error", () => res.destroy());
        up.end(body);
      };
      if (req.method === "POST" && req.url === continuePath) {
        waiting.push(pass);
        release();
      } else pass();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    get forwarded() {
      return forwarded;
    },
    open(blocks) {
      permits += blocks;
      release();
    },
    openAll() {
      all = true;
      release();
    },
    close: async () => {
      all = true;
      release();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
