/**
 * Uploads through the agent emulator's code path (runCarve): N agents at once, each its own carve (fresh carve
 * id) of the same source file over its own keep-alive connection. The download benchmark uploads its carve
 * with it; the upload cases use the lighter scripts/bench/load-driver.ts, whose CPU does not rival the bare
 * server's.
 */
import http from "node:http";
import { performance } from "node:perf_hooks";

import { runCarve, type CarveResult, type CarveRequestRecord } from "../emulator/index.js";

export interface DriveSpec {
  baseUrl: string;
  archivePath: string;
  blockSize: number;
  agents: number;
  /** Size of the archive (to count acknowledged bytes of a last, short block). */
  carveBytes: number;
}

export interface LatencySummary {
  count: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

export interface DriveResult {
  /** From the first start request sent to the last block reply received. */
  wallMs: number;
  /** Genuine, successful block requests. */
  blocks: number;
  /** Decoded carve bytes of those blocks. */
  ackedBytes: number;
  /** Every HTTP exchange (starts, blocks, retries). */
  requests: number;
  /** Exchanges the agent did not count as success (transport errors, timeouts, non-JSON replies). */
  failedExchanges: number;
  blockLatencyMs: LatencySummary;
  /** CPU the driver process itself used (user + system) from the first start reply on, ms. */
  driverCpuMs: number;
  carves: CarveResult[];
  /** Errors thrown by runCarve itself (not carve failures, which are in carves[].status). */
  errors: string[];
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1] as number;
}

export function summarize(values: number[]): LatencySummary {
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

export async function driveAgents(spec: DriveSpec): Promise<DriveResult> {
  const latencies: number[] = [];
  let firstSend = Number.POSITIVE_INFINITY;
  let lastReply = Number.NEGATIVE_INFINITY;
  let requests = 0;
  let failed = 0;
  let blocks = 0;
  let ackedBytes = 0;
  // The emulator hashes the archive before its start request: count the driver's CPU from the first start on.
  let cpuAtFirstStart: NodeJS.CpuUsage | undefined;

  const onRequest = (r: CarveRequestRecord): void => {
    const now = performance.now();
    requests++;
    if (!r.ok) failed++;
    const sent = now - r.latencyMs;
    if (r.kind === "start") {
      cpuAtFirstStart ??= process.cpuUsage();
      if (sent < firstSend) firstSend = sent;
      return;
    }
    if (r.ok && r.variant === "genuine") {
      blocks++;
      ackedBytes += Math.max(0, Math.min(spec.blockSize, spec.carveBytes - (r.blockId ?? 0) * spec.blockSize));
      latencies.push(r.latencyMs);
    }
    if (now > lastReply) lastReply = now;
  };

  const agents = Array.from({ length: spec.agents }, () => new http.Agent({ keepAlive: true, maxSockets: 1 }));
  const errors: string[] = [];
  const settled = await Promise.allSettled(
    agents.map((httpAgent) =>
      runCarve({
        baseUrl: spec.baseUrl,
        startEndpoint: "/start_uploads",
        continueEndpoint: "/upload_blocks",
        archivePath: spec.archivePath,
        blockSize: spec.blockSize,
        httpAgent,
        retryDelaysMs: [1000, 4000],
        onRequest,
      }),
    ),
  );
  for (const a of agents) a.destroy();
  const cpu = process.cpuUsage(cpuAtFirstStart);

  const carves: CarveResult[] = [];
  for (const s of settled) {
    if (s.status === "fulfilled") carves.push(s.value);
    else errors.push(s.reason instanceof Error ? s.reason.message : String(s.reason));
  }
  return {
    wallMs: Number.isFinite(firstSend) && Number.isFinite(lastReply) ? lastReply - firstSend : Number.NaN,
    blocks,
    ackedBytes,
    requests,
    failedExchanges: failed,
    blockLatencyMs: summarize(latencies),
    driverCpuMs: (cpu.user + cpu.system) / 1000,
    carves,
    errors,
  };
}
