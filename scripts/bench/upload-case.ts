/**
 * One upload case of `npm run bench`: a fresh target child, the load driver (scripts/bench/load-driver.ts) in
 * its own process, and around the timed run the CPU time of the target, the driver, the database (GridFS)
 * and the whole machine from /proc, the target's RSS, and (GridFS) the service's database messages.
 */
import { fork } from "node:child_process";
import { readdir } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

import type { DriveResult, DriveSpec } from "./load-driver.js";
import { summarizeProfileFile, type ProfileSummary } from "./profile.js";
import {
  readCpuSeconds,
  readCpuTimes,
  readMachineCpu,
  readMemory,
  readThreadCpu,
  RssSampler,
  secondsPerTick,
  threadCpuDelta,
} from "./proc.js";
import { MiB, MB, ratioMetricFor, type CaseResult } from "./report.js";
import { startTarget, type BuildSnapshot, type MongoWire, type TargetKind } from "./targets.js";
import { wireDelta } from "./wire-counter.js";

export interface CaseDef {
  blockSize: number;
  agents: number;
  carveBytes: number;
}

export interface CaseOptions {
  def: CaseDef;
  kind: TargetKind;
  rep: number;
  archivePath: string;
  sourceSha256: string;
  tmpRoot: string;
  build: BuildSnapshot;
  logLevel: string;
  mongo: MongoWire | undefined;
  goBinary: string | undefined;
  profileDir: string | null;
  serviceNodeArgs: string[];
  serviceEnv: Record<string, string>;
  /** Warm the target up (load-driver.ts warmupBlocks) before the measured run. */
  warmup: boolean;
  cleanups: Set<() => Promise<void>>;
  log: (line: string) => void;
}

/** Warm-up blocks over all agents: about 2000 requests, or 40 MiB with 1 MiB blocks (not measured). */
const WARMUP_BLOCKS = 2000;
const WARMUP_MIB_BLOCKS = 40;

const DRIVER_SCRIPT = path.join(import.meta.dirname, "load-driver.js");

/**
 * Runs the driver process: it encodes the blocks, reports ready, and starts when `beforeGo` has run (the
 * caller reads the CPU counters there, so the driver's preparation is outside the measured window).
 */
async function runDriver(spec: DriveSpec, beforeGo: () => Promise<void>): Promise<DriveResult> {
  const child = fork(DRIVER_SCRIPT, [], { stdio: ["ignore", "inherit", "inherit", "ipc"], execArgv: [] });
  try {
    return await new Promise<DriveResult>((resolve, reject) => {
      child.on("message", (m: { type: string; result?: DriveResult; error?: string }) => {
        if (m.type === "ready") {
          beforeGo().then(
            () => child.send({ type: "go" }),
            (err: unknown) => reject(err instanceof Error ? err : new Error(String(err))),
          );
        } else if (m.type === "result" && m.result) resolve(m.result);
        else if (m.type === "error") reject(new Error(`load driver: ${m.error ?? "?"}`));
      });
      child.once("error", reject);
      child.once("exit", (code) => reject(new Error(`load driver exited with ${String(code)} before its result`)));
      child.send({ type: "spec", spec });
    });
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
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

/**
 * Who set the pace: the driver when it used at least as much CPU as the server (the server was then waiting
 * for requests), the database (GridFS) when it used more than the server, the server otherwise.
 */
export function bottleneckOf(
  serviceCpuPercent: number,
  driverCpuPercent: number,
  dbCpuPercent: number | null,
): "server" | "driver" | "database" {
  if (driverCpuPercent >= serviceCpuPercent && driverCpuPercent >= (dbCpuPercent ?? 0)) return "driver";
  return dbCpuPercent !== null && dbCpuPercent > serviceCpuPercent ? "database" : "server";
}

export async function runCase(opts: CaseOptions): Promise<CaseResult> {
  const { def, kind, log } = opts;
  const nodeArgs = [
    ...(kind === "bare" || kind === "go" ? [] : opts.serviceNodeArgs),
    ...(opts.profileDir !== null && kind !== "go" ? ["--cpu-prof", `--cpu-prof-dir=${opts.profileDir}`] : []),
  ];
  const target = await startTarget(kind, {
    tmpRoot: opts.tmpRoot,
    build: opts.build,
    logLevel: opts.logLevel,
    nodeArgs,
    serviceEnv: opts.serviceEnv,
    ...(opts.mongo ? { mongo: opts.mongo } : {}),
    ...(opts.goBinary !== undefined ? { goBinary: opts.goBinary } : {}),
  });
  const dispose = (): Promise<void> => target.dispose();
  opts.cleanups.add(dispose);
  try {
    const pid = target.child.pid;
    const idle = await readMemory(pid);
    const sampler = new RssSampler(pid, 100);
    const dbPid = kind === "gridfs" ? (opts.mongo?.pid ?? null) : null;
    let loadavg1 = 0;
    let cpu0 = 0;
    let times0: { user: number; system: number } | null = null;
    let threads0 = new Map<number, { name: string; seconds: number }>();
    let db0: number | null = null;
    let machine0: { busy: number; total: number } | null = null;
    let wire0 = target.wire?.snapshot();
    const url = new URL(target.child.url);
    const drive = await runDriver(
      {
        host: url.hostname,
        port: Number(url.port),
        archivePath: opts.archivePath,
        blockSize: def.blockSize,
        agents: def.agents,
        warmupBlocks: opts.warmup
          ? Math.ceil((def.blockSize >= MiB ? WARMUP_MIB_BLOCKS : WARMUP_BLOCKS) / def.agents)
          : 0,
      },
      async () => {
        loadavg1 = os.loadavg()[0] ?? 0;
        sampler.start();
        threads0 = await readThreadCpu(pid);
        times0 = await readCpuTimes(pid);
        cpu0 = times0 === null ? 0 : times0.user + times0.system;
        db0 = dbPid !== null ? await readCpuSeconds(dbPid) : null;
        machine0 = await readMachineCpu();
        wire0 = target.wire?.snapshot();
      },
    );
    const times1 = await readCpuTimes(pid);
    const cpu1 = times1 === null ? cpu0 : times1.user + times1.system;
    const t0 = times0 as { user: number; system: number } | null;
    const systemShare = t0 && times1 && cpu1 > cpu0 ? (times1.system - t0.system) / (cpu1 - cpu0) : null;
    const threadCpu = threadCpuDelta(threads0, await readThreadCpu(pid));
    const db1 = dbPid !== null ? await readCpuSeconds(dbPid) : null;
    const machine1 = await readMachineCpu();
    const wire1 = target.wire?.snapshot();
    const mem = await readMemory(pid);
    sampler.stop();

    const failures: string[] = [];
    const exitCode = target.child.proc.exitCode;
    const exitSignal = target.child.proc.signalCode;
    if (exitCode !== null || exitSignal !== null) {
      failures.push(`the ${kind} process died during the case (exit ${String(exitCode ?? exitSignal)})`);
    }
    if (drive.carveBytes !== def.carveBytes)
      failures.push(`the driver read ${drive.carveBytes} bytes, not ${def.carveBytes}`);
    let ok = 0;
    for (const c of drive.carves) {
      if (!c.ok) {
        failures.push(`${c.carveId}: ${c.error ?? "failed"}`);
        continue;
      }
      const v = await target.verify(c.carveId, opts.sourceSha256, def.carveBytes);
      if (v.ok) ok++;
      else failures.push(v.detail ?? `${c.carveId}: not verified`);
    }
    if (failures.length > 0) {
      log(`  child output (last lines):\n    ${target.child.tail().slice(-15).join("\n    ")}`);
    }
    opts.cleanups.delete(dispose);
    await dispose();

    let profile: ProfileSummary | undefined;
    if (opts.profileDir !== null && kind !== "go") {
      const file = await newestProfile(opts.profileDir);
      if (file) profile = await summarizeProfileFile(file, 25);
      else log(`  no .cpuprofile written in ${opts.profileDir}`);
    }

    const wallS = drive.wallMs / 1000;
    const svcCpu = cpu1 - cpu0;
    const dbCpu = db0 !== null && db1 !== null ? db1 - db0 : null;
    const drvCpu = drive.driverCpuMs / 1000;
    const serviceCpuPercent = (100 * svcCpu) / wallS;
    const driverCpuPercent = (100 * drvCpu) / wallS;
    // The rest of the machine's busy time in the window: the other engineers' work (and this bench process).
    const m0 = machine0 as { busy: number; total: number } | null;
    const machineBusyS = m0 && machine1 ? (machine1.busy - m0.busy) * secondsPerTick() : null;
    const otherCpuPercent =
      machineBusyS !== null ? Math.max(0, (100 * (machineBusyS - svcCpu - drvCpu - (dbCpu ?? 0))) / wallS) : null;
    const wire = wire0 && wire1 ? wireDelta(wire0, wire1) : null;
    const vmHwm = mem?.hwm ?? 0;
    const blocks = drive.blocks;
    const mib = drive.ackedBytes / MiB;
    return {
      target: kind,
      blockSize: def.blockSize,
      agents: def.agents,
      carveBytesPerAgent: def.carveBytes,
      totalBytes: def.carveBytes * def.agents,
      rep: opts.rep,
      wallMs: Math.round(drive.wallMs * 10) / 10,
      // Acknowledged bytes: equal to the total when every carve succeeded.
      throughputMBps: drive.ackedBytes / MB / wallS,
      blocksPerSec: blocks / wallS,
      requestsPerSec: drive.requests / wallS,
      blockLatencyMs: drive.blockLatencyMs,
      peakRssBytes: Math.max(vmHwm, sampler.maxRss),
      vmHwmBytes: vmHwm,
      idleRssBytes: idle?.rss ?? 0,
      sampledMaxRssBytes: sampler.maxRss,
      rssSamples: sampler.samples,
      rssTimeline: sampler.timeline,
      serviceCpuSeconds: svcCpu,
      serviceCpuPercent,
      serviceCpuUsPerBlock: blocks > 0 ? (1e6 * svcCpu) / blocks : Number.NaN,
      serviceCpuMsPerMiB: mib > 0 ? (1e3 * svcCpu) / mib : Number.NaN,
      driverCpuPercent,
      driverCpuUsPerBlock: blocks > 0 ? (1e6 * drvCpu) / blocks : Number.NaN,
      bottleneck: bottleneckOf(serviceCpuPercent, driverCpuPercent, dbCpu !== null ? (100 * dbCpu) / wallS : null),
      threadCpuSeconds: threadCpu,
      serviceSystemShare: systemShare,
      dbCpuPercent: dbCpu !== null ? (100 * dbCpu) / wallS : null,
      dbCpuUsPerBlock: dbCpu !== null && blocks > 0 ? (1e6 * dbCpu) / blocks : null,
      dbRoundTripsPerBlock: wire && blocks > 0 ? wire.carveMessages / blocks : null,
      dbCommands: wire ? wire.byCommand : null,
      otherCpuPercent,
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
    if (opts.cleanups.has(dispose)) {
      opts.cleanups.delete(dispose);
      await dispose().catch(() => undefined);
    }
  }
}
