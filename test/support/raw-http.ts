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

/**
 * Reads a fetch Response's body to its end and says how it ended: `cut` is null when it arrived whole, else
 * what undici reports when the server closes the connection short of its Content-Length ("terminated", its
 * cause UND_ERR_SOCKET "other side closed"), so a test can tell that from any other failure.
 */
export async function readToEnd(res: Response): Promise<{ bytes: number; cut: string | null }> {
  let bytes = 0;
  const reader = (res.body as ReadableStream<Uint8Array> | null)?.getReader();
  if (!reader) return { bytes, cut: null };
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return { bytes, cut: null };
      bytes += value.byteLength;
    }
  } catch (err) {
    const e = err as Error & { cause?: { code?: string; message?: string } };
    return { bytes, cut: `${e.name}: ${e.message} (${e.cause?.code ?? "no code"}: ${e.cause?.message ?? "no cause"})` };
  }
}

/** What readToEnd says of a body the server cut short by closing the connection. */
export const CUT_SHORT = "TypeError: terminated (UND_ERR_SOCKET: other side closed)";
