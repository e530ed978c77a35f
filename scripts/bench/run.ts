/**
 * npm run bench: drives the real carve service (each backend) and a bare Node HTTP server with the same
 * simulated osquery agents, and compares them.
 *
 *   npm run bench -- [--backend filesystem|gridfs|all] [--quick] [--out bench/results]
 *                    [--agents 1,10,50] [--block-sizes 8KiB,1MiB] [--repeat N] [--skip-bare]
 *                    [--log-level warn] [--node-args="..."] [--service-env K=V] [--cpu-prof [--cpu-prof-dir DIR]]
 *                    [--only-downloads | --skip-downloads] [--download-size 1GiB] [--gridfs-download-size SIZE]
 *                    [--slow-reader 16M:8|off]
 *                    [--service-dist DIR] [--no-write]
 *
 * Per case (block size x agents x target) a fresh child process on a free port: the service
 * (dist/src/main.js, copied to a tmp directory at start so a concurrent rebuild cannot change it mid-run;
 * built-in defaults plus CARVE_* variables, no configuration file) with a fresh data directory or MongoDB
 * database, or the bare server (dist/scripts/bench/bare-server.js). The full matrix runs each case 3 times,
 * interleaved with the bare server, and judges the goals on median ratios and the largest peak RSS. N agents
 * upload N carves (fresh carve ids) of one random source file at once through the agent emulator
 * (scripts/emulator, runCarve), each over its own keep-alive connection. Reported per case: MB/s of carve
 * data (10^6 bytes; wall clock from the first start request to the last block reply), blocks/s, requests/s,
 * p50/p99 block latency, the child's peak RSS (VmHWM at the end, VmRSS sampled every 100 ms), CPU of the
 * child and of the driver, every carve SUCCESS and verified byte-exact (filesystem: sha256 of
 * carves/<id>.tar; GridFS: length and metadata.sha256 of the carves.files document), and the ratio to the
 * bare server (throughput for 1 MiB blocks, requests/s for smaller ones).
 *
 * GridFS runs against scripts/mongo-wire.sh (mongo-java-server, H2 backend; FerretDB cannot be installed
 * here), so its figures are that server's, not MongoDB's.
 *
 * Downloads (scripts/bench/download.ts; after the upload matrix, or alone with --only-downloads): per backend
 * one carve of --download-size (default 1 GiB = 2^30 bytes, --quick 64 MiB) of random data is uploaded
 * through the agent emulator (1 agent, 1 MiB blocks), then a fresh service child on the same storage serves
 * it to the real curl as a responder fetches it (GET /api/v1/carves/<id>/archive, X-Vault-Token checked
 * against scripts/bench/vault-stub.ts): --repeat timed runs to /dev/null interleaved with the bare server
 * streaming the same file (fs.createReadStream piped to the response), one run hashed (bytes and SHA-256
 * must match) and one slow reader (curl --limit-rate/--max-time, --slow-reader). Reported: MB/s (curl's
 * time_total), ratio to bare, and the child's RSS idle (before its first download), before, peak during
 * (VmHWM reset by clear_refs, plus 100 ms samples), right after and 1 s after each download; the goal is a
 * flat RSS: peak - idle < 64 MB in every run.
 * --gridfs-download-size (default: --download-size) sets another carve size for GridFS (uploading it through
 * mongo-java-server is the slow part).
 *
 * Writes <out>/<ISO timestamp, ':' as '-'>.json and <out>/latest.md (<out>/latest-downloads.md with
 * --only-downloads, so a download-only run does not replace the last upload results); exit code 1 if any
 * carve or download failed its checks.
 */
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";

import { runDownloadBench, type DownloadBenchResult, type SlowReader } from "./download.js";
import { driveAgents } from "./driver.js";
import { formatProfileSummary, summarizeProfileFile, type ProfileSummary } from "./profile.js";
import { readCpuSeconds, readMemory, ROOT, RssSampler } from "./proc.js";
import {
  computeRatios,
  downloadAccounting,
  downloadSummary,
  downloadTable,
  evaluateDownloadGoals,
  evaluateGoals,
  GiB,
  groupCases,
  summaryTable,
  fmtSize,
  formatGoals,
  KiB,
  markdownTable,
  MB,
  MiB,
  ratioMetricFor,
  type CaseResult,
} from "./report.js";
import {
  makeSourceFile,
  sha256OfFile,
  snapshotBuild,
  startMongoWire,
  startTarget,
  type BuildSnapshot,
  type MongoWire,
  type TargetKind,
} from "./targets.js";

interface CaseDef {
  blockSize: number;
  agents: number;
  carveBytes: number;
}

/** Full matrix: about 2.3 GB of carve data per target, bounded so a full run takes ~10-15 minutes here. */
const FULL: CaseDef[] = [
  { blockSize: MiB, agents: 1, carveBytes: 100 * MiB },
  { blockSize: MiB, agents: 10, carveBytes: 100 * MiB },
  { blockSize: MiB, agents: 50, carveBytes: 20 * MiB },
  { blockSize: 8 * KiB, agents: 1, carveBytes: 8 * MiB },
  { blockSize: 8 * KiB, agents: 10, carveBytes: 8 * MiB },
  { blockSize: 8 * KiB, agents: 50, carveBytes: 2 * MiB },
];

/** Smoke run (about a minute): the same shape, small carves. */
const QUICK: CaseDef[] = [
  { blockSize: MiB, agents: 1, carveBytes: 8 * MiB },
  { blockSize: MiB, agents: 10, carveBytes: 4 * MiB },
  { blockSize: MiB, agents: 50, carveBytes: 1 * MiB },
  { blockSize: 8 * KiB, agents: 1, carveBytes: 1 * MiB },
  { blockSize: 8 * KiB, agents: 10, carveBytes: 512 * KiB },
  { blockSize: 8 * KiB, agents: 50, carveBytes: 128 * KiB },
];

const MONGO_NOTE =
  "GridFS runs against mongo-java-server (H2 backend, scripts/mongo-wire.sh) because FerretDB cannot be " +
  "installed here: its throughput is not MongoDB's.";

const USAGE = `npm run bench -- [options]
  --backend filesystem|gridfs|all   service backends to run (default all); the bare server always runs
  --quick                           small matrix, a smoke run of about a minute
  --out DIR                         results directory (default bench/results)
  --agents LIST                     only these agent counts (e.g. 10,50)
  --block-sizes LIST                only these block sizes (e.g. 8KiB,1MiB)
  --repeat N                        run every case N times, interleaved (default 3, --quick 1); goals use
                                    the median ratio and the largest peak RSS over the runs
  --skip-bare                       do not run the bare server (no ratios)
  --log-level LEVEL                 the service's LOG_LEVEL (default warn)
  --node-args="ARGS"                extra node options for the service children (e.g. "--max-old-space-size=64")
  --service-dist DIR                measure another compiled service: DIR/src/main.js (default dist)
  --service-env K=V                 extra environment of the service children (repeatable, e.g. MALLOC_ARENA_MAX=2)
  --cpu-prof                        run the children with node --cpu-prof and print their hottest functions
  --cpu-prof-dir DIR                where the .cpuprofile files go (default: a new directory in the tmp dir)
  --no-write                        print only, write no results files
  --only-downloads                  run only the download benchmark (no upload matrix); writes
                                    latest-downloads.md instead of latest.md
  --skip-downloads                  run only the upload matrix
  --download-size SIZE              carve size of the download benchmark (default 1GiB, --quick 64MiB)
  --gridfs-download-size SIZE       carve size on GridFS (default: --download-size)
  --slow-reader RATE:SECONDS|off    slow-reader download: curl --limit-rate RATE --max-time SECONDS
                                    (default 16M:8, --quick 8M:2)
`;

function parseSize(s: string): number {
  const m = /^(\d+)\s*(k|kib|m|mib|g|gib)?$/i.exec(s.trim());
  if (!m?.[1]) throw new Error(`not a size: ${s}`);
  const n = Number(m[1]);
  const unit = (m[2] ?? "").toLowerCase();
  return unit.startsWith("k") ? n * KiB : unit.startsWith("m") ? n * MiB : unit.startsWith("g") ? n * GiB : n;
}

function parseSlowReader(s: string): SlowReader | null {
  if (s === "off") return null;
  const m = /^(\d+[kKmMgG]?):(\d+)$/.exec(s.trim());
  if (!m?.[1] || !m[2] || Number(m[2]) < 1)
    throw new Error(`--slow-reader expects RATE:SECONDS (e.g. 16M:8) or off, not ${s}`);
  return { rate: m[1], seconds: Number(m[2]) };
}

function parseList<T>(value: string | undefined, parse: (s: string) => T): T[] | undefined {
  if (value === undefined) return undefined;
  return value
    .split(",")
    .filter((s) => s.trim() !== "")
    .map(parse);
}

/** The commit and uncommitted files the measured build came from (others edit the tree concurrently). */
function sourceState(): { commit: string | null; uncommitted: string[] } {
  const git = (args: string[]): string | null => {
    try {
      return execFileSync("git", args, { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    } catch {
      return null;
    }
  };
  const commit = git(["rev-parse", "HEAD"])?.trim() ?? null;
  const status = git(["status", "--porcelain", "--", "src", "conf", "package.json", "package-lock.json"]) ?? "";
  return { commit, uncommitted: status.split("\n").filter((l) => l.trim() !== "") };
}

const cleanups = new Set<() => Promise<void>>();
async function cleanupAll(): Promise<void> {
  for (const c of [...cleanups].reverse()) {
    cleanups.delete(c);
    await c().catch(() => undefined);
  }
}

function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

async function newestProfile(dir: string): Promise<string | null> {
  try {
    const files = (await readdir(dir)).filter((f) => f.endsWith(".cpuprofile")).sort();
    const last = files[files.length - 1];
    return last === undefined ? null : path.join(dir, last);
  } catch {
    return null;
  }
}

async function runCase(opts: {
  def: CaseDef;
  kind: TargetKind;
  rep: number;
  archivePath: string;
  sourceSha256: string;
  tmpRoot: string;
  build: BuildSnapshot;
  logLevel: string;
  mongo: MongoWire | undefined;
  profileDir: string | null;
  serviceNodeArgs: string[];
  serviceEnv: Record<string, string>;
}): Promise<CaseResult> {
  const { def, kind } = opts;
  const nodeArgs = [
    ...(kind === "bare" ? [] : opts.serviceNodeArgs),
    ...(opts.profileDir !== null ? ["--cpu-prof", `--cpu-prof-dir=${opts.profileDir}`] : []),
  ];
  const target = await startTarget(kind, {
    tmpRoot: opts.tmpRoot,
    build: opts.build,
    logLevel: opts.logLevel,
    nodeArgs,
    serviceEnv: opts.serviceEnv,
    ...(opts.mongo ? { mongo: opts.mongo } : {}),
  });
  const dispose = (): Promise<void> => target.dispose();
  cleanups.add(dispose);
  try {
    const pid = target.child.pid;
    const idle = await readMemory(pid);
    const loadavg1 = os.loadavg()[0] ?? 0;
    const sampler = new RssSampler(pid, 100);
    sampler.start();
    const cpu0 = (await readCpuSeconds(pid)) ?? 0;
    const dbPid = kind === "gridfs" ? (opts.mongo?.pid ?? null) : null;
    const db0 = dbPid !== null ? await readCpuSeconds(dbPid) : null;
    const drive = await driveAgents({
      baseUrl: target.child.url,
      archivePath: opts.archivePath,
      blockSize: def.blockSize,
      agents: def.agents,
      carveBytes: def.carveBytes,
    });
    const mem = await readMemory(pid);
    const cpu1 = (await readCpuSeconds(pid)) ?? cpu0;
    const db1 = dbPid !== null ? await readCpuSeconds(dbPid) : null;
    sampler.stop();

    const failures: string[] = [...drive.errors];
    const exitCode = target.child.proc.exitCode;
    const exitSignal = target.child.proc.signalCode;
    if (exitCode !== null || exitSignal !== null) {
      failures.push(`the ${kind} process died during the case (exit ${String(exitCode ?? exitSignal)})`);
    }
    let ok = 0;
    for (const c of drive.carves) {
      if (c.status !== "SUCCESS") {
        const bad = c.requests.find((r) => !r.ok);
        failures.push(
          `${c.carveId}: ${c.status}${bad ? ` (${bad.kind} ${String(bad.blockId)}: ${bad.error ?? bad.body})` : ""}`,
        );
        continue;
      }
      if (c.sha256 !== opts.sourceSha256 || c.carveSize !== def.carveBytes) {
        failures.push(`${c.carveId}: the emulator read a different archive`);
        continue;
      }
      const v = await target.verify(c.carveId, opts.sourceSha256, def.carveBytes);
      if (v.ok) ok++;
      else failures.push(v.detail ?? `${c.carveId}: not verified`);
    }
    if (failures.length > 0) {
      log(`  child output (last lines):\n    ${target.child.tail().slice(-15).join("\n    ")}`);
    }
    cleanups.delete(dispose);
    await dispose();

    let profile: ProfileSummary | undefined;
    if (opts.profileDir !== null) {
      const file = await newestProfile(opts.profileDir);
      if (file) profile = await summarizeProfileFile(file, 25);
      else log(`  no .cpuprofile written in ${opts.profileDir}`);
    }

    const wallS = drive.wallMs / 1000;
    const total = def.carveBytes * def.agents;
    const vmHwm = mem?.hwm ?? 0;
    return {
      target: kind,
      blockSize: def.blockSize,
      agents: def.agents,
      carveBytesPerAgent: def.carveBytes,
      totalBytes: total,
      rep: opts.rep,
      wallMs: Math.round(drive.wallMs * 10) / 10,
      // Acknowledged bytes: equal to the total when every carve succeeded.
      throughputMBps: drive.ackedBytes / MB / wallS,
      blocksPerSec: drive.blocks / wallS,
      requestsPerSec: drive.requests / wallS,
      blockLatencyMs: drive.blockLatencyMs,
      peakRssBytes: Math.max(vmHwm, sampler.maxRss),
      vmHwmBytes: vmHwm,
      idleRssBytes: idle?.rss ?? 0,
      sampledMaxRssBytes: sampler.maxRss,
      rssSamples: sampler.samples,
      rssTimeline: sampler.timeline,
      serviceCpuSeconds: cpu1 - cpu0,
      serviceCpuPercent: (100 * (cpu1 - cpu0)) / wallS,
      driverCpuPercent: drive.driverCpuMs / 10 / wallS,
      dbCpuPercent: db0 !== null && db1 !== null ? (100 * (db1 - db0)) / wallS : null,
      requests: drive.requests,
      failedExchanges: drive.failedExchanges,
      carvesTotal: def.agents,
      carvesOk: ok,
      failures,
      loadavg1,
      ratioToBare: null,
      ratioMetric: ratioMetricFor(def.blockSize),
      ...(profile ? { profile } : {}),
    };
  } catch (err) {
    log(`  child output (last lines):\n    ${target.child.tail().slice(-15).join("\n    ")}`);
    throw err;
  } finally {
    if (cleanups.has(dispose)) {
      cleanups.delete(dispose);
      await dispose().catch(() => undefined);
    }
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      backend: { type: "string", default: "all" },
      quick: { type: "boolean", default: false },
      out: { type: "string", default: "bench/results" },
      agents: { type: "string" },
      "block-sizes": { type: "string" },
      repeat: { type: "string" },
      "skip-bare": { type: "boolean", default: false },
      "log-level": { type: "string", default: "warn" },
      "node-args": { type: "string", default: "" },
      "service-dist": { type: "string" },
      "service-env": { type: "string", multiple: true, default: [] },
      "cpu-prof": { type: "boolean", default: false },
      "cpu-prof-dir": { type: "string" },
      "no-write": { type: "boolean", default: false },
      "only-downloads": { type: "boolean", default: false },
      "skip-downloads": { type: "boolean", default: false },
      "download-size": { type: "string" },
      "gridfs-download-size": { type: "string" },
      "slow-reader": { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const backends: TargetKind[] =
    values.backend === "all"
      ? ["filesystem", "gridfs"]
      : values.backend === "filesystem" || values.backend === "gridfs"
        ? [values.backend]
        : [];
  if (backends.length === 0) throw new Error(`--backend must be filesystem, gridfs or all, not ${values.backend}`);
  // The machine is shared and noisy: the full matrix runs every case 3 times (goals use medians).
  const repeat = Number(values.repeat ?? (values.quick ? 1 : 3));
  if (!Number.isInteger(repeat) || repeat < 1) throw new Error(`--repeat must be a positive integer`);
  const agentFilter = parseList(values.agents, Number);
  const sizeFilter = parseList(values["block-sizes"], parseSize);
  const matrix = (values.quick ? QUICK : FULL).filter(
    (c) => (!agentFilter || agentFilter.includes(c.agents)) && (!sizeFilter || sizeFilter.includes(c.blockSize)),
  );
  if (values["only-downloads"] && values["skip-downloads"])
    throw new Error("--only-downloads and --skip-downloads exclude each other");
  const runUploads = !values["only-downloads"];
  const runDownloads = !values["skip-downloads"];
  if (runUploads && matrix.length === 0) throw new Error("no case left after --agents / --block-sizes");
  const downloadBytes = parseSize(values["download-size"] ?? (values.quick ? "64MiB" : "1GiB"));
  if (downloadBytes < 1) throw new Error("--download-size must be at least 1 byte");
  const gridfsDownloadBytes =
    values["gridfs-download-size"] !== undefined ? parseSize(values["gridfs-download-size"]) : downloadBytes;
  if (gridfsDownloadBytes < 1) throw new Error("--gridfs-download-size must be at least 1 byte");
  const slowReader = parseSlowReader(values["slow-reader"] ?? (values.quick ? "8M:2" : "16M:8"));
  const serviceEnv: Record<string, string> = {};
  for (const kv of values["service-env"]) {
    const eq = kv.indexOf("=");
    if (eq <= 0) throw new Error(`--service-env expects NAME=VALUE, not ${kv}`);
    serviceEnv[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const serviceNodeArgs = values["node-args"].split(/\s+/).filter((a) => a !== "");
  const kinds: TargetKind[] = [...(values["skip-bare"] ? [] : (["bare"] as TargetKind[])), ...backends];

  const startedAt = new Date();
  const source = sourceState();
  const tmpRoot = await mkdtemp(path.join(os.tmpdir(), "carve-bench-"));
  cleanups.add(() => rm(tmpRoot, { recursive: true, force: true }));
  const onSignal = (sig: NodeJS.Signals): void => {
    log(`\n${sig}: cleaning up`);
    void cleanupAll().finally(() => process.exit(130));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);

  let profileRoot: string | null = null;
  if (values["cpu-prof"]) {
    profileRoot = path.resolve(
      values["cpu-prof-dir"] ??
        path.join(os.tmpdir(), `carve-bench-prof-${startedAt.toISOString().replace(/:/g, "-")}`),
    );
    await mkdir(profileRoot, { recursive: true });
  }

  log(
    `carve benchmark (${values.quick ? "quick" : "full"}): targets ${kinds.join(", ")}; ` +
      (runUploads ? `${matrix.length} upload cases x ${repeat}` : "no upload cases") +
      (runDownloads
        ? `; downloads of a ${fmtSize(downloadBytes)} carve${backends.includes("gridfs") && gridfsDownloadBytes !== downloadBytes ? ` (GridFS ${fmtSize(gridfsDownloadBytes)})` : ""} x ${repeat}`
        : "; no downloads"),
  );
  log(
    `machine: ${os.cpus().length} x ${os.cpus()[0]?.model ?? "?"}, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB, node ${process.version}, load ${os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`,
  );

  const serviceDist = values["service-dist"] !== undefined ? path.resolve(values["service-dist"]) : undefined;
  const build = await snapshotBuild(path.join(tmpRoot, "build"), serviceDist);

  // Source files: one random file per carve size, shared by all agents of a case.
  const sources = new Map<number, { file: string; sha256: string }>();
  for (const size of new Set(runUploads ? matrix.map((c) => c.carveBytes) : [])) {
    const file = path.join(tmpRoot, `source-${size}.bin`);
    await makeSourceFile(file, size);
    sources.set(size, { file, sha256: await sha256OfFile(file) });
  }

  let mongo: MongoWire | undefined;
  if (kinds.includes("gridfs")) {
    log(`starting the MongoDB-wire server: ${MONGO_NOTE}`);
    mongo = await startMongoWire(tmpRoot);
    const m = mongo;
    cleanups.add(() => m.stop());
  }

  const rows: CaseResult[] = [];
  for (const def of runUploads ? matrix : []) {
    const src = sources.get(def.carveBytes);
    if (!src) throw new Error("missing source file");
    for (let rep = 0; rep < repeat; rep++) {
      for (const kind of kinds) {
        const name = `${kind}-${fmtSize(def.blockSize).replace(" ", "")}-${def.agents}a${repeat > 1 ? `-r${rep + 1}` : ""}`;
        const profileDir = profileRoot !== null ? path.join(profileRoot, name) : null;
        const r = await runCase({
          def,
          kind,
          rep,
          archivePath: src.file,
          sourceSha256: src.sha256,
          tmpRoot,
          build,
          logLevel: values["log-level"],
          mongo,
          profileDir,
          serviceNodeArgs,
          serviceEnv,
        });
        rows.push(r);
        log(
          `${name.padEnd(24)} ${(r.throughputMBps.toFixed(1) + " MB/s").padStart(12)} ${(r.requestsPerSec.toFixed(0) + " req/s").padStart(12)}` +
            ` p50 ${r.blockLatencyMs.p50.toFixed(2)} ms p99 ${r.blockLatencyMs.p99.toFixed(2)} ms` +
            ` RSS ${(r.peakRssBytes / MB).toFixed(1)} MB cpu svc ${r.serviceCpuPercent.toFixed(0)}% drv ${r.driverCpuPercent.toFixed(0)}%` +
            ` carves ${r.carvesOk}/${r.carvesTotal}${r.failures.length ? ` FAIL: ${r.failures.slice(0, 3).join("; ")}` : ""}`,
        );
      }
    }
  }
  // The upload sources are not needed any more: free their disk before the download's big carve.
  for (const src of sources.values()) await rm(src.file, { force: true });

  let downloads: DownloadBenchResult | undefined;
  if (runDownloads) {
    log(
      `downloads: ${fmtSize(downloadBytes)} carve${backends.includes("gridfs") ? ` (GridFS ${fmtSize(gridfsDownloadBytes)})` : ""}, targets ${kinds.join(", ")}; ${repeat} timed run(s) each, one verified, ` +
        (slowReader
          ? `one slow reader (--limit-rate ${slowReader.rate}, --max-time ${slowReader.seconds})`
          : "no slow reader"),
    );
    downloads = await runDownloadBench({
      backends: backends.filter((b): b is "filesystem" | "gridfs" => b !== "bare"),
      includeBare: kinds.includes("bare"),
      carveBytes: downloadBytes,
      gridfsCarveBytes: gridfsDownloadBytes,
      repeat,
      slowReader,
      tmpRoot,
      build,
      logLevel: values["log-level"],
      mongo,
      serviceNodeArgs,
      serviceEnv,
      cleanups,
      log,
    });
  }

  computeRatios(rows);
  const goals = [
    ...(runUploads ? evaluateGoals(rows, backends) : []),
    ...(downloads ? evaluateDownloadGoals(downloads.runs, backends) : []),
  ];
  const finishedAt = new Date();

  const args = process.argv.slice(2).join(" ");
  const command =
    process.env.npm_lifecycle_event === "bench"
      ? `npm run bench${args ? ` -- ${args}` : ""}`
      : `node ${path.relative(ROOT, process.argv[1] ?? "dist/scripts/bench/run.js")}${args ? ` ${args}` : ""}`;
  const notes = [
    ...(kinds.includes("gridfs") ? [MONGO_NOTE] : []),
    ...(runUploads
      ? [
          "Driver (simulated agents), server and (GridFS) database share the 2 cores: svc/drv/db CPU = CPU seconds / wall seconds of each (100% = one core).",
        ]
      : []),
    `Service source: commit ${source.commit?.slice(0, 12) ?? "?"}${source.uncommitted.length > 0 ? ` plus ${source.uncommitted.length} uncommitted paths in src/, conf/, package*.json (listed in the JSON)` : ""}.`,
    `MB = 10^6 bytes.${runUploads ? " Wall clock: first start request sent to last block reply received." : ""} 'load': the machine's 1-minute load average when the case started (other work on this shared machine shows there).`,
    ...(downloads
      ? [
          `Downloads: ${downloads.carveBytes} bytes (${fmtSize(downloads.carveBytes)})${downloads.gridfsCarveBytes !== null && downloads.gridfsCarveBytes !== downloads.carveBytes ? `, on GridFS ${downloads.gridfsCarveBytes} bytes (${fmtSize(downloads.gridfsCarveBytes)})` : ""} of random data, ${downloads.curlVersion.split(" ").slice(0, 2).join(" ")} on the same 2 cores; MB/s = bytes received / curl's time_total (request sent to last byte, Vault check included); TTFB = curl's time_starttransfer; svc CPU = the serving child's CPU seconds / curl's wall seconds (100% = one core). RSS of the serving child: idle = VmRSS before its first download (fresh child, one metadata request served), before = when curl starts, peak = VmHWM since a clear_refs reset plus 100 ms samples, after = when curl exits and 1 s later; flat means peak - idle < 64 MB in every run.`,
        ]
      : []),
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
        ...(repeat > 1
          ? [
              `## Summary (${repeat} interleaved runs per case)`,
              "",
              summaryTable(groupCases(rows)),
              "",
              "## Every run",
              "",
            ]
          : []),
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
    `# Carve benchmark, ${startedAt.toISOString()} (${values.quick ? "quick" : "full"} matrix${runUploads ? "" : ", downloads only"})`,
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
      mode: values.quick ? "quick" : "full",
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
  if (profileRoot !== null)
    log(`cpu profiles in ${profileRoot} (summarize one: node dist/scripts/bench/profile.js FILE)`);

  await cleanupAll();
  const downloadFailed = downloads?.runs.some((r) => !r.ok) ?? false;
  return rows.some((r) => r.carvesOk !== r.carvesTotal) || downloadFailed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  async (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    await cleanupAll();
    process.exit(1);
  },
);
