/**
 * The built service (dist/src/main.js) as a child process, optionally run under a wrapper command (for
 * example `nsenter` into a mount namespace whose data directory is a small tmpfs), and its memory as the
 * kernel reports it.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { ROOT, freePort, type ChildService } from "./service.js";

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

/** Like spawnService, with a wrapper command; waits until GET /status answers. */
export async function spawnServiceWith(options: SpawnWithOptions): Promise<WrappedChildService> {
  const { env } = options;
  const port = env.CARVE_PORT && env.CARVE_PORT !== "0" ? Number(env.CARVE_PORT) : await freePort();
  const argv = [...(options.wrapper ?? []), process.execPath, path.join(ROOT, "dist/src/main.js")];
  const [command, ...args] = argv as [string, ...string[]];
  const proc = spawn(command, args, {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? "",
      // Built-in defaults plus the environment, whatever conf/carve-server.yml says (as startTestService does).
      CARVE_CONFIG: "/dev/null",
      ...env,
      CARVE_PORT: String(port),
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const output: string[] = [];
  const collect = (chunk: Buffer): void => {
    for (const line of chunk.toString("utf8").split("\n")) if (line) output.push(line);
  };
  proc.stdout?.on("data", collect);
  proc.stderr?.on("data", collect);
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((resolve) =>
    proc.once("exit", (code) => {
      exitCode = code;
      resolve(code);
    }),
  );
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + (options.timeoutMs ?? 15_000);
  for (;;) {
    if (exitCode !== undefined) throw new Error(`service exited with ${exitCode} before listening:\n${output.join("\n")}`);
    try {
      const res = await fetch(`${url}/status`);
      if (res.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`service did not start:\n${output.join("\n")}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return { proc, url, output, exited, port };
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
