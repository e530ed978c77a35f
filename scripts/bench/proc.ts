/**
 * Child processes for the benchmark: spawn a Node script, wait until it answers GET /status, watch its
 * memory (VmRSS sampled, VmHWM at the end) and CPU time from /proc, stop it with SIGTERM.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

/** Repository root (this file runs from dist/scripts/bench/). */
export const ROOT = path.resolve(import.meta.dirname, "../../..");

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

let clockTicks: number | undefined;
/** Clock ticks per second of /proc/<pid>/stat times (getconf CLK_TCK, 100 on Linux in practice). */
function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** VmRSS and VmHWM of a live process, in bytes (null when it is gone). */
export async function readMemory(pid: number): Promise<{ rss: number; hwm: number } | null> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/status`, "utf8");
  } catch {
    return null;
  }
  const kb = (name: string): number => {
    const m = new RegExp(`^${name}:\\s+(\\d+)\\s+kB`, "m").exec(text);
    return m?.[1] !== undefined ? Number(m[1]) * 1024 : 0;
  };
  return { rss: kb("VmRSS"), hwm: kb("VmHWM") };
}

/** User + system CPU seconds a live process has used so far (null when it is gone). */
export async function readCpuSeconds(pid: number): Promise<number | null> {
  const t = await readCpuTimes(pid);
  return t === null ? null : t.user + t.system;
}

/** User and system (kernel: syscalls such as socket and file writes) CPU seconds of a live process so far. */
export async function readCpuTimes(pid: number): Promise<{ user: number; system: number } | null> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/stat`, "utf8");
  } catch {
    return null;
  }
  // Fields after the ")" that closes the command name: state is field 3, utime 14, stime 15.
  const rest = text.slice(text.lastIndexOf(")") + 2).split(" ");
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return null;
  return { user: utime / ticksPerSecond(), system: stime / ticksPerSecond() };
}

/** Samples VmRSS every `intervalMs` and keeps the maximum. */
export class RssSampler {
  private timer: NodeJS.Timeout | undefined;
  private reading = false;
  maxRss = 0;
  samples = 0;
  /** [ms since start(), VmRSS in MB (10^6 bytes), one decimal] per sample. */
  readonly timeline: Array<[number, number]> = [];
  private t0 = 0;

  constructor(
    private readonly pid: number,
    private readonly intervalMs = 100,
  ) {}

  start(): void {
    this.t0 = performance.now();
    this.timer = setInterval(() => {
      if (this.reading) return;
      this.reading = true;
      readMemory(this.pid)
        .then((m) => {
          if (m) {
            this.samples++;
            this.timeline.push([Math.round(performance.now() - this.t0), Math.round(m.rss / 100_000) / 10]);
            if (m.rss > this.maxRss) this.maxRss = m.rss;
          }
        })
        .catch(() => undefined)
        .finally(() => {
          this.reading = false;
        });
    }, this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}

export interface NodeChild {
  proc: ChildProcess;
  pid: number;
  url: string;
  /** Last lines of the child's stdout and stderr (bounded). */
  tail(): string[];
  exited: Promise<number | null>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit code (null when killed). */
  stop(graceMs?: number): Promise<number | null>;
}

const TAIL_LINES = 60;

/**
 * Runs `node [nodeArgs] script` with exactly `env` (plus PATH and HOME) and waits until
 * GET <url>/status answers 200.
 */
export async function spawnNodeService(opts: {
  script: string;
  nodeArgs?: string[];
  env: Record<string, string>;
  port: number;
  /** Working directory (default: the repository root). */
  cwd?: string;
  timeoutMs?: number;
}): Promise<NodeChild> {
  return spawnService({
    ...opts,
    name: path.basename(opts.script),
    command: process.execPath,
    args: [...(opts.nodeArgs ?? []), opts.script],
  });
}

/** Runs `command args` (any executable, e.g. the Go reference server) like spawnNodeService. */
export async function spawnService(opts: {
  /** For error messages (default: the command's file name). */
  name?: string;
  command: string;
  args: string[];
  env: Record<string, string>;
  port: number;
  cwd?: string;
  timeoutMs?: number;
}): Promise<NodeChild> {
  const name = opts.name ?? path.basename(opts.command);
  const proc = spawn(opts.command, opts.args, {
    cwd: opts.cwd ?? ROOT,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: process.env.HOME ?? "/tmp", ...opts.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines: string[] = [];
  const collect = (chunk: Buffer): void => {
    for (const line of chunk.toString("utf8").split("\n")) {
      if (line === "") continue;
      lines.push(line.length > 2000 ? `${line.slice(0, 2000)}...` : line);
      if (lines.length > TAIL_LINES) lines.shift();
    }
  };
  proc.stdout?.on("data", collect);
  proc.stderr?.on("data", collect);
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((resolve) => {
    proc.once("exit", (code) => {
      exitCode = code;
      resolve(code);
    });
  });
  const url = `http://127.0.0.1:${opts.port}`;
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  for (;;) {
    if (exitCode !== undefined) {
      throw new Error(`${name} exited with ${String(exitCode)} before listening:\n${lines.join("\n")}`);
    }
    try {
      const res = await fetch(`${url}/status`, { signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer();
      if (res.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`${name} did not answer GET /status:\n${lines.join("\n")}`);
    }
    await sleep(50);
  }
  const pid = proc.pid;
  if (pid === undefined) throw new Error(`${name}: no pid`);
  return {
    proc,
    pid,
    url,
    tail: () => [...lines],
    exited,
    stop: async (graceMs = 20_000): Promise<number | null> => {
      if (exitCode !== undefined) return exitCode;
      proc.kill("SIGTERM");
      const timer = setTimeout(() => proc.kill("SIGKILL"), graceMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/** Busy and total CPU time of the whole machine so far, in clock ticks summed over all CPUs (/proc/stat). */
export async function readMachineCpu(): Promise<{ busy: number; total: number } | null> {
  let text: string;
  try {
    text = await readFile("/proc/stat", "utf8");
  } catch {
    return null;
  }
  const line = text.split("\n").find((l) => l.startsWith("cpu "));
  if (!line) return null;
  // user nice system idle iowait irq softirq steal (guest times are already in user/nice).
  const v = line.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = v.reduce((a, b) => a + b, 0);
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  return { busy: total - idle, total };
}

/** Seconds of one core per clock tick of /proc/stat. */
export function secondsPerTick(): number {
  return 1 / ticksPerSecond();
}

/** CPU seconds so far of each thread of a live process, by thread id, with the thread's name (comm). */
export async function readThreadCpu(pid: number): Promise<Map<number, { name: string; seconds: number }>> {
  const out = new Map<number, { name: string; seconds: number }>();
  let tids: string[];
  try {
    tids = await readdir(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      const text = await readFile(`/proc/${pid}/task/${tid}/stat`, "utf8");
      // Node names all its threads "node": the main thread (JavaScript) is the one whose id is the pid.
      const comm = text.slice(text.indexOf("(") + 1, text.lastIndexOf(")"));
      const name = Number(tid) === pid ? "main" : `${comm} threads`;
      const rest = text.slice(text.lastIndexOf(")") + 2).split(" ");
      out.set(Number(tid), { name, seconds: (Number(rest[11]) + Number(rest[12])) / ticksPerSecond() });
    } catch {
      // the thread ended
    }
  }
  return out;
}

/**
 * CPU seconds per thread name between two readThreadCpu snapshots: "main" (for Node the thread running
 * JavaScript), "<name> threads" the others (Node: the libuv pool doing asynchronous file I/O and V8's
 * helpers, GC and compiling; Go: all of its threads).
 */
export function threadCpuDelta(
  before: Map<number, { name: string; seconds: number }>,
  after: Map<number, { name: string; seconds: number }>,
): Record<string, number> {
  const byName: Record<string, number> = {};
  for (const [tid, t] of after) {
    const d = t.seconds - (before.get(tid)?.seconds ?? 0);
    if (d > 0) byName[t.name] = Math.round(((byName[t.name] ?? 0) + d) * 1000) / 1000;
  }
  return byName;
}
