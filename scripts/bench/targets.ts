/**
 * What the benchmark drives: the carve service on one backend (a fresh data directory or a fresh MongoDB
 * database per case), or the bare reference server. Each is a child process on its own free port.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes, randomFillSync } from "node:crypto";
import { createReadStream } from "node:fs";
import { cp, mkdir, mkdtemp, open, rm, stat, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { MongoClient } from "mongodb";

import { freePort, ROOT, spawnNodeService, spawnService as spawnProcess, type NodeChild } from "./proc.js";
import { startWireCounter, type WireCounter } from "./wire-counter.js";

const run = promisify(execFile);

/** bare: scripts/bench/bare-server.ts; go: scripts/bench/go-carve-server; filesystem, gridfs: the service. */
export type TargetKind = "bare" | "go" | "filesystem" | "gridfs";

export const BUCKET = "carves";

export interface Verification {
  ok: boolean;
  detail?: string;
}

export interface RunningTarget {
  kind: TargetKind;
  child: NodeChild;
  /** Checks that carve `carveId` is stored complete with this SHA-256 and size (always ok for bare). */
  verify(carveId: string, expectedSha256: string, size: number): Promise<Verification>;
  /** Stops the child if it still runs, then removes its data (directory or database). */
  dispose(): Promise<void>;
  /** GridFS: counts the service's messages to the database (its connection goes through it). */
  wire?: WireCounter;
}

export interface TargetOptions {
  /** Parent of per-case data directories, and the children's working directory. */
  tmpRoot: string;
  /** The build the children run (see snapshotBuild). */
  build: BuildSnapshot;
  logLevel: string;
  /** Extra node options for the child (e.g. --cpu-prof). */
  nodeArgs: string[];
  /** Extra environment of the service child (not the bare server), e.g. MALLOC_ARENA_MAX. */
  serviceEnv: Record<string, string>;
  mongo?: MongoWire;
  /** The built Go reference server (scripts/bench/go-server.ts), for the go target. */
  goBinary?: string;
}

/** Writes `bytes` random bytes (the "archive": raw random data, incompressible). */
export async function makeSourceFile(file: string, bytes: number): Promise<void> {
  const fh = await open(file, "w");
  try {
    const buf = Buffer.alloc(Math.min(bytes, 1024 * 1024));
    for (let done = 0; done < bytes;) {
      const n = Math.min(buf.length, bytes - done);
      randomFillSync(buf, 0, n);
      await fh.write(buf, 0, n);
      done += n;
    }
  } finally {
    await fh.close();
  }
}

export async function sha256OfFile(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file, { highWaterMark: 1024 * 1024 })) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

// ------------------------------------------------------------------------------------------------ MongoDB

export interface MongoWire {
  uri: string;
  dir: string;
  /** The server's JVM process (for its CPU time), null if unknown. */
  pid: number | null;
  client: MongoClient;
  stop(): Promise<void>;
}

const MONGO_WIRE = path.join(ROOT, "scripts/mongo-wire.sh");

/**
 * Starts the MongoDB-wire server of the test suite (scripts/mongo-wire.sh: mongo-java-server with its H2
 * backend; FerretDB cannot be installed here). Its throughput is not MongoDB's.
 */
export async function startMongoWire(tmpRoot: string): Promise<MongoWire> {
  const dir = await mkdtemp(path.join(tmpRoot, "mongo-"));
  const port = await freePort();
  const { stdout } = await run("bash", [MONGO_WIRE, "start", dir, String(port)], { timeout: 600_000 });
  const uri = stdout.trim().split("\n").pop() ?? "";
  if (!uri.startsWith("mongodb://")) throw new Error(`mongo-wire.sh did not print a URI: ${stdout}`);
  const status = await run("bash", [MONGO_WIRE, "status", dir]).catch(() => ({ stdout: "" }));
  const pid = Number.parseInt(status.stdout.trim(), 10);
  const client = new MongoClient(uri, { serverSelectionTimeoutMS: 10_000 });
  await client.connect();
  return {
    uri,
    dir,
    pid: Number.isInteger(pid) && pid > 0 ? pid : null,
    client,
    stop: async () => {
      await client.close().catch(() => undefined);
      await run("bash", [MONGO_WIRE, "stop", dir]).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

// ------------------------------------------------------------------------------------------------ targets

export interface BuildSnapshot {
  serviceScript: string;
  bareScript: string;
}

/**
 * Copies the compiled service (`serviceDist`/src, default dist/src) and the bare server into `dir`, so that a rebuild of dist/ by
 * someone else during a long run cannot change what is measured half-way. Bare imports still resolve: the
 * copy gets a package.json ("type": "module") and a node_modules symlink to the repository's.
 */
export async function snapshotBuild(dir: string, serviceDist = path.join(ROOT, "dist")): Promise<BuildSnapshot> {
  await mkdir(path.join(dir, "dist/scripts/bench"), { recursive: true });
  await cp(path.join(serviceDist, "src"), path.join(dir, "dist/src"), { recursive: true });
  const bareScript = path.join(dir, "dist/scripts/bench/bare-server.js");
  await cp(path.join(ROOT, "dist/scripts/bench/bare-server.js"), bareScript);
  await writeFile(path.join(dir, "package.json"), '{ "private": true, "type": "module" }\n');
  await symlink(path.join(ROOT, "node_modules"), path.join(dir, "node_modules"), "dir");
  return { serviceScript: path.join(dir, "dist/src/main.js"), bareScript };
}

/**
 * The service's environment: built-in defaults plus these variables only. No configuration file: the
 * children run in the benchmark's tmp directory, so conf/carve-server.yml (which may be mid-edit) is not read.
 */
function serviceEnv(port: number, logLevel: string): Record<string, string> {
  return {
    CARVE_HOST: "127.0.0.1",
    CARVE_PORT: String(port),
    LOG_LEVEL: logLevel,
    CARVE_MAX_BLOCK_SIZE: "8MiB",
    CARVE_MAX_CARVE_SIZE: "8GiB",
    CARVE_SHUTDOWN_GRACE_SECONDS: "10",
    // The simulated agents all connect from 127.0.0.1 without certificates or node keys: to the per-agent
    // limit they would be one agent.
    CARVE_MAX_RECEIVING_CARVES_PER_AGENT: "0",
  };
}

/** Where a service child keeps its carves: a data directory, plus a database on the GridFS backend. */
export interface ServiceStorage {
  dataDir: string;
  /** GridFS only: the database (on opts.mongo) the service uses. */
  database?: string;
}

export function newDatabaseName(): string {
  return `carve_bench_${randomBytes(6).toString("hex")}`;
}

/**
 * Spawns the service on `kind` with the given storage and waits until it answers GET /status. Two children
 * started one after the other on the same storage see the same carves (the download benchmark uploads with
 * one and downloads from a fresh one). `port` defaults to a free one.
 */
export async function spawnService(
  kind: "filesystem" | "gridfs",
  opts: TargetOptions,
  storage: ServiceStorage,
  port?: number,
): Promise<NodeChild> {
  const p = port ?? (await freePort());
  let backendEnv: Record<string, string>;
  if (kind === "filesystem") {
    backendEnv = { CARVE_STORAGE: "filesystem", CARVE_DATA_DIR: storage.dataDir };
  } else {
    if (!opts.mongo) throw new Error("gridfs target needs the MongoDB-wire server");
    if (storage.database === undefined) throw new Error("gridfs target needs a database name");
    backendEnv = {
      CARVE_STORAGE: "gridfs",
      CARVE_DATA_DIR: storage.dataDir,
      CARVE_MONGODB_URI: opts.mongo.uri,
      CARVE_MONGODB_DATABASE: storage.database,
      CARVE_GRIDFS_BUCKET: BUCKET,
    };
  }
  return spawnNodeService({
    script: opts.build.serviceScript,
    nodeArgs: opts.nodeArgs,
    cwd: opts.tmpRoot,
    env: { ...opts.serviceEnv, ...serviceEnv(p, opts.logLevel), ...backendEnv },
    port: p,
  });
}

/** Waits for `file` (completion happens inside the last block's request; allow a moment anyway), checks it. */
async function verifyFile(file: string, expected: string, size: number): Promise<Verification> {
  for (let i = 0; ; i++) {
    try {
      const st = await stat(file);
      if (st.size !== size) return { ok: false, detail: `${file}: ${st.size} bytes, expected ${size}` };
      break;
    } catch {
      if (i >= 50) return { ok: false, detail: `${file} does not exist` };
      await sleep(100);
    }
  }
  const actual = await sha256OfFile(file);
  return actual === expected ? { ok: true } : { ok: false, detail: `${file}: sha256 ${actual}, expected ${expected}` };
}

export async function startTarget(kind: TargetKind, opts: TargetOptions): Promise<RunningTarget> {
  const port = await freePort();
  if (kind === "bare") {
    const child = await spawnNodeService({
      script: opts.build.bareScript,
      nodeArgs: opts.nodeArgs,
      cwd: opts.tmpRoot,
      env: { BENCH_PORT: String(port), BENCH_HOST: "127.0.0.1" },
      port,
    });
    return {
      kind,
      child,
      verify: () => Promise.resolve({ ok: true }),
      dispose: async () => {
        await child.stop();
      },
    };
  }

  const dataDir = await mkdtemp(path.join(opts.tmpRoot, `${kind}-`));
  if (kind === "go") {
    if (opts.goBinary === undefined) throw new Error("go target needs the built Go reference server");
    const child = await spawnProcess({
      name: "go-carve-server",
      command: opts.goBinary,
      args: ["-host", "127.0.0.1", "-port", String(port), "-data", dataDir],
      cwd: opts.tmpRoot,
      env: {},
      port,
    });
    return {
      kind,
      child,
      verify: (carveId, expected, size) => verifyFile(path.join(dataDir, `${carveId}.tar`), expected, size),
      dispose: async () => {
        await child.stop();
        await rm(dataDir, { recursive: true, force: true });
      },
    };
  }
  if (kind === "filesystem") {
    const child = await spawnService("filesystem", opts, { dataDir }, port);
    return {
      kind,
      child,
      verify: (carveId, expected, size) => verifyFile(path.join(dataDir, "carves", `${carveId}.tar`), expected, size),
      dispose: async () => {
        await child.stop();
        await rm(dataDir, { recursive: true, force: true });
      },
    };
  }

  const mongo = opts.mongo;
  if (!mongo) throw new Error("gridfs target needs the MongoDB-wire server");
  const database = newDatabaseName();
  const upstream = new URL(mongo.uri);
  const wire = await startWireCounter(upstream.hostname, Number(upstream.port));
  let child: NodeChild;
  try {
    child = await spawnService(
      "gridfs",
      { ...opts, mongo: { ...mongo, uri: `mongodb://127.0.0.1:${wire.port}/` } },
      { dataDir, database },
      port,
    );
  } catch (err) {
    await wire.close();
    throw err;
  }
  const files = mongo.client
    .db(database)
    .collection<{ length: number; metadata?: { sha256?: unknown } }>(`${BUCKET}.files`);
  return {
    kind,
    child,
    wire,
    verify: async (carveId, expected, size) => {
      const doc = await files.findOne({ filename: `${carveId}.tar` });
      if (!doc) return { ok: false, detail: `no ${BUCKET}.files document for ${carveId}.tar` };
      if (doc.length !== size) return { ok: false, detail: `${carveId}: length ${doc.length}, expected ${size}` };
      const actual = doc.metadata?.sha256;
      return actual === expected
        ? { ok: true }
        : { ok: false, detail: `${carveId}: metadata.sha256 ${String(actual)}, expected ${expected}` };
    },
    dispose: async () => {
      await child.stop();
      await wire.close();
      await mongo.client
        .db(database)
        .dropDatabase()
        .catch(() => undefined);
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
