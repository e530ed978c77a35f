import type { IncomingMessage } from "node:http";
import { AppError } from "../errors.js";
import type { BufferPool } from "../util/buffer-pool.js";
import type { BudgetHolder, ByteBudget } from "../util/byte-budget.js";
import type { BodyWatch } from "./body-watch.js";

export interface Body {
  /** The body's bytes. */
  bytes: Buffer;
  /** The pooled buffer `bytes` lives in, to give back once nothing uses it (absent: not pooled). */
  backing?: Buffer;
}

/** Bytes a body has taken from an in-flight budget; the caller gives them back with budget.release(charge). */
export interface BudgetCharge extends BudgetHolder {
  budget: ByteBudget;
}

export interface ReadBodyOptions {
  pool?: BufferPool | undefined;
  /** Charge each chunk to this budget as it arrives, pausing the request while the budget is full. */
  charge?: BudgetCharge | undefined;
  /** Tells the progress watch when the request is paused for the budget (not the client's fault). */
  watch?: BodyWatch | undefined;
}

/**
 * Reads a request body into one buffer (with a pool, a reused one). The bytes are charged to the budget as
 * they arrive, never by the declared Content-Length: a client announcing 11 MB and sending 1 byte a second
 * holds one byte. Refuses bodies over `limit` before reading them (by Content-Length) or as soon as they
 * exceed it, and compressed bodies (osquery never compresses).
 * @throws AppError BODY_TOO_LARGE, INVALID_BLOCK (unsupported encoding, body cut short)
 */
export async function readBody(req: IncomingMessage, limit: number, options: ReadBodyOptions = {}): Promise<Body> {
  const { pool, charge, watch } = options;
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
  const max = length ?? limit;
  if (max > limit) {
    req.resume(); // drain (bounded by the progress watch) so the reply can be read
    throw new AppError("BODY_TOO_LARGE");
  }
  const chunks: Buffer[] = [];
  let received = 0;
  await new Promise<void>((resolve, reject) => {
    let waiting = false;
    /** Bytes taken from the budget ahead of their arrival (after a wait): the next chunks use them first. */
    let credit = 0;
    let settled = false;
    const cleanup = (): void => {
      settled = true;
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
      req.off("close", onClose);
    };
    const fail = (err: unknown): void => {
      cleanup();
      reject(err instanceof AppError ? err : new AppError("INVALID_BLOCK", "request body was cut short", { cause: err }));
    };
    const onData = (chunk: Buffer): void => {
      if (received + chunk.length > max) {
        cleanup();
        req.resume(); // drain the rest (bounded by the progress watch) so the reply can be read
        reject(new AppError(received + chunk.length > limit ? "BODY_TOO_LARGE" : "INVALID_BLOCK", length === undefined ? undefined : "body longer than Content-Length"));
        return;
      }
      chunks.push(chunk);
      received += chunk.length;
      if (!charge) return;
      const owed = chunk.length - credit;
      if (owed <= 0) {
        credit -= chunk.length;
        return;
      }
      credit = 0;
      // Once it has waited, a body takes ahead what it declared still to send, up to 1/8 of the budget. Woken one
      // chunk at a time, bodies waiting on a full budget were paused and resumed once per chunk (64 KiB or less:
      // the reopened TCP window brings small ones), in lockstep: 1 MiB blocks from 50 agents cost twice the CPU
      // per MiB and half the throughput. A body that never waits holds only what it received.
      const ahead = length === undefined ? owed : owed + Math.min(length - received, charge.budget.capacity / 8);
      const wait = charge.budget.take(owed, charge, ahead);
      if (wait === null) {
        charge.held += owed;
        return;
      }
      // The budget is full: stop reading (TCP backpressure) until this chunk's bytes fit.
      req.pause();
      watch?.pause(req);
      waiting = true;
      void wait.then((granted) => {
        if (settled) {
          charge.budget.give(granted); // the read failed meanwhile: nobody will give these back
          return;
        }
        charge.held += granted;
        credit = granted - owed;
        waiting = false;
        watch?.resume(req);
        if (ended) {
          cleanup();
          resolve();
        } else req.resume();
      });
    };
    let ended = false;
    const onEnd = (): void => {
      ended = true;
      if (waiting) return;
      cleanup();
      resolve();
    };
    const onError = (err: Error): void => fail(err);
    // closed before 'end': the client went away mid-body (or the progress watch cut it off)
    const onClose = (): void => {
      if (!ended) fail(new Error("request closed before its body ended"));
    };
    if (req.readableEnded) {
      resolve();
      return;
    }
    // Cut off by the progress watch: the reader answers (REQUEST_TIMEOUT), then the connection is closed.
    watch?.onTimeout(req, (reason) => fail(new AppError("REQUEST_TIMEOUT", reason)));
    if (req.destroyed) {
      fail(new Error("request closed before its body was read"));
      return;
    }
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onError);
    req.on("close", onClose);
  });
  if (length !== undefined && received !== length) throw new AppError("INVALID_BLOCK", "request body shorter than Content-Length");
  if (!pool) return { bytes: chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, received) };
  // One copy into a reused buffer, as the body's chunks were copied into one before: the chunks are garbage now.
  const backing = pool.acquire(received);
  let at = 0;
  for (const c of chunks) at += c.copy(backing, at);
  return { bytes: backing.subarray(0, received), backing };
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
  if (tooDeeplyNested(raw, 0, at)) return null; // JSON.parse of the whole body refuses it
  let head: unknown;
  try {
    head = JSON.parse(`${raw.toString("utf8", 0, at)}}`);
  } catch {
    return null;
  }
  if (typeof head !== "object" || head === null || Array.isArray(head)) return null;
  // The data key comes last in the text, so it wins over any earlier duplicate, as in JSON.parse. Set on the
  // parsed object itself (a copy by spread cost a dictionary-mode object and megamorphic loads per block).
  (head as Record<string, unknown>).data = region;
  return head as Record<string, unknown>;
}

/** osquery's bodies are one flat object; nothing legitimate nests deeper than this. */
export const MAX_JSON_DEPTH = 32;

/**
 * Whether JSON text opens more than MAX_JSON_DEPTH arrays/objects at once, in one linear pass that skips
 * strings (a bracket inside a string is not nesting). JSON.parse of 8 MB of "[" costs seconds of CPU.
 */
export function tooDeeplyNested(raw: Buffer, from = 0, to = raw.length): boolean {
  let depth = 0;
  let inString = false;
  for (let i = from; i < to; i++) {
    const c = raw[i] as number;
    if (inString) {
      if (c === 0x5c /* \ */) i++;
      else if (c === 0x22) inString = false;
      continue;
    }
    if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > MAX_JSON_DEPTH) return true;
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return false;
}

/** Reads a small request body; the body holds a token, so it is never logged nor echoed. */
export async function readSmallBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new AppError("BODY_TOO_LARGE");
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}
