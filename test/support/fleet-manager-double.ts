/**
 * A stand-in for a TLS fleet manager (Fleet, osctrl, ...) behind the NGINX front: an HTTPS server that speaks
 * HTTP/1.1 and HTTP/2 (ALPN), records every request it receives (method, path, headers, body, protocol) and answers
 * the way a manager answers osquery: JSON for the osquery TLS API, and a gRPC reply (status 0, trailers) for
 * launcher-style gRPC calls. It checks nothing: the tests assert on what it recorded.
 */
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import type { TLSSocket } from "node:tls";
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from "node:http";

export interface RecordedRequest {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** "1.1" or "2.0" */
  httpVersion: string;
  grpc: boolean;
}

export interface FleetManagerDouble {
  /** host:port, for an NGINX upstream */
  address: string;
  port: number;
  requests: RecordedRequest[];
  close(): Promise<void>;
}

/** What a manager answers to the osquery TLS endpoints (enough for an agent to be content). */
function replyFor(path: string): unknown {
  if (path.endsWith("/enroll")) return { node_key: "double-node-key", node_invalid: false };
  if (path.endsWith("/config")) return { schedule: {}, node_invalid: false };
  if (path.endsWith("/distributed/read")) return { queries: {}, node_invalid: false };
  return { node_invalid: false };
}

/** A gRPC message frame: not compressed, 4-byte big-endian length, payload. */
export function grpcFrame(payload: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.writeUInt8(0, 0);
  header.writeUInt32BE(payload.length, 1);
  return Buffer.concat([header, payload]);
}

export async function startFleetManagerDouble(tls: {
  cert: string | Buffer;
  key: string | Buffer;
}): Promise<FleetManagerDouble> {
  const requests: RecordedRequest[] = [];
  const onRequest = (
    req: IncomingMessage | http2.Http2ServerRequest,
    res: ServerResponse | http2.Http2ServerResponse,
  ): void => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const contentType = req.headers["content-type"] ?? "";
      const grpc = contentType.startsWith("application/grpc");
      const path = req.url ?? "";
      requests.push({
        method: req.method ?? "",
        path,
        headers: { ...req.headers },
        body: Buffer.concat(chunks),
        httpVersion: req.httpVersion,
        grpc,
      });
      if (grpc && res instanceof http2.Http2ServerResponse) {
        res.writeHead(200, { "content-type": "application/grpc" });
        res.addTrailers({ "grpc-status": "0", "grpc-message": "" });
        res.end(grpcFrame(Buffer.alloc(0)));
        return;
      }
      const body = JSON.stringify(replyFor(path));
      res.writeHead(200, { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)) });
      res.end(body);
    });
  };
  const server = http2.createSecureServer({ cert: tls.cert, key: tls.key, allowHTTP1: true });
  server.on("request", onRequest);
  // NGINX keeps upstream connections alive: close() destroys them rather than wait for its idle timeout.
  const sockets = new Set<TLSSocket>();
  server.on("secureConnection", (socket: TLSSocket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  return {
    address: `127.0.0.1:${port}`,
    port,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      }),
  };
}
