/**
 * npm run bench -- --scenario catalog-scale: the catalog at scale (issue 14). Per storage, a store is filled
 * with --carves carves through the service's own code (scripts/bench/catalog-fill.ts), then the built service
 * runs on it and on an empty store and is measured over HTTP (scripts/bench/catalog-measure.ts): start-up,
 * RSS, agent start latency, listing pages, the node filter and audit pages, against the issue's goals (for the
 * filesystem default).
 *
 * Filesystem: the fill runs on tmpfs (--fill-dir, default /dev/shm) because the catalog commits with
 * synchronous=FULL, one fsync per start, completion and custody change; the filled directory is then copied
 * to the bench's tmp directory (on disk) and measured there, so the measured requests pay real fsyncs.
 * GridFS: against scripts/mongo-wire.sh (mongo-java-server), usually with fewer carves (--gridfs-carves).
 *
 * Writes <out>/catalog-scale-<ISO time>.json and <out>/latest-catalog-scale.md (git-ignored).
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

import { fillStore, type FillResult, type FillTarget } from "./catalog-fill.js";
import { ADMIN_POLICY, DOWNLOAD_POLICY, measureStore, type MeasureOptions, type StoreFigures } from "./catalog-measure.js";
import { ROOT } from "./proc.js";
import { MONGO_NOTE } from "./run-output.js";
import { BUCKET, newDatabaseName, snapshotBuild, startMongoWire, type BuildSnapshot } from "./targets.js";
import { startVaultStub } from "./vault-stub.js";

const run = promisify(execFile);

export interface CatalogScaleOptions {
  storages: Array<"filesystem" | "gridfs">;
  carves: number;
  gridfsCarves: number;
  nodes: number;
  spanDays: number;
  concurrency: number;
  /** Where the filesystem fill runs (null: directly in the measured directory, on disk). */
  fillDir: string | null;
  /** Keep the filled filesystem store in DIR/data with DIR/fill.json; reuse one kept earlier. */
  keepData?: string;
  reuseData?: string;
  startups: number;
  starts: number;
  runs: number;
  out: string;
  write: boolean;
  tmpRoot: string;
  build: BuildSnapshot;
  logLevel: string;
  serviceEnv: Record<string, string>;
  source: { commit: string | null; uncommitted: string[] };
  cleanups: Set<() => Promise<void>>;
  log: (line: string) => void;
}

export interface StorageResult {
  storage: "filesystem" | "gridfs";
  fill: Omit<FillResult, "fleet">;
  fillLocation: string;
  copySeconds: number | null;
  empty: StoreFigures;
  full: StoreFigures;
}

interface Goal {
  figure: string;
  goal: string;
  value: number;
  limit: number;
  met: boolean;
}

function goalsOf(r: StorageResult): Goal[] {
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)] ?? Number.NaN;
  const g = (figure: string, goal: string, value: number, limit: number): Goal => ({ figure, goal, value, limit, met: value < limit });
  const req = (name: string): number => r.full.requests[name]?.timings.p50 ?? Number.NaN;
  return [
    g("agent start p50", "< 5 ms", r.full.starts.p50, 5),
    g("list page of 100 p50", "< 20 ms", req("list"), 20),
    g("node filter p50 (busiest node)", "< 20 ms", req("node busiest (8 hex)"), 20),
    g("audit page of 100 p50", "< 20 ms", req("audit"), 20),
    g("service start-up (median)", "< 3000 ms", median(r.full.startupMs), 3000),
    g("RSS full - empty (after list calls)", "< +20 MB", Math.round((r.full.rssAfterListsMB - r.empty.rssAfterListsMB) * 10) / 10, 20),
  ];
}

function withoutFleet(fill: FillResult): Omit<FillResult, "fleet"> {
  const copy: Partial<FillResult> = { ...fill };
  delete copy.fleet;
  return copy as Omit<FillResult, "fleet">;
}

async function copyTree(from: string, to: string): Promise<number> {
  const t0 = performance.now();
  await run("cp", ["-a", from, to], { maxBuffer: 1 << 20 });
  return (performance.now() - t0) / 1000;
}

async function filesystemCase(o: CatalogScaleOptions, base: Omit<MeasureOptions, "storageEnv" | "fleet" | "nodes">): Promise<StorageResult> {
  const measured = path.join(o.tmpRoot, "fs-full");
  let fill: FillResult;
  let fillLocation: string;
  let copySeconds: number | null = null;
  if (o.reuseData !== undefined) {
    fill = JSON.parse(await readFile(path.join(o.reuseData, "fill.json"), "utf8")) as FillResult;
    fillLocation = `reused from ${o.reuseData} (filled on ${(fill as FillResult & { fillLocation?: string }).fillLocation ?? "?"})`;
    o.log(`filesystem: reusing the ${fill.carves} carves kept in ${o.reuseData}`);
    copySeconds = await copyTree(path.join(o.reuseData, "data"), measured);
  } else {
    const fillRoot = o.fillDir ?? o.tmpRoot;
    await mkdir(fillRoot, { recursive: true });
    const dir = o.fillDir !== null ? await mkdtemp(path.join(fillRoot, "carve-scale-")) : measured;
    if (o.fillDir !== null) o.cleanups.add(() => rm(dir, { recursive: true, force: true }));
    fillLocation = o.fillDir !== null ? `${o.fillDir} (${await fsType(o.fillDir)})` : `${o.tmpRoot} (${await fsType(o.tmpRoot)})`;
    o.log(`filesystem: filling ${o.carves} carves in ${dir}`);
    fill = await fillStore({ target: { kind: "filesystem", dataDir: dir }, carves: o.carves, nodes: o.nodes, spanDays: o.spanDays, concurrency: o.concurrency, seed: 14, log: o.log });
    o.log(`filesystem: filled in ${fill.seconds.toFixed(0)} s: ${JSON.stringify(fill.counts)}, ${fill.auditEvents} audit events`);
    if (o.keepData !== undefined) {
      await mkdir(o.keepData, { recursive: true });
      await rm(path.join(o.keepData, "data"), { recursive: true, force: true });
      await copyTree(dir, path.join(o.keepData, "data"));
      await writeFile(path.join(o.keepData, "fill.json"), JSON.stringify({ ...fill, fillLocation }));
    }
    if (dir !== measured) {
      copySeconds = await copyTree(dir, measured);
      await rm(dir, { recursive: true, force: true });
    }
  }
  o.log(`filesystem: measuring on ${measured} (${await fsType(o.tmpRoot)})${copySeconds !== null ? `, copied in ${copySeconds.toFixed(0)} s` : ""}`);
  const empty = path.join(o.tmpRoot, "fs-empty");
  const fsEnv = (dataDir: string): Record<string, string> => ({ CARVE_STORAGE: "filesystem", CARVE_DATA_DIR: dataDir });
  o.log("filesystem, empty store:");
  const emptyFigures = await measureStore({ ...base, storageEnv: fsEnv(empty), fleet: fill.fleet, nodes: null });
  o.log(`filesystem, ${fill.carves} carves:`);
  const fullFigures = await measureStore({ ...base, storageEnv: fsEnv(measured), fleet: fill.fleet, nodes: { busiest: fill.busiestNode, median: fill.medianNode } });
  return { storage: "filesystem", fill: withoutFleet(fill), fillLocation, copySeconds, empty: emptyFigures, full: fullFigures };
}

async function gridfsCase(o: CatalogScaleOptions, base: Omit<MeasureOptions, "storageEnv" | "fleet" | "nodes">): Promise<StorageResult> {
  o.log(`starting the MongoDB-wire server: ${MONGO_NOTE}`);
  const mongo = await startMongoWire(o.tmpRoot);
  o.cleanups.add(() => mongo.stop());
  try {
    const database = newDatabaseName();
    const target: FillTarget = { kind: "gridfs", uri: mongo.uri, database, bucket: BUCKET };
    o.log(`gridfs: filling ${o.gridfsCarves} carves in database ${database}`);
    const fill = await fillStore({ target, carves: o.gridfsCarves, nodes: Math.max(50, Math.round((o.nodes * o.gridfsCarves) / o.carves)), spanDays: o.spanDays, concurrency: o.concurrency, seed: 14, log: o.log });
    o.log(`gridfs: filled in ${fill.seconds.toFixed(0)} s: ${JSON.stringify(fill.counts)}, ${fill.auditEvents} audit events`);
    const env = (db: string): Record<string, string> => ({
      CARVE_STORAGE: "gridfs",
      CARVE_DATA_DIR: path.join(o.tmpRoot, `gridfs-dir-${db}`),
      CARVE_MONGODB_URI: mongo.uri,
      CARVE_MONGODB_DATABASE: db,
      CARVE_GRIDFS_BUCKET: BUCKET,
    });
    o.log("gridfs, empty database:");
    const empty = await measureStore({ ...base, storageEnv: env(newDatabaseName()), fleet: fill.fleet, nodes: null });
    o.log(`gridfs, ${fill.carves} carves:`);
    const full = await measureStore({ ...base, storageEnv: env(database), fleet: fill.fleet, nodes: { busiest: fill.busiestNode, median: fill.medianNode } });
    return { storage: "gridfs", fill: withoutFleet(fill), fillLocation: "mongo-java-server (H2 backend)", copySeconds: null, empty, full };
  } finally {
    await mongo.stop();
  }
}

async function fsType(dir: string): Promise<string> {
  try {
    const { stdout } = await run("df", ["--output=fstype,source", dir]);
    return stdout.trim().split("\n").pop()?.trim().replace(/\s+/, " on ") ?? "?";
  } catch {
    return "?";
  }
}

const ROWS: Array<[string, string]> = [
  ["list", "list page of 100, newest first"],
  ["list next pages", "following pages (nextCursor)"],
  ["list complete", "?status=complete"],
  ["list receiving", "?status=receiving"],
  ["node busiest (8 hex)", "?node= busiest node (8 hex)"],
  ["node median (8 hex)", "?node= median node (8 hex)"],
  ["node busiest (64 hex)", "?node= busiest node (64 hex)"],
  ["node none (8 hex)", "?node= no such node"],
  ["audit", "audit page of 100"],
  ["audit next pages", "audit: following pages"],
  ["audit action", "audit ?action=carve.download"],
];

function heapCell(s: StoreFigures): string {
  const h = s.heapAfterLists;
  return h ? `${h.usedMB} / ${h.totalMB}, ${h.externalMB}` : "-";
}

export function markdownOf(results: StorageResult[], meta: Record<string, string>): string {
  const lines: string[] = ["# Catalog at scale", "", ...Object.entries(meta).map(([k, v]) => `- ${k}: ${v}`), ""];
  for (const r of results) {
    const f = r.fill;
    const t = (x: { p50: number; p99: number }): string => `${x.p50} / ${x.p99}`;
    const cell = (s: StoreFigures, name: string): string => {
      const q = s.requests[name];
      return q ? `${t(q.timings)} (cpu ${q.cpuMs})${q.failures ? ` (${q.failures} failed)` : ""} [${q.items}]` : "-";
    };
    lines.push(
      `## ${r.storage}: ${f.carves.toLocaleString("en-US")} carves`,
      "",
      `Filled through the services in ${f.seconds.toFixed(0)} s on ${r.fillLocation}${r.copySeconds !== null ? `, copied to disk in ${r.copySeconds.toFixed(0)} s` : ""}: ${f.counts.complete} complete (${f.imports} imported), ${f.counts.receiving} receiving, ${f.holds} holds placed (${f.holdsReleased} lifted), ${f.verifications} verifications, ${f.deleted} deleted, ${f.auditEvents} audit events, ${f.nodes} node keys (busiest ${f.busiestNode.carves} carves, median ${f.medianNode.carves}).`,
      "",
      "| figure (ms: p50 / p99 wall, (cpu: service CPU per request), [items in the reply]) | empty store | filled store |",
      "| --- | --- | --- |",
      `| service start-up, spawn to first /status 200 (each) | ${r.empty.startupMs.join(", ")} | ${r.full.startupMs.join(", ")} |`,
      `| agent start, POST /start_uploads (${r.full.starts.n}) | ${t(r.empty.starts)} (cpu ${r.empty.starts.cpuMs}, max ${r.empty.starts.max}) | ${t(r.full.starts)} (cpu ${r.full.starts.cpuMs}, max ${r.full.starts.max})${r.full.starts.refused ? `, ${r.full.starts.refused} refused` : ""} |`,
      ...ROWS.map(([name, label]) => `| ${label} (${r.full.requests[name]?.timings.n ?? 0}) | ${cell(r.empty, name)} | ${cell(r.full, name)} |`),
      `| RSS after 5 list + 2 audit calls, MB | ${r.empty.rssAfterListsMB} | ${r.full.rssAfterListsMB} (+${(r.full.rssAfterListsMB - r.empty.rssAfterListsMB).toFixed(1)}) |`,
      `| V8 heap used / total, external, at that moment, MB | ${heapCell(r.empty)} | ${heapCell(r.full)} |`,
      `| RSS at the end / peak (VmHWM), MB | ${r.empty.rssEndMB} / ${r.empty.hwmMB} | ${r.full.rssEndMB} / ${r.full.hwmMB} |`,
      "",
      r.storage === "gridfs" ? "The goals are the filesystem default's; on GridFS they are shown for reference only." : "",
      "",
      "| goal | target | measured | met |",
      "| --- | --- | --- | --- |",
      ...goalsOf(r).map((g) => `| ${g.figure} | ${g.goal} | ${g.value} | ${g.met ? "yes" : "**no**"} |`),
      "",
    );
    if (r.storage === "gridfs") {
      lines.push(
        "mongo-java-server ignores non-unique indexes (it scans), so these timings say little about a real MongoDB; test/storage/contracts/mongo.test.ts shows that every catalog query shape has an index behind it.",
        "",
      );
    }
  }
  return lines.join("\n");
}

export async function runCatalogScale(o: CatalogScaleOptions): Promise<number> {
  const startedAt = new Date();
  const vault = await startVaultStub({ policies: [DOWNLOAD_POLICY, ADMIN_POLICY] });
  o.cleanups.add(() => vault.stop());
  const base = {
    serviceScript: o.build.serviceScript,
    cwd: o.tmpRoot,
    serviceEnv: { LOG_LEVEL: o.logLevel, CARVE_SHUTDOWN_GRACE_SECONDS: "10", ...o.serviceEnv },
    vault,
    startups: o.startups,
    starts: o.starts,
    warmupStarts: 20,
    runs: o.runs,
    log: o.log,
  };
  const loadBefore = os.loadavg().map((l) => l.toFixed(1)).join(" ");
  const results: StorageResult[] = [];
  for (const storage of o.storages) results.push(storage === "filesystem" ? await filesystemCase(o, base) : await gridfsCase(o, base));
  await vault.stop();
  const finishedAt = new Date();
  const cpu = os.cpus();
  const meta: Record<string, string> = {
    command: `npm run bench -- ${process.argv.slice(2).join(" ")}`,
    when: `${startedAt.toISOString()} to ${finishedAt.toISOString()}`,
    machine: `${cpu.length} x ${cpu[0]?.model ?? "?"}, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB, node ${process.version}, load average ${loadBefore} at the start, ${os.loadavg().map((l) => l.toFixed(1)).join(" ")} at the end`,
    service: `commit ${o.source.commit?.slice(0, 12) ?? "?"}${o.source.uncommitted.length ? ` plus ${o.source.uncommitted.length} uncommitted paths` : ""}, built-in defaults (capacity caps, 1 GiB minimum free disk, retention on), LOG_LEVEL=${o.logLevel}`,
    requests: `sequential on one keep-alive connection, client-side wall clock; responder requests authorized by scripts/bench/vault-stub.ts (policy mode, decisions cached by the service) and each writes its own audit event; ${base.warmupStarts} unmeasured starts first; starts from random fleet nodes (X-Real-IP, node key)`,
  };
  const md = markdownOf(results, meta);
  process.stdout.write(`${md}\n`);
  if (o.write) {
    const out = path.resolve(ROOT, o.out);
    await mkdir(out, { recursive: true });
    const stamp = startedAt.toISOString().replace(/:/g, "-");
    await writeFile(path.join(out, `catalog-scale-${stamp}.json`), JSON.stringify({ meta, results: results.map((r) => ({ ...r, goals: goalsOf(r) })) }, null, 2));
    await writeFile(path.join(out, "latest-catalog-scale.md"), `${md}\n`);
    o.log(`results: ${path.join(out, `catalog-scale-${stamp}.json`)} and latest-catalog-scale.md`);
  }
  const failed = results.some((r) => r.full.starts.refused > 0 || Object.values(r.full.requests).some((q) => q.failures > 0));
  return failed ? 1 : 0;
}

/** --scenario catalog-scale of npm run bench: the options of scripts/bench/run.ts, checked, then the run. */
export async function catalogScaleCli(
  values: Record<string, string | boolean | string[] | undefined>,
  ctx: { cleanups: Set<() => Promise<void>>; cleanupAll: () => Promise<void>; source: CatalogScaleOptions["source"]; log: (line: string) => void },
): Promise<number> {
  const { cleanups, cleanupAll, log } = ctx;
  const str = (name: string): string | undefined => (typeof values[name] === "string" ? values[name] : undefined);
  const int = (name: string): number => {
    const n = Number(str(name));
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer`);
    return n;
  };
  const storage = str("storage");
  const storages: Array<"filesystem" | "gridfs"> =
    storage === "all" ? ["filesystem", "gridfs"] : storage === "filesystem" || storage === "gridfs" ? [storage] : [];
  if (storages.length === 0) throw new Error(`--storage must be filesystem, gridfs or all, not ${storage}`);
  const fillDir = str("fill-dir");
  const tmpRoot = await mkdtemp(path.join(os.tmpdir(), "carve-bench-"));
  cleanups.add(() => rm(tmpRoot, { recursive: true, force: true }));
  process.once("SIGINT", () => void cleanupAll().finally(() => process.exit(130)));
  const serviceEnv: Record<string, string> = {};
  for (const kv of (values["service-env"] as string[] | undefined) ?? []) {
    const eq = kv.indexOf("=");
    if (eq <= 0) throw new Error(`--service-env expects NAME=VALUE, not ${kv}`);
    serviceEnv[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const keepData = str("keep-data");
  const reuseData = str("reuse-data");
  try {
    return await runCatalogScale({
      storages,
      carves: int("carves"),
      gridfsCarves: int("gridfs-carves"),
      nodes: int("nodes"),
      spanDays: 28,
      concurrency: int("concurrency"),
      fillDir: fillDir === "none" ? null : (fillDir ?? (existsSync("/dev/shm") ? "/dev/shm" : null)),
      ...(keepData !== undefined ? { keepData: path.resolve(keepData) } : {}),
      ...(reuseData !== undefined ? { reuseData: path.resolve(reuseData) } : {}),
      startups: int("startups"),
      starts: int("starts"),
      runs: int("runs"),
      out: str("out") ?? "bench/results",
      write: values["no-write"] !== true,
      tmpRoot,
      build: await snapshotBuild(path.join(tmpRoot, "build")),
      logLevel: str("log-level") ?? "warn",
      serviceEnv,
      source: ctx.source,
      cleanups,
      log,
    });
  } finally {
    await cleanupAll();
  }
}
