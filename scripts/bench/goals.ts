/** Goal verdicts of the upload cases (issues 3, 7 and 16). */
import {
  f,
  fmtSize,
  groupCases,
  MB,
  MiB,
  overall,
  type CaseGroup,
  type CaseResult,
  type Goal,
  type GoalCheck,
} from "./report.js";
import type { TargetKind } from "./targets.js";

const RSS_LIMIT = 150 * MB;

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
  goals.push(...cpuGoals(groups, backends));
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

/**
 * The goals of issue 16 (cost per block), on medians of the same run: 8 KiB blocks CPU per block <= 1.5 x the
 * bare server's and blocks/s >= the Go server's; 1 MiB blocks CPU per MiB <= 2.5 x the bare server's; peak
 * RSS < 100 MB with 50 agents (filesystem). GridFS is informational (mongo-java-server, not MongoDB).
 */
function cpuGoals(groups: CaseGroup[], backends: TargetKind[]): Goal[] {
  const goals: Goal[] = [];
  const ref = (g: CaseGroup, target: TargetKind): CaseGroup | undefined =>
    groups.find((b) => b.target === target && b.blockSize === g.blockSize && b.agents === g.agents);
  const subject = (g: CaseGroup): string => `${g.target}, ${fmtSize(g.blockSize)} blocks, ${g.agents} agents`;
  const push = (id: string, title: string, informational: boolean, checks: GoalCheck[]): void => {
    goals.push({ id, title, informational, verdict: overall(checks), checks });
  };
  for (const b of backends) {
    const info = b === "gridfs";
    const mine = groups.filter((g) => g.target === b);
    const small = mine.filter((g) => g.blockSize < MiB);
    const big = mine.filter((g) => g.blockSize >= MiB);
    const ratioCheck = (g: CaseGroup, perMiB: boolean, max: number): GoalCheck => {
      const bare = ref(g, "bare");
      if (g.failed) return { subject: subject(g), value: "carves failed", verdict: "MISS" };
      if (!bare) return { subject: subject(g), value: "no bare run", verdict: "n/a" };
      const x = perMiB
        ? g.medianCpuMsPerMiB / bare.medianCpuMsPerMiB
        : g.medianCpuUsPerBlock / bare.medianCpuUsPerBlock;
      const v = perMiB
        ? `${f(g.medianCpuMsPerMiB, 2)} ms/MiB vs bare ${f(bare.medianCpuMsPerMiB, 2)}`
        : `${f(g.medianCpuUsPerBlock, 0)} us/block vs bare ${f(bare.medianCpuUsPerBlock, 0)}`;
      return {
        subject: subject(g),
        value: `${v}: ${x.toFixed(2)}x (need <= ${max})`,
        verdict: x <= max ? "PASS" : "MISS",
      };
    };
    push(
      `16-cpu-8KiB-${b}`,
      `issue 16: 8 KiB blocks, ${b} CPU per block <= 1.5 x bare`,
      info,
      small.map((g) => ratioCheck(g, false, 1.5)),
    );
    push(
      `16-cpu-1MiB-${b}`,
      `issue 16: 1 MiB blocks, ${b} CPU per MiB <= 2.5 x bare`,
      info,
      big.map((g) => ratioCheck(g, true, 2.5)),
    );
    push(
      `16-blocks-vs-go-${b}`,
      `issue 16: 8 KiB blocks, ${b} blocks/s >= the Go server's`,
      info,
      small.map((g): GoalCheck => {
        const go = ref(g, "go");
        if (!go) return { subject: subject(g), value: "no Go run", verdict: "n/a" };
        const x = g.medianBlocksPerSec / go.medianBlocksPerSec;
        return {
          subject: subject(g),
          value: `${f(g.medianBlocksPerSec, 0)} vs Go ${f(go.medianBlocksPerSec, 0)} blocks/s: ${x.toFixed(2)}x (need >= 1)`,
          verdict: !g.failed && x >= 1 ? "PASS" : "MISS",
        };
      }),
    );
    if (b === "filesystem") {
      push(
        "16-rss-50-agents",
        "issue 16: peak RSS < 100 MB with 50 agents (filesystem)",
        false,
        mine
          .filter((g) => g.agents === 50)
          .map((g) => ({
            subject: subject(g),
            value: `${f(g.maxPeakRssBytes / MB)} MB (need < 100)`,
            verdict: !g.failed && g.maxPeakRssBytes < 100 * MB ? "PASS" : "MISS",
          })),
      );
    }
    if (b === "gridfs") {
      push(
        "16-gridfs-round-trips",
        "issue 16: GridFS at most 2 database round trips per block",
        true,
        mine.map((g) => ({
          subject: subject(g),
          value:
            g.medianDbRoundTripsPerBlock === null
              ? "not counted"
              : `${f(g.medianDbRoundTripsPerBlock, 2)} per block (need <= 2)`,
          verdict: g.medianDbRoundTripsPerBlock === null ? "n/a" : g.medianDbRoundTripsPerBlock <= 2 ? "PASS" : "MISS",
        })),
      );
    }
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
