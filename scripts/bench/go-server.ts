/**
 * The Go reference target (scripts/bench/go-carve-server: a carve server of the kind osquery users run today).
 * Built with the local `go` into ~/.cache/osquery-carve-server/ (outside the repository), under a name that
 * includes a hash of its source and of `go version`, so a change to either rebuilds it and an unchanged one is
 * reused. Without `go` the benchmark skips this target and says what to install.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { access, mkdir, readdir, readFile, rename, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

import { ROOT } from "./proc.js";

const run = promisify(execFile);

export const GO_SOURCE_DIR = path.join(ROOT, "scripts/bench/go-carve-server");

export const GO_MISSING =
  "the Go reference server needs the Go toolchain (1.18 or later) on PATH: install it (Debian/Ubuntu: " +
  "apt-get install golang-go, or https://go.dev/dl/) and run the bench again";

export type GoServerBuild =
  { ok: true; binary: string; goVersion: string; built: boolean } | { ok: false; reason: string };

/** The binary for the current source, building it when the cache has none. */
export async function ensureGoServer(log: (line: string) => void): Promise<GoServerBuild> {
  let goVersion: string;
  try {
    goVersion = (await run("go", ["version"], { timeout: 30_000 })).stdout.trim();
  } catch (err) {
    const missing = (err as NodeJS.ErrnoException).code === "ENOENT";
    return { ok: false, reason: missing ? GO_MISSING : `\`go version\` failed: ${(err as Error).message}` };
  }
  const hash = createHash("sha256").update(goVersion);
  for (const f of (await readdir(GO_SOURCE_DIR)).filter((n) => n.endsWith(".go") || n === "go.mod").sort()) {
    hash.update(f).update(await readFile(path.join(GO_SOURCE_DIR, f)));
  }
  const cacheDir = path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), ".cache"), "osquery-carve-server");
  const binary = path.join(cacheDir, `go-carve-server-${hash.digest("hex").slice(0, 16)}`);
  try {
    await access(binary);
    return { ok: true, binary, goVersion, built: false };
  } catch {
    // not built yet for this source
  }
  await mkdir(cacheDir, { recursive: true });
  const tmp = `${binary}.tmp-${process.pid}`;
  log(`building the Go reference server (${goVersion}) into ${binary}`);
  try {
    await run("go", ["build", "-buildvcs=false", "-o", tmp, "."], {
      cwd: GO_SOURCE_DIR,
      timeout: 300_000,
      env: { ...process.env, CGO_ENABLED: "0" },
    });
    await rename(tmp, binary);
  } catch (err) {
    await rm(tmp, { force: true });
    const e = err as { stderr?: string; message: string };
    return { ok: false, reason: `go build in ${GO_SOURCE_DIR} failed: ${(e.stderr ?? e.message).trim()}` };
  }
  return { ok: true, binary, goVersion, built: true };
}
