import http from "node:http";
import https from "node:https";
import { Readable } from "node:stream";
import type { FetchLike } from "../../client/api-client.js";

export interface TlsFiles {
  /** PEM CA bundle the server's certificate must chain to (instead of the system's). */
  ca?: Buffer;
  /** PEM client certificate and key, for a front that asks for one (mutual TLS). */
  cert?: Buffer;
  key?: Buffer;
}

const NO_BODY = new Set([204, 205, 304]);

/**
 * A fetch over node:http/https, for what the global fetch cannot take without another dependency: a private
 * CA and a client certificate. Streams both ways; the reply body is a web stream like fetch's.
 */
export function nodeFetch(tls: TlsFiles): FetchLike {
  const agent = new https.Agent({ keepAlive: true, ...tls });
  const plainAgent = new http.Agent({ keepAlive: true });
  return (url, init) =>
    new Promise<Response>((resolve, reject) => {
      const target = new URL(url);
      const secure = target.protocol === "https:";
      const headers = new Headers(init.headers);
      const body = typeof init.body === "string" ? Buffer.from(init.body) : undefined;
      if (body) headers.set("content-length", String(body.length));
      const req = (secure ? https : http).request(target, {
        method: init.method ?? "GET",
        headers: Object.fromEntries(headers.entries()),
        agent: secure ? agent : plainAgent,
        ...(init.signal ? { signal: init.signal } : {}),
      });
      req.on("error", (err: Error & { reason?: unknown }) => {
        if (err.name === "AbortError") return reject(err);
        // OpenSSL's message is a dump ("80...:error:0A00045C:SSL routines:..."); its reason is the readable part.
        const cause = typeof err.reason === "string" ? new Error(`TLS: ${err.reason}`, { cause: err }) : err;
        reject(new TypeError("fetch failed", { cause }));
      });
      req.on("response", (res) => {
        const replyHeaders = new Headers();
        for (const [name, value] of Object.entries(res.headers)) {
          if (value === undefined) continue;
          for (const v of Array.isArray(value) ? value : [value]) replyHeaders.append(name, v);
        }
        const status = res.statusCode ?? 0;
        const empty = NO_BODY.has(status) || init.method === "HEAD";
        if (empty) res.resume();
        const stream = empty ? null : (Readable.toWeb(res) as ReadableStream<Uint8Array>);
        resolve(new Response(stream, { status, statusText: res.statusMessage ?? "", headers: replyHeaders }));
      });
      req.end(body);
    });
}
