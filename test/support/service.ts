import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import { loadConfig } from "../../src/config/load.js";
import type { Config } from "../../src/config/schema.js";
import { createLogger } from "../../src/logger.js";
import { startService, type RunningService } from "../../src/server.js";
import { storeOver, type DeploymentStore } from "../services/services-as-store.js";

export const ROOT = path.resolve(import.meta.dirname, "../..");

/** Collects every log line the service writes, to assert on them (and scan them for secrets). */
export class LogCapture extends Writable {
  readonly lines: string[] = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    for (const line of chunk.toString("utf8").split("\n")) if (line) this.lines.push(line);
    cb();
  }
  get text(): string {
    return this.lines.join("\n");
  }
  entries(): Array<Record<string, unknown>> {
    return this.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  }
}

export interface TestService extends RunningService {
  /** The running service's storage, reached through its services (test/services/services-as-store.ts). */
  store: DeploymentStore;
  dataDir: string;
  config: Config;
  logs: LogCapture;
  /** stop() and remove the data directory */
  dispose(): Promise<void>;
}

/**
 * Starts the real service in this process on an ephemeral loopback port with its own data directory.
 * `vaultClock` replaces the Vault authorizer's clock (its decision cache windows), so a test steps over a
 * window instead of sleeping through it; `now` replaces the service's clock (starts, blocks, limits, retention);
 * `consoleDir` where the built web console is.
 */
export async function startTestService(
  env: Record<string, string> = {},
  options: { vaultClock?: () => number; now?: () => Date; consoleDir?: string } = {},
): Promise<TestService> {
  const dataDir = env.CARVE_DATA_DIR ?? (await mkdtemp(path.join(tmpdir(), "carve-svc-")));
  const config = loadConfig({
    cwd: dataDir, // no conf/carve-server.yml there: built-in defaults + env
    // CARVE_MIN_FREE_DISK=0: the suites must not depend on the test machine's free space (limits.test.ts
    // tests the guard itself).
    env: {
      CARVE_PORT: "0",
      CARVE_DATA_DIR: dataDir,
      // info, as in production: at debug the block route leaves its fast path for Express (to log every
      // request), so a debug default would test a path production never takes. Suites that scan debug
      // output ask for it.
      LOG_LEVEL: "info",
      CARVE_SHUTDOWN_GRACE_SECONDS: "5",
      CARVE_MIN_FREE_DISK: "0",
      // the suites' emulated agents all come from 127.0.0.1; limits.test.ts tests the caps themselves
      CARVE_MAX_RECEIVING_CARVES: "0",
      CARVE_MAX_RECEIVING_CARVES_PER_AGENT: "0",
      // the suites count audit events per request; hostile-clients.test.ts tests the aggregation itself
      CARVE_AUDIT_UNAUTHENTICATED_WINDOW_SECONDS: "0",
      ...env,
    },
  });
  const logs = new LogCapture();
  const logger = createLogger(config.logging.level, logs);
  const authorizer =
    options.vaultClock && config.vault.address
      ? await (await import("../../src/auth/vault/vault-authorizer.js")).VaultAuthorizer.create(config.vault, logger, options.vaultClock)
      : undefined;
  const service = await startService({ config, logger, ...(authorizer ? { authorizer } : {}), ...(options.now ? { now: options.now } : {}),
    ...(options.consoleDir ? { consoleDir: options.consoleDir } : {}),
  });
  return {
    ...service,
    store: storeOver(service.services),
    dataDir,
    config,
    logs,
    dispose: async () => {
      await service.stop();
      if (!env.CARVE_DATA_DIR) await rm(dataDir, { recursive: true, force: true });
    },
  };
}

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

export interface ChildService {
  proc: ChildProcess;
  url: string;
  output: string[];
  exited: Promise<number | null>;
}

/** Runs the built service (dist/src/main.js, as `npm start` does) as a child process and waits until
 * GET /status answers. A CARVE_PORT of "0" or none gets a free port picked here. */
export async function spawnService(
  env: Record<string, string>,
  options: number | { timeoutMs?: number; wrapper?: string[] } = {},
): Promise<ChildService & { port: number }> {
  const { timeoutMs = 15_000, wrapper = [] } = typeof options === "number" ? { timeoutMs: options } : options;
  const port = env.CARVE_PORT && env.CARVE_PORT !== "0" ? Number(env.CARVE_PORT) : await freePort();
  // A wrapper command (e.g. nsenter into a namespace) must exec node, keeping the pid.
  const argv = [...wrapper, process.execPath, path.join(ROOT, "dist/src/main.js")];
  const command = argv[0] as string;
  const args = argv.slice(1);
  const proc = spawn(command, args, {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? "",
      CARVE_CONFIG: path.join(ROOT, "conf/carve-server.yml"),
      CARVE_MIN_FREE_DISK: "0",
      CARVE_MAX_RECEIVING_CARVES: "0",
      CARVE_MAX_RECEIVING_CARVES_PER_AGENT: "0",
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
  const deadline = Date.now() + timeoutMs;
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
