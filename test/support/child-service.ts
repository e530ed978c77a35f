/**
 * The built service (dist/src/main.js) as a child process, optionally run under a wrapper command (for
 * example `nsenter` into a mount namespace whose data directory is a small tmpfs), and its memory as the
 * kernel reports it.
 */
import { readFileSync } from "node:fs";
import { spawnService, type ChildService } from "./service.js";

export interface SpawnWithOptions {
  /** CARVE_* variables; CARVE_CONFIG defaults to none (built-in defaults). */
  env: Record<string, string>;
  /** Command and arguments the node process is started under (it must exec node, keeping the pid). */
  wrapper?: string[];
  timeoutMs?: number;
}

export interface WrappedChildService extends ChildService {
  port: number;
}

/** spawnService with built-in defaults (no conf file) and an optional wrapper command. */
export async function spawnServiceWith(options: SpawnWithOptions): Promise<WrappedChildService> {
  return spawnService(
    // Built-in defaults plus the environment, whatever conf/carve-server.yml says (as startTestService does).
    { CARVE_CONFIG: "/dev/null", ...options.env },
    { ...(options.wrapper ? { wrapper: options.wrapper } : {}), ...(options.timeoutMs ? { timeoutMs: options.timeoutMs } : {}) },
  );
}

/** Resident and peak resident memory of a live process, in bytes (/proc/<pid>/status). */
export function memoryOf(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (field: string): number => {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status);
    return m ? Number(m[1]) * 1024 : 0;
  };
  return { rss: kb("VmRSS"), peak: kb("VmHWM") };
}

/** SIGTERM (or SIGKILL) a child and wait for it; harmless when it already exited. */
export async function stopChild(child: ChildService, signal: NodeJS.Signals = "SIGTERM"): Promise<number | null> {
  if (child.proc.exitCode === null && child.proc.signalCode === null) child.proc.kill(signal);
  return child.exited;
}

/** Waits (polling, generous deadline) until a line of the child's output matches; returns that line. */
export async function waitForOutput(child: ChildService, pattern: RegExp, timeoutMs = 30_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const line = child.output.find((l) => pattern.test(l));
    if (line !== undefined) return line;
    if (Date.now() > deadline) throw new Error(`no output line matched ${pattern} within ${timeoutMs} ms:\n${child.output.join("\n")}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The value of one unlabelled metric in GET /metrics (Prometheus text), or null when absent. */
export async function metricValue(baseUrl: string, name: string): Promise<number | null> {
  const text = await (await fetch(`${baseUrl}/metrics`)).text();
  const m = new RegExp(`^${name} (\\S+)$`, "m").exec(text);
  return m ? Number(m[1]) : null;
}

/** Polls GET /metrics (generous deadline) until `name` satisfies `ok`. */
export async function waitForMetric(baseUrl: string, name: string, ok: (v: number) => boolean, timeoutMs = 30_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await metricValue(baseUrl, name);
    if (v !== null && ok(v)) return v;
    if (Date.now() > deadline) throw new Error(`${name} stayed ${v} for ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
