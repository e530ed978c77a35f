/**
 * Vitest global setup: one real MongoDB-wire server (scripts/mongo-wire.sh: mongo-java-server with its H2
 * backend, because the Go module proxy refuses FerretDB here) for the whole run. Each test uses its own
 * database. If the server cannot start, the GridFS suites fail: no backend is ever skipped.
 */
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import type { TestProject } from "vitest/node";

const run = promisify(execFile);
const SCRIPT = path.resolve(import.meta.dirname, "../../scripts/mongo-wire.sh");

declare module "vitest" {
  export interface ProvidedContext {
    mongoUri: string;
    mongoDir: string;
  }
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

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const dir = await mkdtemp(path.join(tmpdir(), "carve-mongo-"));
  const port = await freePort();
  const { stdout } = await run("bash", [SCRIPT, "start", dir, String(port)], { timeout: 300_000 });
  const uri = stdout.trim().split("\n").pop() ?? "";
  if (!uri.startsWith("mongodb://")) throw new Error(`mongo-wire.sh did not print a URI: ${stdout}`);
  project.provide("mongoUri", uri);
  project.provide("mongoDir", dir);
  return async () => {
    await run("bash", [SCRIPT, "stop", dir]).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  };
}
