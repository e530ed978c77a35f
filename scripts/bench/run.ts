/**
 * npm run bench: (--scenario catalog-scale: the catalog at scale, scripts/bench/catalog-scale.ts) drives the real carve service (each backend), a bare Node HTTP server and a Go carve server
 * of the kind osquery users run today with the same simulated osquery agents, and compares them.
 *
 *   npm run bench -- [--backend filesystem|gridfs|all] [--matrix full|quick|cpu] [--quick] [--out bench/results]
 *                    [--agents 1,10,50] [--block-sizes 8KiB,1MiB] [--repeat N] [--skip-bare] [--skip-go] [--no-warmup]
 *                    [--log-level warn] [--node-args="..."] [--service-env K=V] [--cpu-prof [--cpu-prof-dir DIR]]
 *                    [--only-downloads | --skip-downloads] [--download-size 1GiB] [--gridfs-download-size SIZE]
 *                    [--slow-reader 16M:8|off]
 *                    [--service-dist DIR] [--no-write]
 *
 * Per case (block size x agents x target) a fresh child process on a free port: the service
 * (dist/src/main.js, copied to a tmp directory at start so a concurrent rebuild cannot change it mid-run;
 * built-in defaults plus CARVE_* variables, no configuration file) with a fresh data directory or MongoDB
 * database, the bare server (dist/scripts/bench/bare-server.js) or the Go server (scripts/bench/go-server.ts
 * builds scripts/bench/go-carve-server with the local `go`; skipped with a message when there is none).
 * Every case runs --repeat times, interleaved across the targets, and the summary takes medians. The load
 * (scripts/bench/load-driver.ts, its own process): N agents upload N carves (fresh carve ids) of one random
 * source file at once, each a sequential sender on its own keep-alive connection, with block bodies
 * pre-encoded so the driver stays light. Reported per case (scripts/bench/upload-case.ts): the target's CPU
 * (utime + stime from /proc) per block and per MiB, MB/s of carve data (10^6 bytes; wall clock from the first
 * start request to the last block reply), blocks/s, p50/p99 block latency, the child's peak RSS (VmHWM at the
 * end, VmRSS sampled every 100 ms), the CPU of the driver (and whether it, rather than the target, set the
 * pace), of the database (GridFS) and of the rest of the machine, GridFS database round trips per block
 * (scripts/bench/wire-counter.ts), every carve verified byte-exact (filesystem and Go: sha256 of the stored
 * file; GridFS: length and metadata.sha256 of the carves.files document), and the ratio to the bare server.
 *
 * GridFS runs against scripts/mongo-wire.sh (mongo-java-server, H2 backend; FerretDB cannot be installed
 * here), so its figures are that server's, not MongoDB's.
 *
 * Downloads (scripts/bench/download.ts; after the upload matrix, or alone with --only-downloads): per backend
 * one carve of --download-size (default 1 GiB = 2^30 bytes, --quick 64 MiB) of random data is uploaded
 * through the agent emulator (1 agent, 1 MiB blocks), then a fresh service child on the same storage serves
 * it to the real curl as a responder fetches it (GET /api/v1/carves/<id>/archive, X-Vault-Token checked
 * against scripts/bench/vault-stub.ts): --repeat timed runs to /dev/null interleaved with the bare server
 * streaming the same file, one run hashed (bytes and SHA-256 must match) and one slow reader
 * (--slow-reader). Reported: MB/s, ratio to bare, and the child's RSS idle, before, peak during, right after
 * and 1 s after each download; the goal is a flat RSS: peak - idle < 64 MB in every run.
 *
 * Writes <out>/<ISO timestamp, ':' as '-'>.json and <out>/latest.md (<out>/latest-downloads.md with
 * --only-downloads) under bench/results by default, which git ignores; exit code 1 if any carve or download
 * failed its checks.
 */
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";

import { catalogScaleCli } from "./catalog-scale.js";
import { runDownloadBench, type DownloadBenchResult, type SlowReader } from "./download.js";
import { evaluateDownloadGoals } from "./download-report.js";
import { evaluateGoals } from "./goals.js";
import { ensureGoServer } from "./go-server.js";
import { ROOT } from "./proc.js";
import { computeRatios, fmtSize, GiB, KiB, MB, MiB, type CaseResult } from "./report.js";
import { MONGO_NOTE, writeOutputs } from "./run-output.js";
import {
  makeSourceFile,
  sha256OfFile,
  snapshotBuild,
  startMongoWire,
  type MongoWire,
  type TargetKind,
} from "./targets.js";
import { runCase, type CaseDef } from "./upload-case.js";

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

/**
 * The cost-per-block cases of issue 16, a few seconds each per target (the figure that matters, CPU per
 * block, needs thousands of blocks, not long runs): 8 KiB blocks with 10 and 50 agents, 1 MiB blocks with
 * 10 and 50 agents.
 */
const CPU: CaseDef[] = [
  { blockSize: 8 * KiB, agents: 10, carveBytes: 4 * MiB },
  { blockSize: 8 * KiB, agents: 50, carveBytes: 1 * MiB },
  { blockSize: MiB, agents: 10, carveBytes: 20 * MiB },
  { blockSize: MiB, agents: 50, carveBytes: 4 * MiB },
];

const MATRICES: Record<string, CaseDef[]> = { full: FULL, quick: QUICK, cpu: CPU };

const USAGE = `npm run bench -- [options]
  --scenario upload|catalog-scale|floor
                                    upload (default): the upload matrix and downloads below; catalog-scale:
                                    fill a store with --carves carves through the services, then time agent
                                    starts, listings, the node filter, audit pages, start-up and RSS over HTTP
    catalog-scale options: --storage filesystem|gridfs|all (default filesystem), --carves N (100000),
      --gridfs-carves N (default 10000), --nodes N (5000), --fill-dir DIR (default /dev/shm; "none": fill on
      disk in the tmp dir), --keep-data DIR, --reuse-data DIR, --starts N (300), --runs N (30 per query),
      --startups N (3), --concurrency N (8)
    floor: the CPU per block of the work no carve server can skip (decode, SHA-256, the two writes, the JSON
      head; scripts/bench/floor.ts), with the service's own functions, for 8 KiB and 1 MiB blocks
  --backend filesystem|gridfs|all   service backends to run (default all); bare and Go run unless skipped
  --matrix full|quick|cpu           the cases: full (default), quick (a smoke run of about a minute), cpu
                                    (issue 16: 8 KiB x 10/50 agents, 1 MiB x 10/50 agents, seconds each)
  --quick                           --matrix quick, 1 repeat, small downloads
  --out DIR                         results directory (default bench/results, git-ignored)
  --agents LIST                     only these agent counts (e.g. 10,50)
  --block-sizes LIST                only these block sizes (e.g. 8KiB,1MiB)
  --carve-size SIZE                 every agent's carve of the chosen cases is SIZE (longer steady runs, to
                                    profile; e.g. 32MiB)
  --repeat N                        run every case N times, interleaved (default 3, --quick 1); the summary
                                    and the goals use medians (RSS: the largest peak)
  --skip-bare                       do not run the bare server (no ratios)
  --skip-go                         do not run the Go reference server
  --no-warmup                       measure from the target's first request (default: every agent first
                                    uploads an unmeasured carve, ~2000 blocks in all, 40 with 1 MiB blocks)
  --log-level LEVEL                 the service's LOG_LEVEL (default warn)
  --node-args="ARGS"                extra node options for the Node children, the service and the bare server
                                    (e.g. "--max-old-space-size=64"); they run with --optimize-for-size, as npm
                                    start and the Dockerfile start the service, unless ARGS has --[no-]optimize-for-size
  --service-dist DIR                measure another compiled service: DIR/src/main.js (default dist)
  --service-env K=V                 extra environment of the service children (repeatable, e.g. MALLOC_ARENA_MAX=2)
  --cpu-prof                        run the Node children with node --cpu-prof and print their hottest functions
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

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      backend: { type: "string", default: "all" },
      quick: { type: "boolean", default: false },
      out: { type: "string", default: "bench/results" },
      agents: { type: "string" },
      "block-sizes": { type: "string" },
      "carve-size": { type: "string" },
      repeat: { type: "string" },
      "skip-bare": { type: "boolean", default: false },
      "skip-go": { type: "boolean", default: false },
      "no-warmup": { type: "boolean", default: false },
      matrix: { type: "string" },
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
      scenario: { type: "string", default: "upload" },
      storage: { type: "string", default: "filesystem" },
      carves: { type: "string", default: "100000" },
      "gridfs-carves": { type: "string", default: "10000" },
      nodes: { type: "string", default: "5000" },
      "fill-dir": { type: "string" },
      "keep-data": { type: "string" },
      "reuse-data": { type: "string" },
      starts: { type: "string", default: "300" },
      runs: { type: "string", default: "30" },
      startups: { type: "string", default: "3" },
      concurrency: { type: "string", default: "8" },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (values.scenario === "catalog-scale") return catalogScaleCli(values, { cleanups, cleanupAll, source: sourceState(), log });
  if (values.scenario === "floor") {
    const { measureFloor, floorTable } = await import("./floor.js");
    process.stdout.write(`${floorTable(await measureFloor())}\n`);
    return 0;
  }
  if (values.scenario !== "upload") throw new Error(`--scenario must be upload, catalog-scale or floor, not ${values.scenario}`);
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
  const matrixName = values.matrix ?? (values.quick ? "quick" : "full");
  const cases = MATRICES[matrixName];
  if (!cases) throw new Error(`--matrix must be ${Object.keys(MATRICES).join(", ")}, not ${matrixName}`);
  const carveSize = values["carve-size"] === undefined ? undefined : parseSize(values["carve-size"]);
  if (carveSize !== undefined && carveSize < 1) throw new Error("--carve-size must be at least 1 byte");
  const matrix = cases
    .filter((c) => (!agentFilter || agentFilter.includes(c.agents)) && (!sizeFilter || sizeFilter.includes(c.blockSize)))
    .map((c) => (carveSize === undefined ? c : { ...c, carveBytes: carveSize }));
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
  // The Node children start as npm start and the Dockerfile start the service: with --optimize-for-size on the
  // command line (V8 sizes its young generation at start-up, src/main.ts), unless --node-args says otherwise.
  const givenNodeArgs = values["node-args"].split(/\s+/).filter((a) => a !== "");
  const serviceNodeArgs = givenNodeArgs.some((a) => /^--(no-)?optimize[-_]for[-_]size$/.test(a))
    ? givenNodeArgs
    : ["--optimize-for-size", ...givenNodeArgs];
  const extraNotes: string[] = [];
  let goBinary: string | undefined;
  if (runUploads && !values["skip-go"]) {
    const go = await ensureGoServer(log);
    if (go.ok) {
      goBinary = go.binary;
      extraNotes.push(
        `Go reference server: scripts/bench/go-carve-server (net/http, encoding/json, base64, append to a file per session; no journal, no fsync), ${go.goVersion}.`,
      );
    } else {
      log(`SKIPPING the Go target: ${go.reason}`);
      extraNotes.push(`Go target skipped: ${go.reason}.`);
    }
  }
  const kinds: TargetKind[] = [
    ...(values["skip-bare"] ? [] : (["bare"] as TargetKind[])),
    ...(goBinary !== undefined ? (["go"] as TargetKind[]) : []),
    ...backends,
  ];

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
    `carve benchmark (${matrixName}): targets ${kinds.join(", ")}; ` +
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
          goBinary,
          warmup: !values["no-warmup"],
          profileDir,
          serviceNodeArgs,
          serviceEnv,
          cleanups,
          log,
        });
        rows.push(r);
        log(
          `${name.padEnd(24)} ${(r.serviceCpuUsPerBlock.toFixed(0) + " us/block").padStart(14)} ${(r.serviceCpuMsPerMiB.toFixed(2) + " ms/MiB").padStart(13)}` +
            ` ${(r.blocksPerSec.toFixed(0) + " blocks/s").padStart(14)} ${(r.throughputMBps.toFixed(1) + " MB/s").padStart(11)}` +
            ` RSS ${(r.peakRssBytes / MB).toFixed(1)} MB cpu svc ${r.serviceCpuPercent.toFixed(0)}% drv ${r.driverCpuPercent.toFixed(0)}%` +
            `${r.otherCpuPercent !== null ? ` others ${r.otherCpuPercent.toFixed(0)}%` : ""}${r.dbRoundTripsPerBlock !== null ? ` db ${r.dbRoundTripsPerBlock.toFixed(2)} trips/block` : ""}` +
            `${r.bottleneck === "driver" ? " PACED BY THE DRIVER" : ""}` +
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
      backends: backends.filter((b): b is "filesystem" | "gridfs" => b === "filesystem" || b === "gridfs"),
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

  await writeOutputs({
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
    extraNotes,
    log,
  });
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
