import type { IncomingMessage } from "node:http";
import { AppError } from "../errors.js";
import type { BufferPool } from "../util/buffer-pool.js";

export interface Body {
  /** The body's bytes. */
  bytes: Buffer;
  /** The pooled buffer `bytes` lives in, to give back once nothing uses it (absent: not pooled). */
  backing?: Buffer;
}

/**
 * Reads a request body into one buffer, sized from Content-Length when the client sent it (osquery always
 * does), so the body is copied once; with a pool, that buffer is a reused one. Refuses bodies over `limit` before reading them (by Content-Length)
 * or as soon as they exceed it, and compressed bodies (osquery never compresses).
 * @throws AppError BODY_TOO_LARGE, INVALID_BLOCK (unsupported encoding, body cut short)
 */
export async function readBody(req: IncomingMessage, limit: number, pool?: BufferPool): Promise<Body> {
  const encoding = req.headers["content-encoding"];
  if (encoding !== undefined && encoding.toLowerCase() !== "identity") {
    req.resume();
    throw new AppError("INVALID_BLOCK", "compressed bodies are not accepted (osquery sends plain JSON)");
  }
  const declared = req.headers["content-length"];
  const length = declared === undefined ? undefined : Number(declared);
  if (length !== undefined && (!Number.isSafeInteger(length) || length < 0)) {
    throw new AppError("INVALID_BLOCK", "invalid Content-Length");
  }
  if (length !== undefined && length > limit) {
    req.resume(); // drain (bounded by the server's request timeout) so the reply can be read
    throw new AppError("BODY_TOO_LARGE");
  }
  const chunks: Buffer[] = [];
  const backing = length !== undefined && pool ? pool.acquire(length) : undefined;
  const fixed = length === undefined ? null : backing ? backing.subarray(0, length) : Buffer.allocUnsafe(length);
  let received = 0;
  try {
    // Plain listeners rather than `for await`: the async iterator's promises and bookkeeping were ~3% of
    // the 8 KiB block path.
    await new Promise<void>((resolve, reject) => {
      const cleanup = (): void => {
        req.off("data", onData);
        req.off("end", onEnd);
        req.off("error", onError);
        req.off("close", onClose);
      };
      const onData = (chunk: Buffer): void => {
        if (received + chunk.length > (fixed ? fixed.length : limit)) {
          cleanup();
          req.resume(); // drain the rest (bounded by the server's request timeout) so the reply can be read
          reject(new AppError("BODY_TOO_LARGE"));
          return;
        }
        if (fixed) chunk.copy(fixed, received);
        else chunks.push(chunk);
        received += chunk.length;
      };
      const onEnd = (): void => {
        cleanup();
        resolve();
      };
      const onError = (err: Error): void => {
        cleanup();
        reject(err);
      };
      const onClose = (): void => {
        // closed before 'end': the client went away mid-body
        cleanup();
        reject(new Error("request closed before its body ended"));
      };
      // Already over before we listen (the request waited for the in-flight budget meanwhile).
      if (req.readableEnded) {
        resolve();
        return;
      }
      if (req.destroyed) {
        reject(new Error("request closed before its body was read"));
        return;
      }
      req.on("data", onData);
      req.on("end", onEnd);
      req.on("error", onError);
      req.on("close", onClose);
    });
  } catch (err) {
    if (backing) pool?.release(backing); // nothing kept a reference: the body was only being copied in
    if (err instanceof AppError) throw err;
    throw new AppError("INVALID_BLOCK", "request body was cut short", { cause: err });
  }
  if (fixed) {
    if (received !== fixed.length) {
      if (backing) pool?.release(backing);
      throw new AppError("INVALID_BLOCK", "request body shorter than Content-Length");
    }
    return backing ? { bytes: fixed, backing } : { bytes: fixed };
  }
  return { bytes: Buffer.concat(chunks, received) };
}

const DATA_MARKER = Buffer.from(',"data":"');

/**
 * osquery's block body, `{"block_id":N,"session_id":"..","request_id":"..","data":"<base64>"}`, without
 * running JSON.parse over the megabytes of base64: the small head is parsed as JSON, the data is returned as
 * a view of the body's bytes (no string is made; it is decoded in place later). Anything not in exactly that
 * shape returns null and goes through JSON.parse.
 */
export function fastBlockBody(raw: Buffer): Record<string, unknown> | null {
  if (raw.length < 64 || raw[0] !== 0x7b /* { */) return null;
  const at = raw.lastIndexOf(DATA_MARKER);
  if (at < 0 || raw[raw.length - 1] !== 0x7d /* } */ || raw[raw.length - 2] !== 0x22 /* " */) return null;
  const dataStart = at + DATA_MARKER.length;
  const dataEnd = raw.length - 2;
  // base64 never contains a quote or a backslash; if the region does, it is not a plain string value.
  const region = raw.subarray(dataStart, dataEnd);
  if (region.includes(0x22) || region.includes(0x5c)) return null;
  let head: unknown;
  try {
    head = JSON.parse(`${raw.toString("utf8", 0, at)}}`);
  } catch {
    return null;
  }
  if (typeof head !== "object" || head === null || Array.isArray(head)) return null;
  // The data key comes last in the text, so it wins over any earlier duplicate, as in JSON.parse.
  return { ...(head as Record<string, unknown>), data: region };
}
