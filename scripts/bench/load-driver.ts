/**
 * The upload load: N simulated osquery agents, each a sequential sender on its own keep-alive TCP connection
 * (one start request, then its blocks in order, one request in flight), all at once, as a fleet of osquery
 * agents does. Built to cost the driver as little CPU as possible so that the server, not the driver, is what
 * saturates: every block's base64 data is encoded once before the timed run and shared by all agents (they
 * upload the same source file under their own carve ids), a request is a few hundred bytes of head and JSON
 * prefix written with the shared data buffer in one writev (no JSON.stringify, no base64, no copy of the data
 * at send time), and replies go through a minimal HTTP/1.1 response parser instead of http.Agent.
 *
 * It runs as its own process (forked by scripts/bench/upload-case.ts) so that its CPU is its own and the
 * benchmark's other work (RSS sampling, the GridFS wire counter) is not counted in it: it prepares, sends
 * {type:"ready"}, waits for {type:"go"} (the parent reads the server's CPU time in between), runs, and sends
 * {type:"result"} with DriveResult.
 */
import { randomUUID } from "node:crypto";
import { readFile } from "node:fs/promises";
import net from "node:net";
import { performance } from "node:perf_hooks";

export interface DriveSpec {
  host: string;
  port: number;
  archivePath: string;
  blockSize: number;
  agents: number;
  /**
   * Before the measured run, every agent uploads one carve of this many of the file's first blocks (not
   * measured, not verified): a fresh process compiles its hot code during its first thousands of requests, on
   * V8's (or Go's) helper threads, and a server runs for days.
   */
  warmupBlocks: number;
}

export interface LatencySummary {
  count: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

export interface DrivenCarve {
  carveId: string;
  ok: boolean;
  error?: string;
}

export interface DriveResult {
  /** From the first start request sent to the last block reply received. */
  wallMs: number;
  /** Block requests answered with success. */
  blocks: number;
  /** Decoded carve bytes of those blocks. */
  ackedBytes: number;
  /** Every HTTP exchange (starts and blocks). */
  requests: number;
  /** Exchanges answered without success (or lost with their connection). */
  failedExchanges: number;
  blockLatencyMs: LatencySummary;
  /** CPU the driver process used (user + system) during the timed run, ms. */
  driverCpuMs: number;
  carveBytes: number;
  carves: DrivenCarve[];
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1] as number;
}

export function summarize(values: ArrayLike<number>): LatencySummary {
  const sorted = Float64Array.from(values).sort();
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    count: sorted.length,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    max: sorted.length > 0 ? (sorted[sorted.length - 1] as number) : Number.NaN,
    mean: sorted.length > 0 ? sum / sorted.length : Number.NaN,
  };
}

const CRLF2 = Buffer.from("\r\n\r\n");

/**
 * One keep-alive connection and a minimal HTTP/1.1 client on it: one request at a time, replies with
 * Content-Length or chunked bodies (the three servers send Content-Length; chunked is there so a change of
 * server does not hang the driver).
 */
class Connection {
  private readonly socket: net.Socket;
  private buf: Buffer = Buffer.alloc(0);
  private pending: { resolve: (r: { status: number; body: string }) => void; reject: (e: Error) => void } | null = null;
  private closedError: Error | null = null;

  constructor(host: string, port: number) {
    this.socket = net.connect({ host, port, noDelay: true });
    this.socket.on("data", (chunk: Buffer) => {
      this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
      this.parse();
    });
    const fail = (err: Error): void => {
      this.closedError ??= err;
      const p = this.pending;
      this.pending = null;
      p?.reject(err);
    };
    this.socket.on("error", fail);
    this.socket.on("close", () => fail(new Error("connection closed by the server")));
  }

  ready(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.socket.once("connect", resolve);
      this.socket.once("error", reject);
    });
  }

  /** Writes the parts in one writev and resolves with the reply. */
  request(parts: Array<Buffer | string>): Promise<{ status: number; body: string }> {
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      this.socket.cork();
      for (const p of parts) this.socket.write(p);
      this.socket.uncork();
    });
  }

  private parse(): void {
    if (!this.pending) return;
    const end = this.buf.indexOf(CRLF2);
    if (end < 0) return;
    const head = this.buf.toString("latin1", 0, end);
    const status = Number(head.slice(9, 12));
    const cl = /\r\ncontent-length:\s*(\d+)/i.exec(head);
    let body: string;
    let rest: Buffer;
    if (cl?.[1] !== undefined) {
      const len = Number(cl[1]);
      if (this.buf.length < end + 4 + len) return;
      body = this.buf.toString("utf8", end + 4, end + 4 + len);
      rest = this.buf.subarray(end + 4 + len);
    } else if (/\r\ntransfer-encoding:\s*chunked/i.test(head)) {
      const parts: Buffer[] = [];
      let at = end + 4;
      for (;;) {
        const eol = this.buf.indexOf("\r\n", at);
        if (eol < 0) return;
        const size = Number.parseInt(this.buf.toString("latin1", at, eol), 16);
        if (this.buf.length < eol + 2 + size + 2) return;
        if (size === 0) {
          at = eol + 4;
          break;
        }
        parts.push(this.buf.subarray(eol + 2, eol + 2 + size));
        at = eol + 2 + size + 2;
      }
      body = Buffer.concat(parts).toString("utf8");
      rest = this.buf.subarray(at);
    } else {
      this.fail(new Error(`reply without Content-Length or chunked body: ${head.slice(0, 200)}`));
      return;
    }
    this.buf = rest.length > 0 ? Buffer.from(rest) : Buffer.alloc(0);
    const p = this.pending;
    this.pending = null;
    p.resolve({ status, body });
  }

  private fail(err: Error): void {
    this.closedError = err;
    this.socket.destroy(err);
  }

  close(): void {
    this.socket.destroy();
  }
}

function head(path: string, host: string, contentLength: number): string {
  // The headers osquery's TLS client sends (its User-Agent and JSON types), nothing more.
  return (
    `POST ${path} HTTP/1.1\r\nHost: ${host}\r\nUser-Agent: osquery/5.12.1\r\nAccept: application/json\r\n` +
    `Content-Type: application/json\r\nContent-Length: ${contentLength}\r\nConnection: keep-alive\r\n\r\n`
  );
}

/** The source file's blocks, base64 encoded once, as latin1 buffers ready to be written. */
export async function encodeBlocks(
  archivePath: string,
  blockSize: number,
): Promise<{ size: number; blocks: Buffer[] }> {
  const file = await readFile(archivePath);
  const blocks: Buffer[] = [];
  for (let at = 0; at < file.length; at += blockSize) {
    blocks.push(Buffer.from(file.subarray(at, Math.min(file.length, at + blockSize)).toString("base64"), "latin1"));
  }
  return { size: file.length, blocks };
}

async function runAgent(
  spec: DriveSpec,
  encoded: { size: number; blocks: Buffer[] },
  latencies: Float64Array,
  latencyBase: number,
  stats: { requests: number; failed: number; blocks: number; ackedBytes: number; firstSend: number; lastReply: number },
): Promise<DrivenCarve> {
  const carveId = randomUUID();
  const requestId = randomUUID();
  const hostHeader = `${spec.host}:${spec.port}`;
  const conn = new Connection(spec.host, spec.port);
  try {
    await conn.ready();
    const startBody = JSON.stringify({
      block_count: encoded.blocks.length,
      block_size: spec.blockSize,
      carve_size: encoded.size,
      carve_id: carveId,
      request_id: requestId,
      node_key: "",
    });
    const t0 = performance.now();
    if (t0 < stats.firstSend) stats.firstSend = t0;
    const start = await conn.request([head("/start_uploads", hostHeader, Buffer.byteLength(startBody)), startBody]);
    stats.requests++;
    let sessionId: unknown;
    try {
      sessionId = (JSON.parse(start.body) as { session_id?: unknown }).session_id;
    } catch {
      sessionId = undefined;
    }
    if (typeof sessionId !== "string" || sessionId === "") {
      stats.failed++;
      return { carveId, ok: false, error: `start: HTTP ${start.status} ${start.body.slice(0, 200)}` };
    }
    const tail = '"}';
    for (let id = 0; id < encoded.blocks.length; id++) {
      const data = encoded.blocks[id] as Buffer;
      const prefix = `{"block_id":${id},"session_id":${JSON.stringify(sessionId)},"request_id":"${requestId}","data":"`;
      const len = Buffer.byteLength(prefix) + data.length + tail.length;
      const sent = performance.now();
      const reply = await conn.request([head("/upload_blocks", hostHeader, len), prefix, data, tail]);
      const now = performance.now();
      stats.requests++;
      // osquery counts any JSON reply as success; the bench wants every block accepted.
      if (reply.status !== 200 || !/"success"\s*:\s*true/.test(reply.body)) {
        stats.failed++;
        return { carveId, ok: false, error: `block ${id}: HTTP ${reply.status} ${reply.body.slice(0, 200)}` };
      }
      stats.blocks++;
      stats.ackedBytes += Math.min(spec.blockSize, encoded.size - id * spec.blockSize);
      latencies[latencyBase + id] = now - sent;
      if (now > stats.lastReply) stats.lastReply = now;
    }
    return { carveId, ok: true };
  } catch (err) {
    stats.failed++;
    return { carveId, ok: false, error: err instanceof Error ? err.message : String(err) };
  } finally {
    conn.close();
  }
}

function newStats(): {
  requests: number;
  failed: number;
  blocks: number;
  ackedBytes: number;
  firstSend: number;
  lastReply: number;
} {
  return {
    requests: 0,
    failed: 0,
    blocks: 0,
    ackedBytes: 0,
    firstSend: Number.POSITIVE_INFINITY,
    lastReply: Number.NEGATIVE_INFINITY,
  };
}

export async function drive(spec: DriveSpec, waitForGo: () => Promise<void>): Promise<DriveResult> {
  const encoded = await encodeBlocks(spec.archivePath, spec.blockSize);
  const warm = Math.min(spec.warmupBlocks, encoded.blocks.length);
  if (warm > 0) {
    const part = {
      size: Math.min(encoded.size, warm * spec.blockSize),
      blocks: encoded.blocks.slice(0, warm),
    };
    const scratch = new Float64Array(warm * spec.agents);
    const warmStats = newStats();
    const done = await Promise.all(
      Array.from({ length: spec.agents }, (_, a) => runAgent(spec, part, scratch, a * warm, warmStats)),
    );
    const bad = done.find((c) => !c.ok);
    if (bad) throw new Error(`warm-up carve ${bad.carveId} failed: ${bad.error ?? "?"}`);
  }
  const perAgent = encoded.blocks.length;
  const latencies = new Float64Array(perAgent * spec.agents).fill(Number.NaN);
  const stats = newStats();
  await waitForGo();
  const cpu0 = process.cpuUsage();
  const carves = await Promise.all(
    Array.from({ length: spec.agents }, (_, a) => runAgent(spec, encoded, latencies, a * perAgent, stats)),
  );
  const cpu = process.cpuUsage(cpu0);
  return {
    wallMs:
      Number.isFinite(stats.firstSend) && Number.isFinite(stats.lastReply) ? stats.lastReply - stats.firstSend : NaN,
    blocks: stats.blocks,
    ackedBytes: stats.ackedBytes,
    requests: stats.requests,
    failedExchanges: stats.failed,
    blockLatencyMs: summarize(latencies.filter((x) => !Number.isNaN(x))),
    driverCpuMs: (cpu.user + cpu.system) / 1000,
    carveBytes: encoded.size,
    carves,
  };
}

type ParentMessage = { type: "spec"; spec: DriveSpec } | { type: "go" };

function main(): void {
  let go: (() => void) | undefined;
  const goSignal = new Promise<void>((resolve) => (go = resolve));
  process.on("message", (m: ParentMessage) => {
    if (m.type === "go") {
      go?.();
      return;
    }
    drive(m.spec, async () => {
      process.send?.({ type: "ready" });
      await goSignal;
    }).then(
      (result) => process.send?.({ type: "result", result }, () => process.disconnect()),
      (err: unknown) =>
        process.send?.({ type: "error", error: err instanceof Error ? (err.stack ?? err.message) : String(err) }, () =>
          process.disconnect(),
        ),
    );
  });
}

if (process.send !== undefined) main();
