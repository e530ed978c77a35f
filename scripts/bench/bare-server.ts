/**
 * The benchmark's reference: a bare Node HTTP server that reads and discards every request body and answers
 * the agent protocol's success replies. Whatever the carve service adds (parsing, validation, base64 decoding,
 * storage, logging) is the difference between it and this server under the same driver.
 *
 *   node dist/scripts/bench/bare-server.js PORT [HOST]      (or BENCH_PORT / BENCH_HOST)
 *
 * Replies: GET anything -> {"success":true}; POST whose body contains "block_count" (a carve start; the key
 * is looked for in the first 4 KiB only, start bodies are ~200 bytes) -> {"session_id":"bench"}; any other
 * POST -> {"success":true}.
 *
 * Download reference (the download benchmark): with BENCH_DOWNLOAD_FILE set, GET /download streams that file
 * (fs.createReadStream piped to the response with Content-Length, BENCH_DOWNLOAD_CHUNK bytes per read,
 * default 256 KiB like the service's filesystem store) and nothing else: no authorization, no audit, no
 * framework. What the service's download adds is the difference.
 */
import { createReadStream, statSync } from "node:fs";
import http from "node:http";
import { pipeline } from "node:stream/promises";

const START_REPLY = Buffer.from('{"session_id":"bench"}');
const OK_REPLY = Buffer.from('{"success":true}');
const START_KEY = '"block_count"';
const PREFIX_LIMIT = 4096;

function reply(res: http.ServerResponse, body: Buffer): void {
  res.writeHead(200, { "Content-Type": "application/json", "Content-Length": String(body.length) });
  res.end(body);
}

function sendFile(res: http.ServerResponse, file: string, chunk: number): void {
  let size: number;
  try {
    size = statSync(file).size;
  } catch {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { "Content-Type": "application/x-tar", "Content-Length": String(size) });
  pipeline(createReadStream(file, { highWaterMark: chunk }), res).catch(() => res.destroy());
}

function createBareServer(download?: { file: string; chunk: number }): http.Server {
  const server = http.createServer((req, res) => {
    if (download && req.method === "GET" && req.url === "/download") {
      sendFile(res, download.file, download.chunk);
      return;
    }
    if (req.method !== "POST") {
      req.resume();
      reply(res, OK_REPLY);
      return;
    }
    let prefix = "";
    req.on("data", (chunk: Buffer) => {
      if (prefix.length < PREFIX_LIMIT) prefix += chunk.toString("latin1", 0, Math.min(chunk.length, PREFIX_LIMIT));
    });
    req.on("end", () => reply(res, prefix.includes(START_KEY) ? START_REPLY : OK_REPLY));
    req.on("error", () => res.destroy());
  });
  // Same connection timeouts as the service (src/server.ts), so both keep the driver's connections alike.
  server.requestTimeout = 60_000;
  server.headersTimeout = 30_000;
  server.keepAliveTimeout = 65_000;
  return server;
}

function main(): void {
  const port = Number(process.argv[2] ?? process.env.BENCH_PORT ?? "0");
  const host = process.argv[3] ?? process.env.BENCH_HOST ?? "127.0.0.1";
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    process.stderr.write(`bare-server: bad port ${String(port)}\n`);
    process.exit(2);
  }
  const file = process.env.BENCH_DOWNLOAD_FILE;
  const chunk = Number(process.env.BENCH_DOWNLOAD_CHUNK ?? 256 * 1024);
  if (!Number.isInteger(chunk) || chunk < 1) {
    process.stderr.write(`bare-server: bad BENCH_DOWNLOAD_CHUNK ${String(process.env.BENCH_DOWNLOAD_CHUNK)}\n`);
    process.exit(2);
  }
  const server = createBareServer(file ? { file, chunk } : undefined);
  server.listen(port, host, () => {
    const addr = server.address();
    process.stderr.write(`bare-server: listening ${JSON.stringify(addr)}\n`);
  });
  const stop = (): void => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main();
