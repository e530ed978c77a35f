/**
 * Measures a running carve service on a filled store over HTTP, for the catalog scale benchmark
 * (scripts/bench/catalog-scale.ts): start-up (spawn of dist/src/main.js to the first GET /status 200, polled
 * every 5 ms), RSS after a few list calls, agent starts (POST /start_uploads on one keep-alive connection, each
 * from one of the fleet's node keys and addresses: X-Real-IP, the service trusting loopback as its proxy),
 * listing pages, the node filter and audit pages (the responder API, authorized by scripts/bench/vault-stub.ts,
 * so every figure includes the Vault decision cache and the request's own audit event, as a responder sees it).
 * Latencies are client-side wall clock per request.
 */
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import http from "node:http";
import { setTimeout as sleep } from "node:timers/promises";

import type { NodeProbe } from "./catalog-fill.js";
import { freePort, readCpuSeconds, readMemory } from "./proc.js";
import type { VaultStub } from "./vault-stub.js";

export const DOWNLOAD_POLICY = "osquery-carve-download";
export const ADMIN_POLICY = "osquery-carve-admin";

export interface Timings {
  n: number;
  p50: number;
  p99: number;
  max: number;
  mean: number;
}

/** Nearest-rank percentiles of milliseconds. */
export function timings(ms: number[]): Timings {
  const s = [...ms].sort((a, b) => a - b);
  const at = (p: number): number => s[Math.max(0, Math.ceil(p * s.length) - 1)] ?? Number.NaN;
  const r = (x: number): number => Math.round(x * 100) / 100;
  return { n: s.length, p50: r(at(0.5)), p99: r(at(0.99)), max: r(s[s.length - 1] ?? Number.NaN), mean: r(s.reduce((a, b) => a + b, 0) / Math.max(1, s.length)) };
}

export interface MeasureOptions {
  serviceScript: string;
  cwd: string;
  /** Storage variables (CARVE_STORAGE, CARVE_DATA_DIR, CARVE_MONGODB_*...). */
  storageEnv: Record<string, string>;
  serviceEnv: Record<string, string>;
  vault: VaultStub;
  fleet: Array<{ nodeKey: string; address: string }>;
  /** Node filter probes (none on an empty store). */
  nodes: { busiest: NodeProbe; median: NodeProbe } | null;
  startups: number;
  starts: number;
  warmupStarts: number;
  runs: number;
  log: (line: string) => void;
}

export interface RequestFigures {
  timings: Timings;
  /** Items in the last reply (carves or events), and HTTP statuses other than 200 seen. */
  items: number;
  failures: number;
  /** The service's CPU time (all threads) over the batch / requests: what a request costs, whatever the load. */
  cpuMs: number;
}

export interface StoreFigures {
  startupMs: number[];
  rssAfterListsMB: number;
  /** V8 heap used / total and external memory at that moment (the service's /metrics), MB. */
  heapAfterLists: { usedMB: number; totalMB: number; externalMB: number } | null;
  rssEndMB: number;
  hwmMB: number;
  starts: Timings & { refused: number; refusals: string[]; cpuMs: number };
  requests: Record<string, RequestFigures>;
}

interface Reply {
  status: number;
  body: Buffer;
  ms: number;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function request(url: string, method: string, headers: Record<string, string>, body?: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = http.request(url, { method, headers, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), ms: performance.now() - t0 }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

interface Running {
  pid: number;
  url: string;
  readyMs: number;
  stop(): Promise<void>;
}

/** Spawns the service and times spawn() to the first GET /status 200. */
async function spawnTimed(o: MeasureOptions): Promise<Running> {
  const port = await freePort();
  const env = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: process.env.HOME ?? "/tmp",
    ...o.serviceEnv,
    ...o.storageEnv,
    CARVE_HOST: "127.0.0.1",
    CARVE_PORT: String(port),
    VAULT_ADDR: o.vault.address,
    CARVE_VAULT_AUTH_MODE: "policy",
    CARVE_VAULT_POLICY: DOWNLOAD_POLICY,
    CARVE_VAULT_ADMIN_POLICY: ADMIN_POLICY,
  };
  const t0 = performance.now();
  const proc = spawn(process.execPath, [o.serviceScript], { cwd: o.cwd, env, stdio: ["ignore", "ignore", "pipe"] });
  const tail: string[] = [];
  proc.stderr.on("data", (c: Buffer) => tail.push(...c.toString("utf8").split("\n").filter(Boolean).slice(-20)));
  let exited = false;
  const gone = new Promise<void>((resolve) => proc.once("exit", () => ((exited = true), resolve())));
  const url = `http://127.0.0.1:${port}`;
  for (;;) {
    if (exited) throw new Error(`service exited before answering /status:\n${tail.slice(-20).join("\n")}`);
    const ok = await new Promise<boolean>((resolve) => {
      const req = http.get(`${url}/status`, (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode === 200));
      });
      req.on("error", () => resolve(false));
    });
    if (ok) break;
    if (performance.now() - t0 > 120_000) {
      proc.kill("SIGKILL");
      throw new Error(`service did not answer /status within 120 s:\n${tail.slice(-20).join("\n")}`);
    }
    await sleep(5);
  }
  const readyMs = performance.now() - t0;
  if (proc.pid === undefined) throw new Error("no pid");
  return {
    pid: proc.pid,
    url,
    readyMs,
    stop: async () => {
      if (!exited) proc.kill("SIGTERM");
      const timer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
      await gone;
      clearTimeout(timer);
    },
  };
}

async function cpuPerRequest(pid: number, before: number | null, n: number): Promise<number> {
  const after = await readCpuSeconds(pid);
  return before === null || after === null ? Number.NaN : Math.round(((after - before) * 1000 * 100) / n) / 100;
}

const mb = (bytes: number): number => Math.round(bytes / 100_000) / 10;

/** Heap figures of prom-client's default metrics, to tell JavaScript memory from the rest of the RSS. */
async function heapOf(url: string): Promise<StoreFigures["heapAfterLists"]> {
  const r = await request(`${url}/metrics`, "GET", {});
  if (r.status !== 200) return null;
  const text = r.body.toString("utf8");
  const value = (name: string): number => Number(new RegExp(`^${name} (\\S+)`, "m").exec(text)?.[1] ?? Number.NaN);
  return { usedMB: mb(value("nodejs_heap_size_used_bytes")), totalMB: mb(value("nodejs_heap_size_total_bytes")), externalMB: mb(value("nodejs_external_memory_bytes")) };
}

/** One responder query `runs` times; `follow` pages on through nextCursor instead of repeating page one. */
async function responder(url: string, pid: number, path: string, o: MeasureOptions, follow = false): Promise<RequestFigures> {
  const cpu0 = await readCpuSeconds(pid);
  const headers = { "X-Vault-Token": o.vault.token };
  const ms: number[] = [];
  let items = 0;
  let failures = 0;
  let next: string | null = null;
  for (let i = 0; i < o.runs; i++) {
    const q = follow && next ? `${path}&cursor=${encodeURIComponent(next)}` : path;
    const r = await request(`${url}${q}`, "GET", headers);
    ms.push(r.ms);
    if (r.status !== 200) {
      failures++;
      continue;
    }
    const page = JSON.parse(r.body.toString("utf8")) as { carves?: unknown[]; events?: unknown[]; nextCursor: string | null };
    items = (page.carves ?? page.events ?? []).length;
    next = page.nextCursor;
  }
  return { timings: timings(ms), items, failures, cpuMs: await cpuPerRequest(pid, cpu0, o.runs) };
}

/** Spawns the service `startups` times on the store, then measures requests on the last one. */
export async function measureStore(o: MeasureOptions): Promise<StoreFigures> {
  const startupMs: number[] = [];
  let svc: Running | null = null;
  for (let i = 0; i < o.startups; i++) {
    if (svc) await svc.stop();
    svc = await spawnTimed(o);
    startupMs.push(Math.round(svc.readyMs));
  }
  if (!svc) throw new Error("startups must be at least 1");
  const running = svc;
  try {
    const url = running.url;
    const headers = { "X-Vault-Token": o.vault.token };
    for (let i = 0; i < 5; i++) await request(`${url}/api/v1/carves?limit=100`, "GET", headers);
    for (let i = 0; i < 2; i++) await request(`${url}/api/v1/audit?limit=100`, "GET", headers);
    await sleep(1000);
    const rssAfterLists = (await readMemory(running.pid))?.rss ?? 0;
    const heapAfterLists = await heapOf(url);
    o.log(
      `  started in ${startupMs.join(", ")} ms; RSS after 5 list + 2 audit calls ${mb(rssAfterLists)} MB` +
        (heapAfterLists ? ` (V8 heap ${heapAfterLists.usedMB} of ${heapAfterLists.totalMB} MB, external ${heapAfterLists.externalMB} MB)` : ""),
    );

    const requests: Record<string, RequestFigures> = {};
    const run = async (name: string, path: string, follow = false): Promise<void> => {
      requests[name] = await responder(url, running.pid, path, o, follow);
      const t = requests[name].timings;
      o.log(`  ${name.padEnd(22)} p50 ${t.p50} ms p99 ${t.p99} ms cpu ${requests[name].cpuMs} ms/request (${requests[name].items} items${requests[name].failures ? `, ${requests[name].failures} FAILED` : ""})`);
    };
    await run("list", "/api/v1/carves?limit=100");
    await run("list next pages", "/api/v1/carves?limit=100", true);
    await run("list complete", "/api/v1/carves?limit=100&status=complete");
    await run("list receiving", "/api/v1/carves?limit=100&status=receiving");
    if (o.nodes) {
      await run("node busiest (8 hex)", `/api/v1/carves?limit=100&node=${o.nodes.busiest.sha256.slice(0, 8)}`);
      await run("node median (8 hex)", `/api/v1/carves?limit=100&node=${o.nodes.median.sha256.slice(0, 8)}`);
      await run("node busiest (64 hex)", `/api/v1/carves?limit=100&node=${o.nodes.busiest.sha256}`);
    }
    await run("node none (8 hex)", "/api/v1/carves?limit=100&node=00000000");
    await run("audit", "/api/v1/audit?limit=100");
    await run("audit next pages", "/api/v1/audit?limit=100", true);
    await run("audit action", "/api/v1/audit?limit=100&action=carve.download");

    const startMs: number[] = [];
    const refusals: string[] = [];
    let cpu0: number | null = null;
    for (let i = 0; i < o.warmupStarts + o.starts; i++) {
      if (i === o.warmupStarts) cpu0 = await readCpuSeconds(running.pid);
      const node = o.fleet[Math.floor(Math.random() * o.fleet.length)] ?? { nodeKey: "", address: "10.255.255.254" };
      const body = JSON.stringify({
        block_count: 1,
        block_size: 8192,
        carve_size: 4000,
        carve_id: randomUUID(),
        request_id: randomUUID(),
        node_key: node.nodeKey,
      });
      const r = await request(`${url}/start_uploads`, "POST", { "Content-Type": "application/json", "X-Real-IP": node.address, "User-Agent": "osquery/5.12.1" }, body);
      if (i >= o.warmupStarts) startMs.push(r.ms);
      if (r.status !== 200 || !r.body.toString("utf8").includes("session_id")) refusals.push(`${r.status} ${r.body.toString("utf8").slice(0, 120)}`);
    }
    const starts = { ...timings(startMs), refused: refusals.length, refusals: refusals.slice(0, 5), cpuMs: await cpuPerRequest(running.pid, cpu0, o.starts) };
    o.log(`  starts (${o.starts}, after ${o.warmupStarts} unmeasured) p50 ${starts.p50} ms p99 ${starts.p99} ms max ${starts.max} ms cpu ${starts.cpuMs} ms/start${starts.refused ? `, ${starts.refused} REFUSED: ${starts.refusals[0]}` : ""}`);
    const end = await readMemory(running.pid);
    return { startupMs, rssAfterListsMB: mb(rssAfterLists), heapAfterLists, rssEndMB: mb(end?.rss ?? 0), hwmMB: mb(end?.hwm ?? 0), starts, requests };
  } finally {
    await running.stop();
  }
}
