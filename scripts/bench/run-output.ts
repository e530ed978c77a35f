/** The report of a benchmark run: Markdown on stdout and in <out>/latest.md, every figure in <out>/<time>.json. */
import { mkdir, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import type { DownloadBenchResult } from "./download.js";
import { downloadAccounting, downloadSummary, downloadTable } from "./download-report.js";
import { formatGoals } from "./goals.js";
import { formatProfileSummary, type ProfileSummary } from "./profile.js";
import { ROOT } from "./proc.js";
import { fmtSize, groupCases, markdownTable, MB, summaryTable, type CaseResult, type Goal } from "./report.js";
import type { TargetKind } from "./targets.js";

export const MONGO_NOTE =
  "GridFS runs against mongo-java-server (H2 backend, scripts/mongo-wire.sh) because FerretDB cannot be " +
  "installed here: its throughput is not MongoDB's.";

export interface RunOutput {
  values: Record<string, unknown> & { "log-level": string; "service-env": string[]; out: string; "no-write": boolean };
  repeat: number;
  matrixName: string;
  kinds: TargetKind[];
  runUploads: boolean;
  rows: CaseResult[];
  downloads: DownloadBenchResult | undefined;
  goals: Goal[];
  startedAt: Date;
  finishedAt: Date;
  source: { commit: string | null; uncommitted: string[] };
  profileRoot: string | null;
  serviceDist: string | undefined;
  serviceNodeArgs: string[];
  serviceEnv: Record<string, string>;
  /** Notes of this run (e.g. why a target was skipped). */
  extraNotes: string[];
  log: (line: string) => void;
}

export async function writeOutputs(o: RunOutput): Promise<void> {
  const {
    values,
    repeat,
    matrixName,
    kinds,
    runUploads,
    rows,
    downloads,
    goals,
    startedAt,
    finishedAt,
    source,
    profileRoot,
    serviceDist,
    serviceNodeArgs,
    serviceEnv,
    log,
  } = o;
  const args = process.argv.slice(2).join(" ");
  const command =
    process.env.npm_lifecycle_event === "bench"
      ? `npm run bench${args ? ` -- ${args}` : ""}`
      : `node ${path.relative(ROOT, process.argv[1] ?? "dist/scripts/bench/run.js")}${args ? ` ${args}` : ""}`;
  const notes = [
    ...(kinds.includes("gridfs") ? [MONGO_NOTE] : []),
    ...(runUploads
      ? [
          "Load driver (scripts/bench/load-driver.ts, its own process: pre-encoded block bodies, one keep-alive connection and one request in flight per agent), target and (GridFS) database share the machine's cores: svc/drv/db CPU = CPU seconds (utime + stime, /proc) / wall seconds of each (100% = one core).",
          "CPU us/block and ms/MiB: the target's CPU seconds in the timed run / acknowledged blocks (MiB); unlike throughput it barely moves with the machine's other load. CPU vs bare: the median against the bare server's median of the same case. 'paced by' is **driver** when the driver used at least as much CPU as the target (the target was then not what saturated). others' CPU: the whole machine's busy time (/proc/stat) minus target, driver and database (other users of the machine, and this process). spread: (max - min) / median over the runs.",
          ...(kinds.includes("gridfs")
            ? [
                "GridFS round trips: the service's messages to the database (wire counter in between, scripts/bench/wire-counter.ts; hello/ping monitoring excluded) / acknowledged blocks; by command in the JSON (dbCommands).",
              ]
            : []),
        ]
      : []),
    `Service source: commit ${source.commit?.slice(0, 12) ?? "?"}${source.uncommitted.length > 0 ? ` plus ${source.uncommitted.length} uncommitted paths in src/, conf/, package*.json (listed in the JSON)` : ""}.`,
    `MB = 10^6 bytes.${runUploads ? " Wall clock: first start request sent to last block reply received." : ""} 'load': the machine's 1-minute load average when the case started (other work on this shared machine shows there).`,
    ...(downloads
      ? [
          `Downloads: ${downloads.carveBytes} bytes (${fmtSize(downloads.carveBytes)})${downloads.gridfsCarveBytes !== null && downloads.gridfsCarveBytes !== downloads.carveBytes ? `, on GridFS ${downloads.gridfsCarveBytes} bytes (${fmtSize(downloads.gridfsCarveBytes)})` : ""} of random data, ${downloads.curlVersion.split(" ").slice(0, 2).join(" ")} on the same 2 cores; MB/s = bytes received / curl's time_total (request sent to last byte, Vault check included); TTFB = curl's time_starttransfer; svc CPU = the serving child's CPU seconds / curl's wall seconds (100% = one core). RSS of the serving child: idle = VmRSS before its first download (fresh child, one metadata request served), before = when curl starts, peak = VmHWM since a clear_refs reset plus 100 ms samples, after = when curl exits and 1 s later; flat means peak - idle < 64 MB in every run.`,
        ]
      : []),
    ...(runUploads && values["no-warmup"] !== true
      ? [
          "Warm-up: before the measured run every agent uploads one unmeasured carve (about 2000 blocks in all, 40 with 1 MiB blocks), so that JIT compilation of a fresh process is not counted as cost per block.",
        ]
      : []),
    ...(runUploads && values["no-warmup"] === true
      ? ["No warm-up (--no-warmup): a fresh process's JIT compilation is in the figures."]
      : []),
    ...o.extraNotes,
    ...(profileRoot !== null ? ["Children ran with node --cpu-prof: sampling overhead lowers their figures."] : []),
    ...(values["log-level"] !== "warn" ? [`Service LOG_LEVEL=${values["log-level"]}.`] : []),
    ...(serviceDist !== undefined ? [`Service build: ${serviceDist} (not this tree's dist/).`] : []),
    ...(serviceNodeArgs.length > 0 ? [`Service node options: ${serviceNodeArgs.join(" ")}.`] : []),
    ...(Object.keys(serviceEnv).length > 0 ? [`Service environment: ${values["service-env"].join(" ")}.`] : []),
  ];
  const failedGoals = goals.filter((g) => !g.informational && g.verdict === "MISS");
  const profileText = rows
    .filter((r) => r.profile)
    .map(
      (r) =>
        `### ${r.target}, ${fmtSize(r.blockSize)} blocks, ${r.agents} agents\n\n\`\`\`\n${formatProfileSummary(r.profile as ProfileSummary)}\n\`\`\``,
    )
    .join("\n\n");
  const uploadMd = runUploads
    ? [
        `## Summary (${repeat === 1 ? "1 run" : `${repeat} interleaved runs`} per case)`,
        "",
        summaryTable(groupCases(rows)),
        "",
        "## Every run",
        "",
        markdownTable(rows),
        "",
      ]
    : [];
  const downloadMd = downloads
    ? [
        `## Downloads: a ${fmtSize(downloads.carveBytes)} carve streamed to curl${downloads.gridfsCarveBytes !== null && downloads.gridfsCarveBytes !== downloads.carveBytes ? ` (GridFS: ${fmtSize(downloads.gridfsCarveBytes)})` : ""}`,
        "",
        ...downloads.setups.map(
          (s) =>
            `- ${s.target}: ${fmtSize(s.carveBytes)} carve ${s.carveId} uploaded by the agent emulator (1 MiB blocks) at ${s.uploadMBps.toFixed(1)} MB/s in ${(s.uploadWallMs / 1000).toFixed(1)} s; served by a fresh child (idle RSS ${(s.downloadServiceIdleRssBytes / MB).toFixed(1)} MB after the metadata request).`,
        ),
        ...downloadAccounting(downloads.setups, downloads.runs),
        `- Vault stand-in (scripts/bench/vault-stub.ts): ${downloads.vaultLookups.allowed} lookup-self answered for the whole download run (decisions are cached 30 s), ${downloads.vaultLookups.refused} refused.`,
        "",
        downloadSummary(downloads.runs),
        "",
        downloadTable(downloads.runs, downloads.slowReader),
        "",
      ]
    : ["## Downloads", "", "- not run (--skip-downloads)", ""];
  const md = [
    `# Carve benchmark, ${startedAt.toISOString()} (${matrixName} matrix${runUploads ? "" : ", downloads only"})`,
    "",
    `\`${command}\` on ${os.cpus().length} x ${os.cpus()[0]?.model ?? "?"}, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB RAM, node ${process.version}, ${Math.round((finishedAt.getTime() - startedAt.getTime()) / 1000)} s.`,
    "",
    ...notes.map((n) => `- ${n}`),
    "",
    ...uploadMd,
    ...downloadMd,
    "## Goals",
    "",
    formatGoals(goals),
    "",
    `Overall: ${failedGoals.length === 0 ? "PASS" : `MISS (${failedGoals.map((g) => g.id).join(", ")})`}`,
    ...(profileText ? ["", "## CPU profiles", "", profileText] : []),
    "",
  ].join("\n");

  process.stdout.write(`\n${md}`);

  if (!values["no-write"]) {
    const outDir = path.resolve(ROOT, values.out);
    await mkdir(outDir, { recursive: true });
    const jsonFile = path.join(outDir, `${startedAt.toISOString().replace(/:/g, "-")}.json`);
    const json = {
      startedAt: startedAt.toISOString(),
      finishedAt: finishedAt.toISOString(),
      mode: matrixName,
      command,
      machine: {
        cpus: os.cpus().length,
        cpuModel: os.cpus()[0]?.model ?? null,
        totalMemBytes: os.totalmem(),
        node: process.version,
        platform: `${os.type()} ${os.release()}`,
      },
      options: { ...values, repeat },
      source,
      notes,
      units: {
        throughput: "MB/s (10^6 bytes of decoded carve data per second)",
        downloadThroughput: "MB/s (10^6 bytes received by curl per second of curl's time_total)",
        rss: "bytes",
        latency: "ms",
      },
      cases: rows,
      goals,
      overall: failedGoals.length === 0 ? "PASS" : "MISS",
      downloads: downloads ?? null,
      ...(profileRoot !== null ? { profileDir: profileRoot } : {}),
    };
    await writeFile(jsonFile, `${JSON.stringify(json, null, 2)}\n`);
    const mdFile = path.join(outDir, runUploads ? "latest.md" : "latest-downloads.md");
    await writeFile(mdFile, md);
    log(`\nwrote ${path.relative(ROOT, jsonFile)} and ${path.relative(ROOT, mdFile)}`);
  }
}
