/** Tables and goal verdicts of the download benchmark (scripts/bench/download.ts). */
import { f, fmtSize, MB, median, overall, type Goal, type GoalCheck } from "./report.js";
import type { TargetKind } from "./targets.js";

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
