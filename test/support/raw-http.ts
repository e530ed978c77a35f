/**
 * HTTP requests with full control over what goes on the wire (bytes, headers, chunked or not), one fresh
 * connection each, for tests that send what no well-behaved client would.
 */
import http from "node:http";

export interface RawReply {
  status: number;
  text: string;
  headers: http.IncomingHttpHeaders;
}

export interface RawPostOptions {
  /** Headers as given (names lower-case); Content-Length is added unless `chunked`. */
  headers?: Record<string, string>;
  /** Send the body with Transfer-Encoding: chunked instead of a Content-Length. */
  chunked?: boolean;
  timeoutMs?: number;
}

/** POSTs `body` to `baseUrl` + `path` on a new connection and collects the whole reply. */
export function rawPost(baseUrl: string, path: string, body: Buffer, options: RawPostOptions = {}): Promise<RawReply> {
  const url = new URL(baseUrl);
  const headers: Record<string, string> = { ...(options.headers ?? {}) };
  if (!options.chunked) headers["content-length"] = String(body.length);
  return new Promise((resolve, reject) => {
    let settled = false;
    const req = http.request(
      { host: url.hostname, port: Number(url.port), path, method: "POST", headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", (e) => {
          if (!settled) reject(e);
          settled = true;
        });
        res.on("end", () => {
          settled = true;
          resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8"), headers: res.headers });
        });
      },
    );
    // An error after the reply arrived (the server closed while we were still writing) changes nothing.
    req.on("error", (e) => {
      if (!settled) reject(e);
      settled = true;
    });
    req.setTimeout(options.timeoutMs ?? 20_000, () => req.destroy(new Error("rawPost timed out")));
    if (options.chunked && body.length > 0) req.write(body);
    req.end(options.chunked ? undefined : body);
  });
}

export async function getJson(baseUrl: string, path: string): Promise<{ status: number; json: unknown }> {
  const res = await fetch(baseUrl + path);
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json };
}

/** True when osquery would count this reply body as success: empty or valid JSON. */
export function agentCountsAsSuccess(text: string): boolean {
  if (text === "") return true;
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}
