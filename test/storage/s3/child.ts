/**
 * Runs the built S3 blob store (dist/: `bash scripts/build.sh`, as `npm test` does first) in a child process, for
 * what a test process cannot measure or survive: its own resident memory, and a SIGKILL at a crash point.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import type { SeaweedFs } from "../../support/seaweedfs.js";
import type { S3Harness } from "./harness.js";

const ROOT = path.resolve(import.meta.dirname, "../../..");
const dist = (rel: string): string => {
  const file = path.join(ROOT, "dist", rel);
  if (!existsSync(file)) throw new Error(`${file} is missing: run bash scripts/build.sh first`);
  return pathToFileURL(file).href;
};

export interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `body` (an async ES module body) with `blobs` open over the harness's prefix and staging directory, and
 * `input` (JSON) in scope. Whatever it prints on stdout comes back.
 */
export async function runWithBlobs(
  server: SeaweedFs,
  h: S3Harness,
  body: string,
  options: { input?: unknown; env?: Record<string, string>; partSize?: number } = {},
): Promise<ChildResult> {
  const script = `
    import { S3Client } from "@aws-sdk/client-s3";
    import { pino } from "pino";
    import { FilesystemBlobs } from ${JSON.stringify(dist("src/storage/filesystem/filesystem-blobs.js"))};
    import { S3BlobStore } from ${JSON.stringify(dist("src/storage/s3/s3-blobs.js"))};
    import { S3_CLIENT_DEFAULTS } from ${JSON.stringify(dist("src/storage/s3/open-s3.js"))};
    const env = process.env;
    const input = JSON.parse(env.CHILD_INPUT);
    const client = new S3Client({
      ...S3_CLIENT_DEFAULTS, endpoint: env.CHILD_ENDPOINT, region: "us-east-1", forcePathStyle: true, maxAttempts: 1,
      credentials: { accessKeyId: env.CHILD_KEY, secretAccessKey: env.CHILD_SECRET },
    });
    const staging = await FilesystemBlobs.create({ dataDir: env.CHILD_DATA_DIR, logger: pino({ level: "silent" }) });
    const blobs = new S3BlobStore({ client, bucket: env.CHILD_BUCKET, prefix: env.CHILD_PREFIX, staging, partSize: Number(env.CHILD_PART_SIZE) });
    ${body}
    await blobs.close();
  `;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
    env: {
      PATH: process.env.PATH ?? "",
      CHILD_INPUT: JSON.stringify(options.input ?? null),
      CHILD_ENDPOINT: server.endpoint,
      CHILD_KEY: server.accessKeyId,
      CHILD_SECRET: server.secretAccessKey,
      CHILD_BUCKET: server.bucket,
      CHILD_PREFIX: h.prefix,
      CHILD_DATA_DIR: h.dataDir,
      CHILD_PART_SIZE: String(options.partSize ?? 5 * 1024 * 1024),
      ...options.env,
    },
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}
