/** Results, tables and ratios of the upload cases of a benchmark run (goals: scripts/bench/goals.ts). */
import type { LatencySummary } from "./load-driver.js";
import type { ProfileSummary } from "./profile.js";
import type { TargetKind } from "./targets.js";

export const KiB = 1024;
export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;
/** Throughput and memory are reported in decimal megabytes (10^6 bytes), as the goals are written. */
export const MB = 1_000_000;

export type {
  DownloadResult,
  DownloadSetup,
  DownloadVariant,
  ServiceDownloadMetrics,
  ServiceRecord,
} from "./download-report.js";

export interface CaseResult {
  target: TargetKind;
  blockSize: number;
  agents: number;
  carveBytesPerAgent: number;
  totalBytes: number;
  rep: number;
  wallMs: number;
  throughputMBps: number;
  blocksPerSec: number;
  requestsPerSec: number;
  blockLatencyMs: LatencySummary;
  /** max(VmHWM at the end, largest VmRSS sample). */
  peakRssBytes: number;
  vmHwmBytes: number;
  /** VmRSS once the child answered GET /status, before any carve. */
  idleRssBytes: number;
  sampledMaxRssBytes: number;
  rssSamples: number;
  /** [ms since the child was ready, VmRSS MB] every 100 ms (JSON only). */
  rssTimeline: Array<[number, number]>;
  serviceCpuSeconds: number;
  /** Service CPU time / wall time (100% = one core busy). */
  serviceCpuPercent: number;
  /** The target's CPU time (utime + stime from /proc) per acknowledged block, microseconds. */
  serviceCpuUsPerBlock: number;
  /** The same per MiB of acknowledged carve data, milliseconds. */
  serviceCpuMsPerMiB: number;
  /** The load driver's CPU time / wall time. */
  driverCpuPercent: number;
  driverCpuUsPerBlock: number;
  /** "driver" when the driver used at least as much CPU as the target: the target was not what saturated. */
  bottleneck: "server" | "driver" | "database";
  /** The target's CPU seconds in the run by thread name (/proc/<pid>/task): main thread, thread pool, GC. */
  threadCpuSeconds: Record<string, number>;
  /** Share of the target's CPU spent in the kernel (stime / (utime + stime)): syscalls, loopback TCP. */
  serviceSystemShare: number | null;
  /** GridFS only: CPU of the MongoDB-wire server (mongo-java-server JVM) / wall time. */
  dbCpuPercent: number | null;
  dbCpuUsPerBlock: number | null;
  /** GridFS only: the service's database messages (round trips) per block, monitoring excluded. */
  dbRoundTripsPerBlock: number | null;
  /** GridFS only: those messages by command name (monitoring included). */
  dbCommands: Record<string, number> | null;
  /** The rest of the machine's busy CPU in the window (other users' work) / wall time; null off Linux. */
  otherCpuPercent: number | null;
  requests: number;
  failedExchanges: number;
  carvesTotal: number;
  carvesOk: number;
  failures: string[];
  loadavg1: number;
  /** Against the bare server in the same case: throughput (1 MiB blocks) or requests/s (smaller blocks). */
  ratioToBare: number | null;
  ratioMetric: "throughput" | "requests/s";
  profile?: ProfileSummary;
}

export type Verdict = "PASS" | "MISS" | "n/a";

export interface GoalCheck {
  subject: string;
  value: string;
  verdict: Verdict;
}

export interface Goal {
  id: string;
  title: string;
  /** Informational goals (GridFS on the substitute server) do not decide the overall verdict. */
  informational: boolean;
  verdict: Verdict;
  checks: GoalCheck[];
}

export function fmtSize(bytes: number): string {
  if (bytes >= GiB && bytes % GiB === 0) return `${bytes / GiB} GiB`;
  if (bytes >= MiB && bytes % MiB === 0) return `${bytes / MiB} MiB`;
  if (bytes >= KiB && bytes % KiB === 0) return `${bytes / KiB} KiB`;
  return `${bytes} B`;
}

export const f = (n: number, digits = 1): string => (Number.isFinite(n) ? n.toFixed(digits) : "-");

export function ratioMetricFor(blockSize: number): "throughput" | "requests/s" {
  return blockSize >= MiB ? "throughput" : "requests/s";
}

/** Fills ratioToBare of every service row from the bare row of the same case and repetition. */
export function computeRatios(rows: CaseResult[]): void {
  for (const r of rows) {
    const bare = rows.find(
      (b) => b.target === "bare" && b.blockSize === r.blockSize && b.agents === r.agents && b.rep === r.rep,
    );
    if (!bare) {
      r.ratioToBare = null;
      continue;
    }
    const metric = r.ratioMetric;
    const num = metric === "throughput" ? r.throughputMBps : r.requestsPerSec;
    const den = metric === "throughput" ? bare.throughputMBps : bare.requestsPerSec;
    r.ratioToBare = den > 0 ? num / den : null;
  }
}

const fmtRatio = (r: CaseResult | CaseGroup, ratio: number | null): string =>
  r.target === "bare" ? "1 (ref)" : ratio === null ? "-" : ratio.toFixed(2);

const dbCell = (cpuPct: number | null, trips: number | null): string =>
  cpuPct === null ? "-" : `${f(cpuPct, 0)}%${trips !== null ? `, ${f(trips, 2)} trips/block` : ""}`;

export function markdownTable(rows: CaseResult[]): string {
  const head = [
    "target",
    "block",
    "agents",
    "carve/agent",
    "wall s",
    "CPU us/block",
    "CPU ms/MiB",
    "blocks/s",
    "MB/s",
    "p50 ms",
    "p99 ms",
    "peak RSS MB (idle)",
    "svc CPU",
    "drv CPU",
    "paced by",
    "db CPU, round trips",
    "others' CPU",
    "vs bare",
    "carves",
    "load",
  ];
  const lines = [`| ${head.join(" | ")} |`, `|${head.map(() => " --- ").join("|")}|`];
  for (const r of rows) {
    const retried = r.failedExchanges > 0 ? ` (${r.failedExchanges} failed exchanges)` : "";
    const carves =
      (r.carvesOk === r.carvesTotal
        ? `${r.carvesOk}/${r.carvesTotal} ${r.target === "bare" ? "SUCCESS" : "verified"}`
        : `**${r.carvesOk}/${r.carvesTotal} FAILED**`) + retried;
    lines.push(
      `| ${[
        r.target + (r.rep > 0 ? ` #${r.rep + 1}` : ""),
        fmtSize(r.blockSize),
        String(r.agents),
        fmtSize(r.carveBytesPerAgent),
        f(r.wallMs / 1000, 2),
        f(r.serviceCpuUsPerBlock, 0),
        f(r.serviceCpuMsPerMiB, 2),
        f(r.blocksPerSec, 0),
        f(r.throughputMBps),
        f(r.blockLatencyMs.p50, 2),
        f(r.blockLatencyMs.p99, 2),
        `${f(r.peakRssBytes / MB)} (${f(r.idleRssBytes / MB, 0)})`,
        `${f(r.serviceCpuPercent, 0)}%`,
        `${f(r.driverCpuPercent, 0)}%`,
        r.bottleneck === "driver" ? "**driver**" : r.bottleneck,
        dbCell(r.dbCpuPercent, r.dbRoundTripsPerBlock),
        r.otherCpuPercent === null ? "-" : `${f(r.otherCpuPercent, 0)}%`,
        r.ratioToBare === null && r.target !== "bare"
          ? "-"
          : `${fmtRatio(r, r.ratioToBare)}${r.target === "bare" ? "" : ` (${r.ratioMetric === "throughput" ? "MB/s" : "req/s"})`}`,
        carves,
        f(r.loadavg1, 1),
      ].join(" | ")} |`,
    );
  }
  return lines.join("\n");
}

export function overall(checks: GoalCheck[]): Verdict {
  const decided = checks.filter((c) => c.verdict !== "n/a");
  if (decided.length === 0) return "n/a";
  return decided.some((c) => c.verdict === "MISS") ? "MISS" : "PASS";
}

export function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

function medianOrNull(values: Array<number | null>): number | null {
  const xs = values.filter((x): x is number => x !== null && Number.isFinite(x));
  return xs.length > 0 ? median(xs) : null;
}

function threadShares(runs: CaseResult[]): string {
  const names = new Set(runs.flatMap((r) => Object.keys(r.threadCpuSeconds)));
  const shares = [...names].map((name): [string, number] => [
    name,
    median(
      runs.map((r) => {
        const total = Object.values(r.threadCpuSeconds).reduce((a, b) => a + b, 0);
        return total > 0 ? (r.threadCpuSeconds[name] ?? 0) / total : 0;
      }),
    ),
  ]);
  return shares
    .filter(([, x]) => x >= 0.01)
    .sort((a, b) => b[1] - a[1])
    .map(([name, x]) => `${name} ${(100 * x).toFixed(0)}%`)
    .join(", ");
}

/** (max - min) / median: 0 for one run. */
export function spread(values: number[]): number {
  const m = median(values);
  return m > 0 ? (Math.max(...values) - Math.min(...values)) / m : Number.NaN;
}

/** One case (target x block size x agents) over its repetitions. */
export interface CaseGroup {
  target: TargetKind;
  blockSize: number;
  agents: number;
  carveBytesPerAgent: number;
  runs: CaseResult[];
  failed: boolean;
  medianThroughputMBps: number;
  medianRequestsPerSec: number;
  /** Median of the per-repetition ratios to the bare run of the same repetition. */
  medianRatio: number | null;
  ratios: number[];
  ratioMetric: "throughput" | "requests/s";
  maxPeakRssBytes: number;
  medianBlocksPerSec: number;
  medianCpuUsPerBlock: number;
  medianCpuMsPerMiB: number;
  medianDriverCpuPercent: number;
  medianServiceCpuPercent: number;
  medianOtherCpuPercent: number | null;
  /** Runs the driver, not the target, paced. */
  driverPaced: number;
  /** Median share of the target's CPU per thread name, e.g. "node 71%, libuv-worker 20%, V8 DefaultWorke 9%". */
  threadShares: string;
  medianSystemShare: number | null;
  medianDbCpuUsPerBlock: number | null;
  medianDbRoundTripsPerBlock: number | null;
  /** (max - min) / median over the runs, of CPU per block and of blocks/s: how noisy each figure was. */
  cpuSpread: number;
  throughputSpread: number;
}

export function groupCases(rows: CaseResult[]): CaseGroup[] {
  const groups = new Map<string, CaseResult[]>();
  for (const r of rows) {
    const key = `${r.target}/${r.blockSize}/${r.agents}`;
    const g = groups.get(key);
    if (g) g.push(r);
    else groups.set(key, [r]);
  }
  return [...groups.values()].map((runs) => {
    const first = runs[0] as CaseResult;
    const ratios = runs.map((r) => r.ratioToBare).filter((x): x is number => x !== null);
    return {
      target: first.target,
      blockSize: first.blockSize,
      agents: first.agents,
      carveBytesPerAgent: first.carveBytesPerAgent,
      runs,
      failed: runs.some((r) => r.carvesOk !== r.carvesTotal),
      medianThroughputMBps: median(runs.map((r) => r.throughputMBps)),
      medianRequestsPerSec: median(runs.map((r) => r.requestsPerSec)),
      medianRatio: ratios.length > 0 ? median(ratios) : null,
      ratios,
      ratioMetric: first.ratioMetric,
      maxPeakRssBytes: Math.max(...runs.map((r) => r.peakRssBytes)),
      medianBlocksPerSec: median(runs.map((r) => r.blocksPerSec)),
      medianCpuUsPerBlock: median(runs.map((r) => r.serviceCpuUsPerBlock)),
      medianCpuMsPerMiB: median(runs.map((r) => r.serviceCpuMsPerMiB)),
      medianDriverCpuPercent: median(runs.map((r) => r.driverCpuPercent)),
      medianServiceCpuPercent: median(runs.map((r) => r.serviceCpuPercent)),
      medianOtherCpuPercent: medianOrNull(runs.map((r) => r.otherCpuPercent)),
      driverPaced: runs.filter((r) => r.bottleneck === "driver").length,
      threadShares: threadShares(runs),
      medianSystemShare: medianOrNull(runs.map((r) => r.serviceSystemShare)),
      medianDbCpuUsPerBlock: medianOrNull(runs.map((r) => r.dbCpuUsPerBlock)),
      medianDbRoundTripsPerBlock: medianOrNull(runs.map((r) => r.dbRoundTripsPerBlock)),
      cpuSpread: spread(runs.map((r) => r.serviceCpuUsPerBlock)),
      throughputSpread: spread(runs.map((r) => r.blocksPerSec)),
    };
  });
}

/**
 * Per case over its repetitions: medians of CPU per block and per MiB, blocks/s, MB/s, driver CPU and ratio,
 * largest peak RSS, and the spread of CPU per block and of blocks/s (how noisy each was).
 */
export function summaryTable(groups: CaseGroup[]): string {
  const head = [
    "target",
    "block",
    "agents",
    "runs",
    "CPU us/block",
    "CPU ms/MiB",
    "CPU vs bare",
    "blocks/s",
    "MB/s",
    "peak RSS MB (max)",
    "svc / drv CPU",
    "paced by",
    "svc CPU by thread; kernel share",
    "db CPU us/block, round trips/block",
    "others' CPU",
    "spread CPU / blocks/s",
    "carves",
  ];
  const lines = [`| ${head.join(" | ")} |`, `|${head.map(() => " --- ").join("|")}|`];
  const pct = (x: number): string => `${f(100 * x, 0)}%`;
  for (const g of groups) {
    const bare = groups.find((b) => b.target === "bare" && b.blockSize === g.blockSize && b.agents === g.agents);
    const cpuRatio = bare ? g.medianCpuUsPerBlock / bare.medianCpuUsPerBlock : null;
    lines.push(
      `| ${[
        g.target,
        fmtSize(g.blockSize),
        String(g.agents),
        String(g.runs.length),
        f(g.medianCpuUsPerBlock, 0),
        f(g.medianCpuMsPerMiB, 2),
        cpuRatio === null ? "-" : g.target === "bare" ? "1 (ref)" : `${cpuRatio.toFixed(1)}x`,
        f(g.medianBlocksPerSec, 0),
        f(g.medianThroughputMBps),
        f(g.maxPeakRssBytes / MB),
        `${f(g.medianServiceCpuPercent, 0)}% / ${f(g.medianDriverCpuPercent, 0)}%`,
        g.driverPaced > 0 ? `**driver in ${g.driverPaced} of ${g.runs.length}**` : (g.runs[0]?.bottleneck ?? "-"),
        `${g.threadShares}; kernel ${g.medianSystemShare === null ? "-" : `${(100 * g.medianSystemShare).toFixed(0)}%`}`,
        g.medianDbCpuUsPerBlock === null
          ? "-"
          : `${f(g.medianDbCpuUsPerBlock, 0)}, ${g.medianDbRoundTripsPerBlock === null ? "-" : f(g.medianDbRoundTripsPerBlock, 2)}`,
        g.medianOtherCpuPercent === null ? "-" : `${f(g.medianOtherCpuPercent, 0)}%`,
        g.runs.length > 1 ? `${pct(g.cpuSpread)} / ${pct(g.throughputSpread)}` : "-",
        g.failed ? "**FAILED**" : "all verified",
      ].join(" | ")} |`,
    );
  }
  return lines.join("\n");
}
