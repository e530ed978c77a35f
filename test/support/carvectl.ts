import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { ROOT } from "./service.js";

/** The built binary (bash scripts/build.sh), as package.json "bin" names it. */
export const CARVECTL = path.join(ROOT, "dist/src/cli/carvectl.js");

export interface CliRun {
  code: number | null;
  stdout: Buffer;
  stderr: string;
  /** stdout parsed as JSON (throws when it is not). */
  json<T = Record<string, unknown>>(): T;
}

export interface CliOptions {
  env?: Record<string, string>;
  cwd?: string;
  timeoutMs?: number;
}

/** Starts carvectl with a clean environment: only PATH, HOME and what `env` adds. */
export function startCarvectl(args: string[], options: CliOptions = {}): { proc: ChildProcess; done: Promise<CliRun> } {
  const proc = spawn(process.execPath, [CARVECTL, ...args], {
    cwd: options.cwd ?? ROOT,
    env: { PATH: process.env.PATH ?? "", ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  proc.stdout?.on("data", (c: Buffer) => out.push(c));
  proc.stderr?.on("data", (c: Buffer) => err.push(c));
  const timer = setTimeout(() => proc.kill("SIGKILL"), options.timeoutMs ?? 60_000);
  const done = new Promise<CliRun>((resolve) => {
    proc.on("close", (code) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out);
      resolve({ code, stdout, stderr: Buffer.concat(err).toString("utf8"), json: <T>() => JSON.parse(stdout.toString("utf8")) as T });
    });
  });
  return { proc, done };
}

export function carvectl(args: string[], options: CliOptions = {}): Promise<CliRun> {
  return startCarvectl(args, options).done;
}

/** Runs carvectl on a pseudo-terminal (util-linux `script`), for what it prints to a person. */
export function carvectlOnTty(args: string[], options: CliOptions = {}): Promise<CliRun> {
  const command = [process.execPath, CARVECTL, ...args].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(" ");
  return new Promise((resolve) => {
    const proc = spawn("script", ["-qefc", command, "/dev/null"], {
      cwd: options.cwd ?? ROOT,
      env: { PATH: process.env.PATH ?? "", TERM: "dumb", ...options.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    proc.stdout.on("data", (c: Buffer) => out.push(c));
    proc.stderr.on("data", (c: Buffer) => out.push(c));
    proc.on("close", (code) => {
      const stdout = Buffer.concat(out);
      resolve({ code, stdout, stderr: "", json: <T>() => JSON.parse(stdout.toString("utf8")) as T });
    });
  });
}
