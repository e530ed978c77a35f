/** Tables, ratios and goal verdicts of a benchmark run. */
import type { LatencySummary } from "./driver.js";
import type { ProfileSummary } from "./profile.js";
import type { TargetKind } from "./targets.js";

export const KiB = 1024;
export const MiB = 1024 * 1024;
/** Throughput and memory are reported in decimal megabytes (10^6 bytes), as the goals are written. */
export const MB = 1_000_000;

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
  driverCpuPercent: number;
  /** GridFS only: CPU of the MongoDB-wire server (mongo-java-server JVM) / wall time. */
  dbCpuPercent: number | null;
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
  if (bytes >= MiB && bytes % MiB === 0) return `${bytes / MiB} MiB`;
  if (bytes >= KiB && bytes % KiB === 0) return `${bytes / KiB} KiB`;
  return `${bytes} B`;
}

const f = (n: number, digits = 1): string => (Number.isFinite(n) ? n.toFixed(digits) : "-");

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

export function markdownTable(rows: CaseResult[]): string {
  const head = [
    "target",
    "block",
    "agents",
    "carve/agent",
    "wall s",
    "MB/s",
    "blocks/s",
    "req/s",
    "p50 ms",
    "p99 ms",
    "peak RSS MB (idle)",
    "svc CPU",
    "drv CPU",
    "db CPU",
    "vs bare",
    "carves",
    "load",
  ];
  const lines = [`| ${head.join(" | ")} |`, `|${head.map(() => " --- ").join("|")}|`];
  for (const r of rows) {
    const ratio =
      r.target === "bare"
        ? "1 (ref)"
        : r.ratioToBare === null
          ? "-"
          : `${r.ratioToBare.toFixed(2)} (${r.ratioMetric === "throughput" ? "MB/s" : "req/s"})`;
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
        f(r.throughputMBps),
        f(r.blocksPerSec, 0),
        f(r.requestsPerSec, 0),
        f(r.blockLatencyMs.p50, 2),
        f(r.blockLatencyMs.p99, 2),
        `${f(r.peakRssBytes / MB)} (${f(r.idleRssBytes / MB, 0)})`,
        `${f(r.serviceCpuPercent, 0)}%`,
        `${f(r.driverCpuPercent, 0)}%`,
        r.dbCpuPercent === null ? "-" : `${f(r.dbCpuPercent, 0)}%`,
        ratio,
        carves,
        f(r.loadavg1, 1),
      ].join(" | ")} |`,
    );
  }
  return lines.join("\n");
}

function overall(checks: GoalCheck[]): Verdict {
  const decided = checks.filter((c) => c.verdict !== "n/a");
  if (decided.length === 0) return "n/a";
  return decided.some((c) => c.verdict === "MISS") ? "MISS" : "PASS";
}

const RSS_LIMIT = 150 * MB;

export function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
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
    };
  });
}

/** Per case over its repetitions: medians of throughput, requests/s and ratio, largest peak RSS. */
export function summaryTable(groups: CaseGroup[]): string {
  const head = [
    "target",
    "block",
    "agents",
    "runs",
    "MB/s (median)",
    "req/s (median)",
    "vs bare (median; each run)",
    "peak RSS MB (max)",
    "carves",
  ];
  const lines = [`| ${head.join(" | ")} |`, `|${head.map(() => " --- ").join("|")}|`];
  for (const g of groups) {
    const ratio =
      g.target === "bare"
        ? "1 (ref)"
        : g.medianRatio === null
          ? "-"
          : `${g.medianRatio.toFixed(2)} ${g.ratioMetric === "throughput" ? "MB/s" : "req/s"} (${g.ratios.map((x) => x.toFixed(2)).join(", ")})`;
    lines.push(
      `| ${[
        g.target,
        fmtSize(g.blockSize),
        String(g.agents),
        String(g.runs.length),
        f(g.medianThroughputMBps),
        f(g.medianRequestsPerSec, 0),
        ratio,
        f(g.maxPeakRssBytes / MB),
        g.failed ? "**FAILED**" : "all verified",
      ].join(" | ")} |`,
    );
  }
  return lines.join("\n");
}

/**
 * The goals of issue 7 (Benchmark) and issue 3 (Done when: peak RSS, 10 agents x 100 MB, 1 MB blocks).
 * Over repetitions, a ratio goal takes the median of the per-repetition ratios (the machine is shared and
 * noisy) and an RSS goal the largest peak.
 */
export function evaluateGoals(rows: CaseResult[], backends: TargetKind[]): Goal[] {
  const goals: Goal[] = [];
  const groups = groupCases(rows);
  const service = (b: TargetKind): CaseGroup[] => groups.filter((g) => g.target === b);
  const subject = (g: CaseGroup): string =>
    `${g.target}, ${fmtSize(g.blockSize)} blocks, ${g.agents} agent${g.agents === 1 ? "" : "s"} x ${fmtSize(g.carveBytesPerAgent)}`;
  const runs = (g: CaseGroup, what: string): string => (g.runs.length > 1 ? ` (${what} of ${g.runs.length} runs)` : "");

  const ratioGoal = (
    id: string,
    title: string,
    backend: TargetKind,
    blockSizes: (b: number) => boolean,
    min: number,
    informational: boolean,
  ): void => {
    const checks = service(backend)
      .filter((g) => blockSizes(g.blockSize))
      .map((g): GoalCheck => {
        if (g.failed) return { subject: subject(g), value: "carves failed", verdict: "MISS" };
        if (g.medianRatio === null) return { subject: subject(g), value: "no bare run", verdict: "n/a" };
        return {
          subject: subject(g),
          value: `${g.medianRatio.toFixed(2)} of bare ${g.ratioMetric}${runs(g, "median")} (need >= ${min})`,
          verdict: g.medianRatio >= min ? "PASS" : "MISS",
        };
      });
    goals.push({ id, title, informational, verdict: overall(checks), checks });
  };
  const rssGoal = (
    id: string,
    title: string,
    backend: TargetKind,
    pick: (g: CaseGroup) => boolean,
    informational: boolean,
  ): void => {
    const checks = service(backend)
      .filter(pick)
      .map((g): GoalCheck => ({
        subject: subject(g),
        value: `${(g.maxPeakRssBytes / MB).toFixed(1)} MB peak RSS${runs(g, "largest")} (need < 150 MB)${g.failed ? ", carves failed" : ""}`,
        verdict: g.maxPeakRssBytes < RSS_LIMIT && !g.failed ? "PASS" : "MISS",
      }));
    goals.push({ id, title, informational, verdict: overall(checks), checks });
  };

  for (const b of backends) {
    const info = b === "gridfs";
    const note = info ? " [informational: mongo-java-server/H2, not MongoDB]" : "";
    ratioGoal(
      `1MiB-throughput-${b}`,
      `1 MiB blocks: ${b} throughput >= 0.7 x bare${note}`,
      b,
      (s) => s >= MiB,
      0.7,
      info,
    );
    ratioGoal(`8KiB-rps-${b}`, `8 KiB blocks: ${b} requests/s >= 0.5 x bare${note}`, b, (s) => s < MiB, 0.5, info);
  }
  for (const b of backends) {
    rssGoal(
      `rss-50-agents-${b}`,
      `peak RSS < 150 MB with 50 concurrent agents (${b})`,
      b,
      (g) => g.agents === 50,
      false,
    );
  }
  for (const b of backends) {
    rssGoal(
      `issue3-rss-${b}`,
      `issue 3: 10 agents x 100 MB, 1 MiB blocks: peak RSS < 150 MB (${b})`,
      b,
      (g) => g.agents === 10 && g.blockSize === MiB && g.carveBytesPerAgent >= 100 * MB,
      false,
    );
  }
  return goals;
}

export function formatGoals(goals: Goal[]): string {
  const out: string[] = [];
  for (const g of goals) {
    out.push(`- **${g.verdict}** ${g.title}${g.verdict === "n/a" ? " (no such case in this matrix)" : ""}`);
    for (const c of g.checks) out.push(`  - ${c.verdict}: ${c.subject}: ${c.value}`);
  }
  return out.join("\n");
}
