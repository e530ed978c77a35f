/**
 * The download benchmark: one big carve uploaded through the agent path, then streamed to the real `curl`
 * the way a responder fetches it (GET /api/v1/carves/<id>/archive with X-Vault-Token), while the service's
 * memory is watched.
 *
 * Per backend (filesystem, GridFS):
 *  1. a service child receives the carve from one emulated agent (scripts/emulator runCarve, 1 MiB blocks, a
 *     random incompressible source file) and is stopped;
 *  2. a fresh child on the same storage (so its RSS starts from idle, not from the upload's garbage) is asked
 *     for the carve's metadata (warms up the responder path and the Vault decision cache, and checks status
 *     complete, size and SHA-256);
 *  3. `curl -sS -o /dev/null -w '%{json}'` downloads it `repeat` times, interleaved with the bare server
 *     (scripts/bench/bare-server.ts: fs.createReadStream piped to the response, no auth, no framework);
 *  4. one verification download: curl's output streamed into a SHA-256 in this process (not timed against
 *     the others: the hashing shares the 2 cores), bytes == size and hash == the source's;
 *  5. one slow reader: `curl --limit-rate R --max-time S` (curl gives up after S seconds, exit 28): while the
 *     client reads slowly the service must not read ahead of it.
 * Around each download: VmRSS before (after resetting the peak with /proc/<pid>/clear_refs "5"), the peak
 * (VmHWM since the reset, and VmRSS sampled every 100 ms), VmRSS right after and 1 s later, the child's CPU
 * time and open file descriptors. Growth is measured from the child's idle RSS (before its first download),
 * so memory an earlier download kept cannot hide a later one's.
 *
 * Authorization goes through scripts/bench/vault-stub.ts (policy mode, one token with osquery-carve-download
 * and osquery-carve-admin: after the downloads the bench reads the carve's audit trail and the service's
 * download counters, and checks that every download curl received in full is recorded as completed).
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, readdir, rm, statfs, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";

import { driveAgents } from "./driver.js";
import { freePort, readCpuSeconds, readMemory, RssSampler, spawnNodeService, type NodeChild } from "./proc.js";
import {
  fmtSize,
  MB,
  MiB,
  type DownloadResult,
  type DownloadSetup,
  type DownloadVariant,
  type ServiceDownloadMetrics,
  type ServiceRecord,
} from "./report.js";
import {
  BUCKET,
  makeSourceFile,
  newDatabaseName,
  sha256OfFile,
  spawnService,
  type BuildSnapshot,
  type MongoWire,
  type ServiceStorage,
  type TargetKind,
} from "./targets.js";
import { startVaultStub, type VaultStub } from "./vault-stub.js";

/** The service's default download policy (CARVE_VAULT_POLICY), set explicitly for the children. */
const DOWNLOAD_POLICY = "osquery-carve-download";
/** The admin policy (CARVE_VAULT_ADMIN_POLICY): the bench reads the audit trail of its downloads. */
const ADMIN_POLICY = "osquery-carve-admin";

export interface SlowReader {
  /** curl --limit-rate value, e.g. "16M" (curl's M = 2^20 bytes/s). */
  rate: string;
  /** curl --max-time. */
  seconds: number;
}

export interface DownloadBenchOptions {
  backends: Array<"filesystem" | "gridfs">;
  includeBare: boolean;
  carveBytes: number;
  /** Carve size on GridFS (the upload through mongo-java-server is the slow part of this benchmark). */
  gridfsCarveBytes: number;
  repeat: number;
  slowReader: SlowReader | null;
  tmpRoot: string;
  build: BuildSnapshot;
  logLevel: string;
  mongo?: MongoWire | undefined;
  serviceNodeArgs: string[];
  serviceEnv: Record<string, string>;
  /** Registered while a resource is alive, so an interrupted run can still clean up. */
  cleanups: Set<() => Promise<void>>;
  log: (line: string) => void;
}

export interface DownloadBenchResult {
  carveBytes: number;
  gridfsCarveBytes: number | null;
  /** SHA-256 of the random source file of each carve size. */
  sources: Array<{ bytes: number; sha256: string }>;
  setups: DownloadSetup[];
  runs: DownloadResult[];
  /** lookup-self requests the Vault stand-in answered (the service caches decisions 30 s). */
  vaultLookups: { allowed: number; refused: number };
  slowReader: SlowReader | null;
  curlVersion: string;
}

interface CurlOutcome {
  exitCode: number;
  wallMs: number;
  /** curl's --write-out '%{json}' object (null if it printed none). */
  info: Record<string, unknown> | null;
  stderr: string;
  /** verification runs only */
  sha256?: string;
  streamedBytes?: number;
}

function num(info: Record<string, unknown> | null, key: string): number {
  const v = info?.[key];
  return typeof v === "number" ? v : Number.NaN;
}

/** Runs curl; with `hash` its output (the body) is streamed into a SHA-256 here instead of /dev/null. */
async function runCurl(args: string[], hash: boolean): Promise<CurlOutcome> {
  const t0 = performance.now();
  // -w output goes to stderr when the body goes to stdout (curl 7.63+ %{stderr}).
  const writeOut = hash ? "%{stderr}\n%{json}\n" : "%{json}";
  const proc = spawn("curl", ["-sS", "-w", writeOut, ...(hash ? ["-o", "-"] : ["-o", "/dev/null"]), ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  const sha = createHash("sha256");
  let streamed = 0;
  proc.stdout.on("data", (chunk: Buffer) => {
    if (hash) {
      sha.update(chunk);
      streamed += chunk.length;
    } else if (stdout.length < 100_000) {
      stdout += chunk.toString("utf8");
    }
  });
  proc.stderr.on("data", (chunk: Buffer) => {
    if (stderr.length < 100_000) stderr += chunk.toString("utf8");
  });
  const exitCode = await new Promise<number>((resolve, reject) => {
    proc.once("error", reject);
    proc.once("close", (code) => resolve(code ?? -1));
  });
  const wallMs = performance.now() - t0;
  const jsonText = hash
    ? (stderr
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .pop() ?? "")
    : stdout.trim();
  let info: Record<string, unknown> | null = null;
  try {
    info = JSON.parse(jsonText) as Record<string, unknown>;
  } catch {
    info = null;
  }
  return {
    exitCode,
    wallMs,
    info,
    stderr: stderr
      .split("\n")
      .filter((l) => l.trim() !== "" && !l.startsWith("{"))
      .join(" ")
      .slice(0, 300),
    ...(hash ? { sha256: sha.digest("hex"), streamedBytes: streamed } : {}),
  };
}

/** Open file descriptors of a live process (null when it is gone). */
async function countFds(pid: number): Promise<number | null> {
  try {
    return (await readdir(`/proc/${pid}/fd`)).length;
  } catch {
    return null;
  }
}

/** Resets the process's peak RSS (VmHWM) to its current RSS (Linux 4.0+); false if not possible. */
async function resetPeakRss(pid: number): Promise<boolean> {
  try {
    await writeFile(`/proc/${pid}/clear_refs`, "5");
    return true;
  } catch {
    return false;
  }
}

interface Endpoint {
  target: TargetKind;
  child: NodeChild;
  /** VmRSS of the child before its first download (after the warm-up request): the flat line. */
  idleRss: number;
  url: string;
  /** X-Vault-Token header, for the service. */
  headers: string[];
}

async function measureDownload(
  ep: Endpoint,
  variant: DownloadVariant,
  rep: number,
  carveBytes: number,
  sourceSha256: string,
  slow: SlowReader | null,
): Promise<DownloadResult> {
  const pid = ep.child.pid;
  const fdsBefore = await countFds(pid);
  const hwmReset = await resetPeakRss(pid);
  const before = await readMemory(pid);
  const cpu0 = (await readCpuSeconds(pid)) ?? 0;
  const loadavg1 = os.loadavg()[0] ?? 0;
  const sampler = new RssSampler(pid, 100);
  sampler.start();
  const extra = variant === "slow" && slow ? ["--limit-rate", slow.rate, "--max-time", String(slow.seconds)] : [];
  const curl = await runCurl([...ep.headers, ...extra, ep.url], variant === "verify");
  const during = await readMemory(pid);
  const cpu1 = (await readCpuSeconds(pid)) ?? cpu0;
  sampler.stop();
  await sleep(1000);
  const settled = await readMemory(pid);
  const fdsAfter = await countFds(pid);

  const received = variant === "verify" ? (curl.streamedBytes ?? 0) : num(curl.info, "size_download");
  const status = num(curl.info, "response_code");
  const timeTotal = num(curl.info, "time_total");
  const rssBefore = before?.rss ?? 0;
  const peak = Math.max(hwmReset ? (during?.hwm ?? 0) : 0, sampler.maxRss, during?.rss ?? 0);
  const failures: string[] = [];
  if (!Number.isFinite(status))
    failures.push(`curl printed no --write-out JSON (exit ${curl.exitCode}): ${curl.stderr}`);
  else if (status !== 200) failures.push(`HTTP ${status}`);
  if (variant === "slow") {
    // Expected: curl gives up at --max-time (exit 28) having received part of the carve.
    if (curl.exitCode !== 28 && !(curl.exitCode === 0 && received === carveBytes)) {
      failures.push(`curl exit ${curl.exitCode} (expected 28, the --max-time cut): ${curl.stderr}`);
    }
  } else {
    if (curl.exitCode !== 0) failures.push(`curl exit ${curl.exitCode}: ${curl.stderr}`);
    if (received !== carveBytes) failures.push(`received ${received} bytes, expected ${carveBytes}`);
  }
  let sha256Ok: boolean | null = null;
  if (variant === "verify") {
    sha256Ok = curl.sha256 === sourceSha256;
    if (!sha256Ok) failures.push(`sha256 ${String(curl.sha256)}, expected ${sourceSha256}`);
  }
  if (ep.child.proc.exitCode !== null || ep.child.proc.signalCode !== null) {
    failures.push(`the ${ep.target} process died during the download`);
  }
  const seconds = Number.isFinite(timeTotal) && timeTotal > 0 ? timeTotal : curl.wallMs / 1000;
  return {
    target: ep.target,
    variant,
    rep,
    carveBytes,
    bytesReceived: Number.isFinite(received) ? received : 0,
    httpStatus: Number.isFinite(status) ? status : null,
    curlExit: curl.exitCode,
    curlError: curl.stderr || null,
    wallMs: Math.round(curl.wallMs * 10) / 10,
    curlTimeTotalS: timeTotal,
    curlTimeStartTransferS: num(curl.info, "time_starttransfer"),
    throughputMBps: (Number.isFinite(received) ? received : 0) / MB / seconds,
    curlSpeedMBps: num(curl.info, "speed_download") / MB,
    rssBeforeBytes: rssBefore,
    rssPeakBytes: peak,
    rssAfterBytes: during?.rss ?? 0,
    rssSettledBytes: settled?.rss ?? 0,
    rssIdleBytes: ep.idleRss,
    rssGrowthBytes: peak - ep.idleRss,
    peakFrom: hwmReset ? "VmHWM since clear_refs, and VmRSS samples" : "VmRSS samples only",
    rssSamples: sampler.samples,
    rssTimeline: sampler.timeline,
    fdsBefore,
    fdsAfter,
    serviceCpuPercent: (100 * (cpu1 - cpu0)) / (curl.wallMs / 1000),
    loadavg1,
    sha256: curl.sha256 ?? null,
    sha256Ok,
    ok: failures.length === 0,
    failures,
    serviceRecord: null,
    serviceRecordConsistent: null,
    ratioToBare: null,
  };
}

/** GET the carve's metadata as a responder: warms the responder path and checks the carve is complete. */
async function checkMetadata(
  baseUrl: string,
  token: string,
  carveId: string,
  size: number,
  sha256: string,
): Promise<string | null> {
  const res = await fetch(`${baseUrl}/api/v1/carves/${carveId}`, {
    headers: { "X-Vault-Token": token },
    signal: AbortSignal.timeout(30_000),
  });
  const body = (await res.json().catch(() => null)) as {
    status?: unknown;
    carveSize?: unknown;
    sha256?: unknown;
    archive?: { url?: unknown } | null;
  } | null;
  if (res.status !== 200 || body === null) return `GET /api/v1/carves/${carveId}: HTTP ${res.status}`;
  if (body.status !== "complete") return `carve ${carveId} is ${String(body.status)}, not complete`;
  if (body.carveSize !== size) return `carve ${carveId}: carveSize ${String(body.carveSize)}, expected ${size}`;
  if (body.sha256 !== sha256) return `carve ${carveId}: sha256 ${String(body.sha256)}, expected ${sha256}`;
  return null;
}

/**
 * The service's own account of the downloads of one carve: its carve.download audit events (oldest first,
 * GET /api/v1/audit with the admin policy) and its counters (GET /metrics: carve_downloads_total by result,
 * carve_download_bytes_total). Parts that do not answer are null.
 */
async function serviceAccount(
  baseUrl: string,
  token: string,
  carveId: string,
): Promise<{ events: ServiceRecord[] | null; metrics: ServiceDownloadMetrics | null } | null> {
  try {
    const audit = await fetch(`${baseUrl}/api/v1/audit?carve_id=${carveId}&action=carve.download&limit=100`, {
      headers: { "X-Vault-Token": token },
      signal: AbortSignal.timeout(10_000),
    });
    const raw = audit.ok
      ? ((
          (await audit.json()) as {
            events?: Array<{ result?: string; detail?: Record<string, unknown> }>;
          }
        ).events ?? [])
      : null;
    const events =
      raw === null
        ? null
        : raw
            .map((e): ServiceRecord => ({
              result: String(e.result),
              code: typeof e.detail?.code === "string" ? e.detail.code : null,
              completed: e.detail?.completed === true,
              aborted: e.detail?.aborted === true,
              bytesSent: typeof e.detail?.bytesSent === "number" ? e.detail.bytesSent : null,
            }))
            .reverse();
    const res = await fetch(`${baseUrl}/metrics`, { signal: AbortSignal.timeout(10_000) });
    let metrics: ServiceDownloadMetrics | null = null;
    if (res.ok) {
      const text = await res.text();
      const value = (re: RegExp): number => {
        const m = re.exec(text);
        return m?.[1] !== undefined ? Number(m[1]) : 0;
      };
      metrics = {
        complete: value(/^carve_downloads_total\{[^}]*result="complete"[^}]*\}\s+(\S+)$/m),
        aborted: value(/^carve_downloads_total\{[^}]*result="aborted"[^}]*\}\s+(\S+)$/m),
        bytesSent: value(/^carve_download_bytes_total(?:\{[^}]*\})?\s+(\S+)$/m),
      };
    }
    return { events, metrics };
  } catch {
    return null;
  }
}

/** The curl version line, or an error if there is no curl. */
function curlVersion(): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn("curl", ["--version"], { stdio: ["ignore", "pipe", "ignore"] });
    let out = "";
    p.stdout.on("data", (c: Buffer) => (out += c.toString("utf8")));
    p.once("error", () => reject(new Error("the download benchmark needs curl on PATH")));
    p.once("close", (code) =>
      code === 0 ? resolve(out.split("\n")[0] ?? "curl") : reject(new Error(`curl --version exited ${String(code)}`)),
    );
  });
}

export async function runDownloadBench(opts: DownloadBenchOptions): Promise<DownloadBenchResult> {
  const { log, cleanups } = opts;
  const version = await curlVersion();

  // Disk: the source file, one carve per backend (GridFS: the database's copy), and the service's
  // CARVE_MIN_FREE_DISK (1 GiB) left free after each carve.
  const fsStat = await statfs(opts.tmpRoot);
  const free = fsStat.bavail * fsStat.bsize;
  const sizeOf = (kind: "filesystem" | "gridfs"): number =>
    kind === "gridfs" ? opts.gridfsCarveBytes : opts.carveBytes;
  // The bare server serves the filesystem-sized file when that backend runs, else the GridFS one.
  const bareBytes =
    opts.backends.includes("filesystem") || opts.backends.length === 0 ? opts.carveBytes : opts.gridfsCarveBytes;
  const sizes = [...new Set([...opts.backends.map(sizeOf), ...(opts.includeBare ? [bareBytes] : [])])];
  const need = sizes.reduce((a, b) => a + b, 0) + opts.backends.reduce((a, k) => a + sizeOf(k), 0) + 2 * 1024 * MiB;
  if (free < need) {
    throw new Error(
      `download benchmark: ${(free / 2 ** 30).toFixed(1)} GiB free in ${opts.tmpRoot}, needs ${(need / 2 ** 30).toFixed(1)} GiB (use --download-size or --skip-downloads)`,
    );
  }

  const sources = new Map<number, { file: string; sha256: string }>();
  const removeSources = async (): Promise<void> => {
    for (const src of sources.values()) await rm(src.file, { force: true });
  };
  cleanups.add(removeSources);
  for (const bytes of sizes) {
    const file = path.join(opts.tmpRoot, `download-source-${bytes}.bin`);
    log(`downloads: writing a ${bytes} byte random source file`);
    sources.set(bytes, { file, sha256: "" });
    await makeSourceFile(file, bytes);
    sources.set(bytes, { file, sha256: await sha256OfFile(file) });
  }
  const sourceOf = (bytes: number): { file: string; sha256: string } => {
    const src = sources.get(bytes);
    if (!src) throw new Error(`no source file of ${bytes} bytes`);
    return src;
  };

  const vault: VaultStub = await startVaultStub({ policies: [DOWNLOAD_POLICY, ADMIN_POLICY] });
  const stopVault = (): Promise<void> => vault.stop();
  cleanups.add(stopVault);
  const targetOpts = {
    tmpRoot: opts.tmpRoot,
    build: opts.build,
    logLevel: opts.logLevel,
    nodeArgs: opts.serviceNodeArgs,
    serviceEnv: {
      ...opts.serviceEnv,
      VAULT_ADDR: vault.address,
      CARVE_VAULT_AUTH_MODE: "policy",
      CARVE_VAULT_POLICY: DOWNLOAD_POLICY,
      CARVE_VAULT_ADMIN_POLICY: ADMIN_POLICY,
    },
    ...(opts.mongo ? { mongo: opts.mongo } : {}),
  };

  const setups: DownloadSetup[] = [];
  const endpoints: Array<Endpoint & { bytes: number }> = [];
  const storages: Array<{ kind: "filesystem" | "gridfs"; storage: ServiceStorage }> = [];
  const dropStorage = async (kind: "filesystem" | "gridfs", storage: ServiceStorage): Promise<void> => {
    if (kind === "gridfs" && storage.database !== undefined && opts.mongo) {
      await opts.mongo.client
        .db(storage.database)
        .dropDatabase()
        .catch(() => undefined);
    }
    await rm(storage.dataDir, { recursive: true, force: true });
  };
  const stopAll = async (): Promise<void> => {
    for (const ep of endpoints.splice(0)) await ep.child.stop().catch(() => null);
    for (const s of storages.splice(0)) await dropStorage(s.kind, s.storage);
  };
  cleanups.add(stopAll);
  const runs: DownloadResult[] = [];

  try {
    for (const kind of opts.backends) {
      const bytes = sizeOf(kind);
      const { file: sourceFile, sha256: sourceSha256 } = sourceOf(bytes);
      const storage: ServiceStorage = {
        dataDir: await mkdtemp(path.join(opts.tmpRoot, `download-${kind}-`)),
        ...(kind === "gridfs" ? { database: newDatabaseName() } : {}),
      };
      storages.push({ kind, storage });
      log(`downloads: ${kind}: uploading a ${fmtSize(bytes)} carve (1 agent, 1 MiB blocks)`);
      const uploader = await spawnService(kind, targetOpts, storage);
      let drive;
      try {
        drive = await driveAgents({
          baseUrl: uploader.url,
          archivePath: sourceFile,
          blockSize: MiB,
          agents: 1,
          carveBytes: bytes,
        });
      } finally {
        await uploader.stop();
      }
      const carve = drive.carves[0];
      if (!carve || carve.status !== "SUCCESS" || carve.sha256 !== sourceSha256) {
        const bad = carve?.requests.find((r) => !r.ok);
        throw new Error(
          `downloads: ${kind}: the upload failed: ${drive.errors.join("; ") || `${carve?.status ?? "no carve"}${bad ? ` (${bad.kind} ${String(bad.blockId)}: ${bad.error ?? bad.body})` : ""}`}\n${uploader.tail().slice(-10).join("\n")}`,
        );
      }

      const child = await spawnService(kind, targetOpts, storage);
      const ep = {
        bytes,
        target: kind,
        child,
        idleRss: 0,
        url: `${child.url}/api/v1/carves/${carve.carveId}/archive`,
        headers: ["-H", `X-Vault-Token: ${vault.token}`],
      };
      endpoints.push(ep);
      const problem = await checkMetadata(child.url, vault.token, carve.carveId, bytes, sourceSha256);
      if (problem !== null) throw new Error(`downloads: ${kind}: ${problem}\n${child.tail().slice(-10).join("\n")}`);
      const idle = await readMemory(child.pid);
      ep.idleRss = idle?.rss ?? 0;
      setups.push({
        target: kind,
        carveId: carve.carveId,
        carveBytes: bytes,
        uploadWallMs: Math.round(drive.wallMs),
        uploadMBps: drive.ackedBytes / MB / (drive.wallMs / 1000),
        storage: kind === "gridfs" ? `database ${String(storage.database)}, bucket ${BUCKET}` : "data directory",
        downloadServiceIdleRssBytes: idle?.rss ?? 0,
      });
      log(
        `downloads: ${kind}: carve ${carve.carveId} complete (${(drive.ackedBytes / MB / (drive.wallMs / 1000)).toFixed(1)} MB/s upload); fresh child for the downloads`,
      );
    }

    if (opts.includeBare) {
      const port = await freePort();
      const bare = await spawnNodeService({
        script: opts.build.bareScript,
        cwd: opts.tmpRoot,
        env: { BENCH_PORT: String(port), BENCH_HOST: "127.0.0.1", BENCH_DOWNLOAD_FILE: sourceOf(bareBytes).file },
        port,
      });
      const bareIdle = await readMemory(bare.pid);
      endpoints.unshift({
        bytes: bareBytes,
        target: "bare",
        child: bare,
        idleRss: bareIdle?.rss ?? 0,
        url: `${bare.url}/download`,
        headers: [],
      });
    }

    const report = (r: DownloadResult, ep: Endpoint): void => {
      runs.push(r);
      if (!r.ok) log(`  ${ep.target} child output (last lines):\n    ${ep.child.tail().slice(-8).join("\n    ")}`);
      log(
        `  ${`${r.target} ${r.variant}${r.variant === "full" ? ` #${r.rep + 1}` : ""}`.padEnd(22)} ${(r.throughputMBps.toFixed(1) + " MB/s").padStart(12)}` +
          ` ${(r.bytesReceived / MB).toFixed(1)} MB in ${(r.wallMs / 1000).toFixed(2)} s` +
          ` RSS idle ${(r.rssIdleBytes / MB).toFixed(1)}, before ${(r.rssBeforeBytes / MB).toFixed(1)} -> peak ${(r.rssPeakBytes / MB).toFixed(1)} -> ${(r.rssSettledBytes / MB).toFixed(1)} MB` +
          ` cpu ${r.serviceCpuPercent.toFixed(0)}%${r.sha256Ok === true ? " sha256 ok" : ""}${r.failures.length ? ` FAIL: ${r.failures.join("; ")}` : ""}`,
      );
    };
    for (let rep = 0; rep < opts.repeat; rep++) {
      for (const ep of endpoints) {
        report(await measureDownload(ep, "full", rep, ep.bytes, sourceOf(ep.bytes).sha256, null), ep);
      }
    }
    for (const ep of endpoints) {
      if (ep.target === "bare") continue;
      report(await measureDownload(ep, "verify", 0, ep.bytes, sourceOf(ep.bytes).sha256, null), ep);
      if (opts.slowReader) {
        const slow = await measureDownload(ep, "slow", 0, ep.bytes, sourceOf(ep.bytes).sha256, opts.slowReader);
        // The service must still serve after a client gave up half-way.
        const alive = await fetch(`${ep.child.url}/status`, { signal: AbortSignal.timeout(5000) })
          .then((r) => r.ok)
          .catch(() => false);
        if (!alive) {
          slow.failures.push("the service did not answer GET /status after the slow reader gave up");
          slow.ok = false;
        }
        report(slow, ep);
      }
    }
    // The service's own record of each download (its audit trail, plus its counters), against what curl
    // saw: a download curl received in full must be recorded as completed.
    await sleep(500); // the slow reader's audit event is written once the service saw the connection close
    for (const ep of endpoints) {
      if (ep.target === "bare") continue;
      const setup = setups.find((x) => x.target === ep.target);
      if (!setup) continue;
      const account = await serviceAccount(ep.child.url, vault.token, setup.carveId);
      setup.serviceMetrics = account?.metrics ?? null;
      const mine = runs.filter((r) => r.target === ep.target);
      const events = account?.events ?? null;
      setup.auditEvents = events?.length ?? null;
      if (events === null || events.length !== mine.length) {
        log(
          `  ${ep.target}: ${events === null ? "audit trail not read" : `${events.length} audit events for ${mine.length} downloads`}: not matched`,
        );
        continue;
      }
      mine.forEach((r, i) => {
        const e = events[i] as ServiceRecord;
        r.serviceRecord = e;
        const receivedAll = r.bytesReceived === r.carveBytes && r.curlExit === 0;
        r.serviceRecordConsistent = receivedAll ? e.completed && e.result === "allowed" : e.result === "allowed";
      });
      const wrong = mine.filter((r) => r.serviceRecordConsistent === false);
      if (wrong.length > 0) {
        log(
          `  WARNING ${ep.target}: ${wrong.length} of ${mine.length} downloads that curl received in full are recorded by the service as ` +
            wrong
              .map(
                (r) =>
                  `${r.serviceRecord?.result ?? "?"} ${r.serviceRecord?.code ?? ""} completed=${String(r.serviceRecord?.completed)}`,
              )
              .join(", "),
        );
        const errors = ep.child.tail().filter((l) => l.includes('"level":"error"') || l.includes('"level":50'));
        if (errors.length > 0) log(`  its error log lines (last 2):\n    ${errors.slice(-2).join("\n    ")}`);
      }
    }
  } finally {
    cleanups.delete(stopAll);
    await stopAll();
    cleanups.delete(stopVault);
    await stopVault();
    cleanups.delete(removeSources);
    await removeSources();
  }

  // Ratio to the bare server's full-speed run of the same repetition (same carve size only).
  for (const r of runs) {
    if (r.target === "bare" || r.variant !== "full") continue;
    const bare = runs.find(
      (b) => b.target === "bare" && b.variant === "full" && b.rep === r.rep && b.carveBytes === r.carveBytes,
    );
    r.ratioToBare = bare && bare.throughputMBps > 0 ? r.throughputMBps / bare.throughputMBps : null;
  }
  return {
    carveBytes: opts.carveBytes,
    gridfsCarveBytes: opts.backends.includes("gridfs") ? opts.gridfsCarveBytes : null,
    sources: [...sources.entries()].map(([bytes, src]) => ({ bytes, sha256: src.sha256 })),
    setups,
    runs,
    vaultLookups: { ...vault.counts },
    slowReader: opts.slowReader,
    curlVersion: version,
  };
}
