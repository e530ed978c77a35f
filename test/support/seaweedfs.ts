/**
 * A real SeaweedFS for the S3 tests: `weed mini` (master, volume, filer and S3 gateway in one process) on
 * loopback, with S3 authentication on (one identity with an access key and secret; anonymous requests are
 * refused) and its own free port for every listener it opens, so several instances (two test files at once)
 * never collide. The binary comes from scripts/seaweedfs.sh (built once from its Go module and cached).
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { CreateBucketCommand, HeadBucketCommand, S3Client, type S3ClientConfig } from "@aws-sdk/client-s3";

const run = promisify(execFile);
const SCRIPT = path.resolve(import.meta.dirname, "../../scripts/seaweedfs.sh");

/**
 * Every flag of `weed mini` that opens a listener, set explicitly: left alone each defaults to a fixed port
 * (9333, 8888, 8333, ...) or to "http port + 10000" for its gRPC twin. Listeners the tests do not need are
 * switched off instead (0 disables them, per `weed mini -h`).
 */
const PORT_FLAGS = [
  "master.port",
  "master.port.grpc",
  "volume.port",
  "volume.port.grpc",
  "filer.port",
  "filer.port.grpc",
  "s3.port",
  "s3.port.grpc",
  "admin.port",
  "admin.port.grpc",
] as const;
type PortFlag = (typeof PORT_FLAGS)[number];

export interface SeaweedFs {
  /** http://127.0.0.1:PORT of the S3 gateway. */
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** An identity that may read and list but not write. */
  readOnly: { accessKeyId: string; secretAccessKey: string };
  /** A bucket created at start. */
  bucket: string;
  dir: string;
  /** A client with the right credentials (path-style, as SeaweedFS needs on loopback) and `settings` on top. */
  client(settings?: S3ClientConfig): S3Client;
  /** Creates another bucket (with Object Lock, which also turns versioning on, when asked). */
  createBucket(name: string, options?: { objectLock?: boolean }): Promise<void>;
  /** SIGTERM (then SIGKILL after 10 s); the data directory stays, `start()` serves it again on the same ports. */
  stop(): Promise<void>;
  start(): Promise<void>;
  /** Stops it for good and removes its directory. */
  destroy(): Promise<void>;
  /** The last lines of its log, for failure messages. */
  logTail(lines?: number): Promise<string>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

async function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once("error", () => resolve(false));
    srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
  });
}

/**
 * Distinct free ports below the kernel's ephemeral range: a port the kernel hands out (listen on 0) lies inside it,
 * and an outbound connection of anything else running may claim it before weed binds it ("bind: address already
 * in use" during a busy test run; weed warns about exactly that). Falls back to kernel-chosen ports if the low
 * range is exhausted.
 */
async function freePorts(n: number): Promise<number[]> {
  const range = await readFile("/proc/sys/net/ipv4/ip_local_port_range", "utf8").catch(() => "32768 60999");
  const floor = Number(range.trim().split(/\s+/)[0]) || 32768;
  const low = Math.min(15_000, floor - 1000);
  const ports = new Set<number>();
  for (let tries = 0; ports.size < n && tries < n * 50; tries++) {
    const port = low + Math.floor(Math.random() * (floor - low));
    if (!ports.has(port) && (await bindable(port))) ports.add(port);
  }
  while (ports.size < n) ports.add(await freePort());
  return [...ports];
}

/** The weed binary, built by scripts/seaweedfs.sh the first time (about 10 minutes). */
export async function weedBinary(): Promise<string> {
  const { stdout } = await run("bash", [SCRIPT, "install"], { timeout: 30 * 60_000, maxBuffer: 1 << 20 });
  const bin = stdout.trim().split("\n").pop() ?? "";
  if (!bin) throw new Error("scripts/seaweedfs.sh install printed no path");
  return bin;
}

const live = new Set<ChildProcess>();
// A test file that crashes must not leave servers behind holding ports and disk.
process.once("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

export async function startSeaweedFs(options: { bucket?: string } = {}): Promise<SeaweedFs> {
  const bin = await weedBinary();
  const dir = await mkdtemp(path.join(tmpdir(), "carve-seaweedfs-"));
  const dataDir = path.join(dir, "data");
  await mkdir(dataDir);
  const region = "us-east-1";
  const accessKeyId = `carve${randomBytes(6).toString("hex")}`;
  const secretAccessKey = randomBytes(24).toString("base64url");
  const readOnly = {
    accessKeyId: `reader${randomBytes(6).toString("hex")}`,
    secretAccessKey: randomBytes(24).toString("base64url"),
  };
  const bucket = options.bucket ?? "carves";
  const configFile = path.join(dir, "s3.json");
  await writeFile(
    configFile,
    JSON.stringify({
      identities: [
        {
          name: "carve-server",
          credentials: [{ accessKey: accessKeyId, secretKey: secretAccessKey }],
          actions: ["Admin", "Read", "List", "Tagging", "Write"],
        },
        {
          name: "carve-reader",
          credentials: [{ accessKey: readOnly.accessKeyId, secretKey: readOnly.secretAccessKey }],
          actions: ["Read", "List"],
        },
      ],
    }),
  );
  const pickPorts = async (): Promise<Record<PortFlag, number>> => {
    const portList = await freePorts(PORT_FLAGS.length);
    return Object.fromEntries(PORT_FLAGS.map((f, i) => [f, portList[i] as number])) as Record<PortFlag, number>;
  };
  let ports = await pickPorts();
  const argsOf = (ports: Record<PortFlag, number>): string[] => [
    "mini",
    `-dir=${dataDir}`,
    "-ip=127.0.0.1",
    "-ip.bind=127.0.0.1",
    "-admin.ui=false",
    `-s3.config=${configFile}`,
    ...PORT_FLAGS.map((f) => `-${f}=${ports[f]}`),
    "-admin.port.legacy=0",
    "-s3.port.iceberg=0",
    "-s3.port.lance=0",
    "-webdav=false",
    "-master.telemetry=false",
    // The tests store a few GiB at most: small volumes keep the preallocated disk small too.
    "-master.volumeSizeLimitMB=256",
    `-filer.localSocket=${path.join(dir, "filer.sock")}`,
    `-s3.localSocket=${path.join(dir, "s3.sock")}`,
  ];
  let args = argsOf(ports);
  let endpoint = `http://127.0.0.1:${ports["s3.port"]}`;
  const logFile = path.join(dir, "weed.log");
  let child: ChildProcess | null = null;

  const client = (settings: S3ClientConfig = {}): S3Client =>
    new S3Client({
      endpoint,
      region,
      forcePathStyle: true,
      credentials: { accessKeyId, secretAccessKey },
      maxAttempts: 1,
      ...settings,
    });

  const logTail = async (lines = 40): Promise<string> => {
    const text = await readFile(logFile, "utf8").catch(() => "");
    return text.split("\n").slice(-lines).join("\n");
  };

  const stop = async (): Promise<void> => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) {
      child = null;
      return;
    }
    const exited = new Promise<void>((resolve) => c.once("exit", () => resolve()));
    c.kill("SIGTERM");
    const timer = setTimeout(() => c.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(timer);
    live.delete(c);
    child = null;
  };

  const start = async (): Promise<void> => {
    if (child) throw new Error("SeaweedFS already runs");
    const { openSync, closeSync } = await import("node:fs");
    const fd = openSync(logFile, "a");
    const c = spawn(bin, args, { cwd: dir, stdio: ["ignore", fd, fd] });
    closeSync(fd);
    child = c;
    live.add(c);
    c.once("exit", () => live.delete(c));
    const s3 = client();
    const deadline = Date.now() + 90_000;
    try {
      for (;;) {
        if (c.exitCode !== null || c.signalCode !== null) {
          throw new Error(`weed mini exited during start-up (${c.exitCode ?? c.signalCode}):\n${await logTail()}`);
        }
        // Ready when an authenticated request reaches the filer behind the gateway, not merely the port.
        try {
          await s3.send(new HeadBucketCommand({ Bucket: bucket }));
          return;
        } catch (err) {
          const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
          if (status === 404) {
            try {
              await s3.send(new CreateBucketCommand({ Bucket: bucket }));
              return;
            } catch {
              // The filer may still be joining the master; try again.
            }
          }
        }
        if (Date.now() > deadline) throw new Error(`SeaweedFS S3 did not answer within 90 s:\n${await logTail()}`);
        await new Promise((r) => setTimeout(r, 250));
      }
    } catch (err) {
      await stop();
      throw err;
    } finally {
      s3.destroy();
    }
  };

  // A port taken by someone else between the pick and weed's bind: pick again (the first start only; a restart
  // keeps its ports, as callers expect).
  for (let attempt = 1; ; attempt++) {
    try {
      await start();
      break;
    } catch (err) {
      if (attempt >= 3 || !/address already in use/.test(String(err))) throw err;
      // A fresh data directory: nothing of the failed start (which knew the old ports) is kept.
      await rm(dataDir, { recursive: true, force: true });
      await mkdir(dataDir);
      ports = await pickPorts();
      args = argsOf(ports);
      endpoint = `http://127.0.0.1:${ports["s3.port"]}`;
    }
  }
  return {
    endpoint,
    region,
    accessKeyId,
    secretAccessKey,
    readOnly,
    bucket,
    dir,
    client,
    async createBucket(name, opts = {}) {
      const s3 = client();
      try {
        await s3.send(
          new CreateBucketCommand({ Bucket: name, ...(opts.objectLock ? { ObjectLockEnabledForBucket: true } : {}) }),
        );
      } finally {
        s3.destroy();
      }
    },
    stop,
    start,
    async destroy() {
      await stop();
      await rm(dir, { recursive: true, force: true });
    },
    logTail,
  };
}
