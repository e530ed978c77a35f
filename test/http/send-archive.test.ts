/** sendRange (src/http/send-archive.ts) over a real listening server and client sockets. */
import { randomBytes } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { ClientGoneError, sendRange } from "../../src/http/send-archive.js";
import { CUT_SHORT, readToEnd } from "../support/raw-http.js";

type Reader = (buffer: Buffer, length: number, position: number) => Promise<number>;

const servers: http.Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
});

/** A server whose one route sends [start, end] of `source` through sendRange; resolves with its outcome. */
async function serve(source: Buffer, start: number, end: number, wrap: (r: Reader) => Reader = (r) => r) {
  let settle!: (v: { error?: unknown; sent: number }) => void;
  const outcome = new Promise<{ error?: unknown; sent: number }>((r) => (settle = r));
  const buffersUsed = new Set<Buffer>();
  let responded!: (res: http.ServerResponse) => void;
  const response = new Promise<http.ServerResponse>((r) => (responded = r));
  const read: Reader = (buffer, length, position) => {
    buffersUsed.add(buffer);
    return Promise.resolve(source.copy(buffer, 0, position, Math.min(position + length, source.length)));
  };
  const server = http.createServer((_req, res) => {
    responded(res);
    let sent = 0;
    res.setHeader("Content-Length", String(end - start + 1));
    sendRange(res, wrap(read), start, end, (n) => (sent += n)).then(
      () => settle({ sent }),
      (error: unknown) => settle({ error, sent }),
    );
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  return { url, outcome, buffersUsed, response };
}

describe("sendRange", () => {
  it("sends the range byte-exact through a few reused buffers", async () => {
    const source = randomBytes(10 * 1024 * 1024 + 3);
    const { url, outcome, buffersUsed } = await serve(source, 5, source.length - 2);
    const body = Buffer.from(await (await fetch(url)).arrayBuffer());
    expect(body.equals(source.subarray(5, source.length - 1))).toBe(true);
    expect(await outcome).toEqual({ sent: source.length - 6 });
    expect(buffersUsed.size).toBeGreaterThan(0);
    expect(buffersUsed.size).toBeLessThanOrEqual(4);
  });

  it("stops reading when the client stops reading, and reports the client gone when it hangs up", async () => {
    const source = randomBytes(64 * 1024 * 1024);
    let reads = 0;
    let inFlight = 0;
    const { url, outcome, response } = await serve(source, 0, source.length - 1, (r) => async (b, l, p) => {
      reads++;
      inFlight++;
      try {
        return await r(b, l, p);
      } finally {
        inFlight--;
      }
    });
    let req!: http.ClientRequest;
    await new Promise<void>((resolve) => {
      req = http.get(url, (res) => {
        res.pause(); // reads nothing
        resolve();
      });
    });
    // Wait (generous deadline) for the stall: the response cannot hand more to the socket (its buffer is over
    // the high-water mark because the client's side is full) and no read is under way; or for more to be read
    // than the bound below allows, which without backpressure comes first.
    const res = await response;
    const bound = source.length / 4;
    const deadline = Date.now() + 30_000;
    while (!(res.writableNeedDrain && inFlight === 0) && reads * 256 * 1024 < bound) {
      if (Date.now() > deadline) throw new Error(`no stall within 30 s (${reads} reads)`);
      await new Promise((r) => setTimeout(r, 20));
    }
    // Backpressure: while the client reads nothing, no more is read than the socket buffers hold.
    expect(reads * 256 * 1024).toBeLessThan(bound);
    req.destroy();
    const { error, sent } = await outcome;
    expect(error).toBeInstanceOf(ClientGoneError);
    expect(sent).toBeLessThan(bound);
  });

  it("cuts the connection when a read fails after the headers went out, and rethrows the read's error", async () => {
    const source = randomBytes(4 * 1024 * 1024);
    const failure = new Error("disk read failed");
    const { url, outcome } = await serve(source, 0, source.length - 1, (r) => (b, l, p) => (p >= 1024 * 1024 ? Promise.reject(failure) : r(b, l, p)));
    const res = await fetch(url);
    expect(res.status).toBe(200);
    // the client sees the body cut short of its Content-Length, not a short body that looks whole
    const got = await readToEnd(res);
    expect(got.cut).toBe(CUT_SHORT);
    expect(got.bytes).toBeLessThanOrEqual(1024 * 1024);
    const { error, sent } = await outcome;
    expect(error).toBe(failure);
    expect(sent).toBe(1024 * 1024);
  });

  it("refuses an archive shorter than the range instead of sending less than announced", async () => {
    const source = randomBytes(100_000);
    const { url, outcome } = await serve(source, 0, 200_000 - 1);
    const res = await fetch(url);
    expect(res.headers.get("content-length")).toBe("200000");
    const got = await readToEnd(res);
    expect(got.cut, "the client is told the body was cut short").toBe(CUT_SHORT);
    expect(got.bytes).toBeLessThanOrEqual(100_000);
    const { error } = await outcome;
    expect(String(error)).toMatch(/archive ended at byte 100000/);
  });
});
