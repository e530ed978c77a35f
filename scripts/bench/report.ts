/** Tables, ratios and goal verdicts of a benchmark run. */
import type { LatencySummary } from "./driver.js";
import type { ProfileSummary } from "./profile.js";
import type { TargetKind } from "./targets.js";

export const KiB = 1024;
export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;
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
  if (bytes >= GiB && bytes % GiB === 0) return `${bytes / GiB} GiB`;
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

// ------------------------------------------------------------------------------------------------ downloads

/**
 * full: curl at full speed to /dev/null (the timed runs); verify: curl's output hashed (SHA-256, byte count);
 * slow: curl --limit-rate with --max-time (a slow reader that gives up: backpressure).
 */
export type DownloadVariant = "full" | "verify" | "slow";

export interface DownloadResult {
  target: TargetKind;
  variant: DownloadVariant;
  rep: number;
  carveBytes: number;
  bytesReceived: number;
  httpStatus: number | null;
  curlExit: number;
  curlError: string | null;
  /** curl started to curl exited, as seen by the benchmark. */
  wallMs: number;
  /** curl's %{time_total} and %{time_starttransfer}, seconds. */
  curlTimeTotalS: number;
  curlTimeStartTransferS: number;
  /** Bytes received / curl's time_total, MB/s (10^6 bytes). */
  throughputMBps: number;
  /** curl's %{speed_download} in MB/s (the same figure, as curl computes it). */
  curlSpeedMBps: number;
  /** The child's VmRSS just before curl started. */
  rssBeforeBytes: number;
  /** max(VmHWM since it was reset just before curl started, largest 100 ms VmRSS sample). */
  rssPeakBytes: number;
  /** VmRSS when curl had exited, and 1 s later. */
  rssAfterBytes: number;
  rssSettledBytes: number;
  /** VmRSS of the child before its first download (the fresh child after one metadata request). */
  rssIdleBytes: number;
  /**
   * rssPeakBytes - rssIdleBytes: growth over the child's idle RSS, not over this run's "before" (memory a
   * previous download left behind would otherwise hide a later run's use).
   */
  rssGrowthBytes: number;
  peakFrom: string;
  rssSamples: number;
  /** [ms since curl started, VmRSS MB] every 100 ms (JSON only). */
  rssTimeline: Array<[number, number]>;
  /** Open file descriptors of the child before curl started and 1 s after it exited. */
  fdsBefore: number | null;
  fdsAfter: number | null;
  /** The child's CPU seconds / curl's wall seconds (100% = one core). */
  serviceCpuPercent: number;
  loadavg1: number;
  /** verify runs: SHA-256 of the bytes curl received, and whether it is the source's. */
  sha256: string | null;
  sha256Ok: boolean | null;
  ok: boolean;
  failures: string[];
  /** The service's audit event for this download (matched in request order), null if not read or bare. */
  serviceRecord: ServiceRecord | null;
  /** false when that record contradicts curl: a download curl received in full not recorded as completed. */
  serviceRecordConsistent: boolean | null;
  /** full runs of the service: MB/s / the bare server's MB/s in the same repetition. */
  ratioToBare: number | null;
}

export interface DownloadSetup {
  target: TargetKind;
  carveId: string;
  carveBytes: number;
  /** The upload through the agent path (1 agent, 1 MiB blocks): wall ms and MB/s. */
  uploadWallMs: number;
  uploadMBps: number;
  storage: string;
  /** VmRSS of the fresh download child after the metadata request (before any download). */
  downloadServiceIdleRssBytes: number;
  /** The download child's counters after all its downloads (GET /metrics), null if not read. */
  serviceMetrics?: ServiceDownloadMetrics | null;
  /** How many carve.download audit events the service wrote for this carve (null: not read). */
  auditEvents?: number | null;
}

export interface ServiceDownloadMetrics {
  /** carve_downloads_total{result="complete"|"aborted"}, carve_download_bytes_total */
  complete: number;
  aborted: number;
  bytesSent: number;
}

/** The service's audit event of one download (GET /api/v1/audit). */
export interface ServiceRecord {
  result: string;
  code: string | null;
  completed: boolean;
  aborted: boolean;
  bytesSent: number | null;
}

/** One line per backend: how the service recorded the downloads, against what curl received. */
export function downloadAccounting(setups: DownloadSetup[], runs: DownloadResult[]): string[] {
  return setups.map((s) => {
    const mine = runs.filter((r) => r.target === s.target);
    const m = s.serviceMetrics;
    const metrics = m
      ? ` Its counters: carve_downloads_total ${m.complete} complete, ${m.aborted} aborted; carve_download_bytes_total ${f(m.bytesSent / MB)} MB (curl received ${f(mine.reduce((a, r) => a + r.bytesReceived, 0) / MB)} MB).`
      : "";
    if (mine.some((r) => r.serviceRecordConsistent === null)) {
      return `- ${s.target}: the service's audit events (${s.auditEvents ?? "not read"}) could not be matched to the ${mine.length} downloads.${metrics}`;
    }
    const wrong = mine.filter((r) => r.serviceRecordConsistent === false);
    if (wrong.length === 0) {
      return `- ${s.target}: the service's audit trail records each of the ${mine.length} downloads as curl saw it.${metrics}`;
    }
    const how = [
      ...new Set(
        wrong.map(
          (r) =>
            `result ${r.serviceRecord?.result ?? "?"}${r.serviceRecord?.code ? ` ${r.serviceRecord.code}` : ""}, completed ${String(r.serviceRecord?.completed)}`,
        ),
      ),
    ].join("; ");
    return (
      `- ${s.target}: **${wrong.length} of ${mine.length} downloads that curl received in full (bytes and status checked) are recorded by the service as failed** ` +
      `(audit: ${how}; its log: "responder request failed", ERR_STREAM_PREMATURE_CLOSE).${metrics}`
    );
  });
}

/** A "flat" RSS while downloading: the peak stays within this of the child's idle RSS, for any carve size. */
export const DOWNLOAD_RSS_GROWTH_LIMIT = 64 * MB;

const VARIANT_LABEL: Record<DownloadVariant, string> = {
  full: "curl -o /dev/null",
  verify: "curl, output hashed",
  slow: "slow reader",
};

export function downloadTable(runs: DownloadResult[], slow: { rate: string; seconds: number } | null): string {
  const head = [
    "target",
    "run",
    "carve",
    "received",
    "HTTP / curl exit",
    "TTFB s",
    "curl s",
    "MB/s",
    "vs bare",
    "RSS MB idle",
    "before",
    "peak",
    "after",
    "after 1 s",
    "peak - idle MB",
    "svc CPU",
    "check",
    "load",
  ];
  const lines = [`| ${head.join(" | ")} |`, `|${head.map(() => " --- ").join("|")}|`];
  for (const r of runs) {
    const label =
      r.variant === "full"
        ? `${VARIANT_LABEL.full} #${r.rep + 1}`
        : r.variant === "slow" && slow
          ? `slow reader (--limit-rate ${slow.rate}, --max-time ${slow.seconds})`
          : VARIANT_LABEL[r.variant];
    const curlCheck = !r.ok
      ? `**FAILED**: ${r.failures.join("; ")}`
      : r.variant === "verify"
        ? "bytes + sha256 ok"
        : r.variant === "slow"
          ? `cut by --max-time, service alive, fds ${r.fdsBefore ?? "?"} -> ${r.fdsAfter ?? "?"}`
          : "bytes ok";
    const rec = r.serviceRecord;
    const serviceCheck =
      r.serviceRecordConsistent === false && rec
        ? `; **service audit: ${rec.result}${rec.code ? ` ${rec.code}` : ""}, completed ${String(rec.completed)}**`
        : rec
          ? `; audit: ${rec.completed ? "completed" : rec.aborted ? "aborted" : "not completed"}`
          : "";
    const check = curlCheck + serviceCheck;
    lines.push(
      `| ${[
        r.target,
        label,
        fmtSize(r.carveBytes),
        r.bytesReceived === r.carveBytes ? `${f(r.bytesReceived / MB)} MB (all)` : `${f(r.bytesReceived / MB)} MB`,
        `${r.httpStatus ?? "-"} / ${r.curlExit}`,
        f(r.curlTimeStartTransferS, 3),
        f(r.curlTimeTotalS, 2),
        f(r.throughputMBps),
        r.target === "bare" && r.variant === "full"
          ? "1 (ref)"
          : r.ratioToBare === null
            ? "-"
            : r.ratioToBare.toFixed(2),
        f(r.rssIdleBytes / MB),
        f(r.rssBeforeBytes / MB),
        f(r.rssPeakBytes / MB),
        f(r.rssAfterBytes / MB),
        f(r.rssSettledBytes / MB),
        `${r.rssGrowthBytes >= 0 ? "+" : ""}${f(r.rssGrowthBytes / MB)}`,
        `${f(r.serviceCpuPercent, 0)}%`,
        check,
        f(r.loadavg1, 1),
      ].join(" | ")} |`,
    );
  }
  return lines.join("\n");
}

/** Per target: median MB/s and ratio of the full-speed runs, largest RSS growth over every run. */
export function downloadSummary(runs: DownloadResult[]): string {
  const head = [
    "target",
    "carve",
    "full-speed runs",
    "MB/s (median; each)",
    "vs bare (median)",
    "RSS peak - idle MB (max, any run)",
    "all checks",
  ];
  const lines = [`| ${head.join(" | ")} |`, `|${head.map(() => " --- ").join("|")}|`];
  for (const target of [...new Set(runs.map((r) => r.target))]) {
    const mine = runs.filter((r) => r.target === target);
    const full = mine.filter((r) => r.variant === "full");
    const ratios = full.map((r) => r.ratioToBare).filter((x): x is number => x !== null);
    lines.push(
      `| ${[
        target,
        [...new Set(mine.map((r) => fmtSize(r.carveBytes)))].join(", "),
        String(full.length),
        `${f(median(full.map((r) => r.throughputMBps)))} (${full.map((r) => f(r.throughputMBps)).join(", ")})`,
        target === "bare" ? "1 (ref)" : ratios.length > 0 ? median(ratios).toFixed(2) : "-",
        `+${f(Math.max(...mine.map((r) => r.rssGrowthBytes)) / MB)}`,
        mine.every((r) => r.ok) ? "ok" : "**FAILED**",
      ].join(" | ")} |`,
    );
  }
  return lines.join("\n");
}

/**
 * Download goals: every download byte-exact, and the service's RSS flat (peak - idle < 64 MB in every run), on
 * each backend: the service chooses how much of a GridFS file it fetches at once, so its memory is its own
 * even against the substitute MongoDB server.
 */
export function evaluateDownloadGoals(runs: DownloadResult[], backends: TargetKind[]): Goal[] {
  const goals: Goal[] = [];
  for (const b of backends) {
    const mine = runs.filter((r) => r.target === b);
    if (mine.length === 0) continue;
    const sizes = [...new Set(mine.map((r) => fmtSize(r.carveBytes)))].join(", ");
    const checks: GoalCheck[] = mine.map((r) => ({
      subject: `${b}, ${r.variant === "full" ? `full speed #${r.rep + 1}` : r.variant === "verify" ? "verification" : "slow reader"}`,
      value: `RSS idle ${(r.rssIdleBytes / MB).toFixed(1)}, before ${(r.rssBeforeBytes / MB).toFixed(1)}, peak ${(r.rssPeakBytes / MB).toFixed(1)} MB (peak - idle ${(r.rssGrowthBytes / MB).toFixed(1)} MB, need < ${DOWNLOAD_RSS_GROWTH_LIMIT / MB})${r.ok ? "" : `, FAILED: ${r.failures.join("; ")}`}`,
      verdict: r.ok && r.rssGrowthBytes < DOWNLOAD_RSS_GROWTH_LIMIT ? "PASS" : "MISS",
    }));
    goals.push({
      id: `download-rss-flat-${b}`,
      title: `download of a ${sizes} carve to curl: byte-exact, service RSS flat (peak - idle < ${DOWNLOAD_RSS_GROWTH_LIMIT / MB} MB in every run) (${b})`,
      informational: false,
      verdict: overall(checks),
      checks,
    });
  }
  return goals;
}
