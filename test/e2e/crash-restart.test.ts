/**
 * kill -9 of the service in the middle of carves, then a restart: the 5.22+ agent's own retries (1 s, 4 s,
 * protocol-exact) carry the carve over the restart and it completes byte-exact. Also graceful shutdown.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCarve } from "../../scripts/emulator/index.js";
import { sha256 } from "../support/carve-data.js";
import { peekEntry } from "../support/catalog-peek.js";
import { waitForMetric, waitForOutput } from "../support/child-service.js";
import { freePort, spawnService, type ChildService } from "../support/service.js";

let work: string;
beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-crash-"));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe("kill -9 mid-carve", () => {
  it.each([
    ["after the start", -1],
    ["after block 20 of 64", 20],
  ])("survives a kill %s: the agent's retries complete the carve byte-exact", async (_label, killAfter) => {
    const dataDir = path.join(work, randomUUID());
    const port = await freePort();
    const env = { CARVE_PORT: String(port), CARVE_DATA_DIR: dataDir, LOG_LEVEL: "info" };
    let svc: ChildService = await spawnService(env);
    const bytes = randomBytes(64 * 65536 - 1000);
    const archivePath = path.join(work, `${randomUUID()}.bin`);
    await writeFile(archivePath, bytes);

    let restarted: Promise<ChildService> | null = null;
    let killedAt: number | null = null;
    const result = await runCarve({
      baseUrl: svc.url,
      startEndpoint: "/start_uploads",
      continueEndpoint: "/upload_blocks",
      archivePath,
      blockSize: 65536,
      agentVersion: "5.23.0",
      onRequest: (r) => {
        const trigger = killAfter < 0 ? r.kind === "start" : r.blockId === killAfter;
        if (trigger && r.ok && restarted === null) {
          killedAt = r.blockId ?? -1;
          svc.proc.kill("SIGKILL");
          restarted = svc.exited.then(() => spawnService(env));
        }
      },
    });
    expect(killedAt).toBe(killAfter);
    expect(restarted).not.toBeNull();
    svc = await (restarted as unknown as Promise<ChildService>);
    // the kill cost the next request at least one failed attempt
    const retried = result.requests.filter((r) => !r.ok);
    expect(retried.length).toBeGreaterThan(0);
    expect(result.status).toBe("SUCCESS");

    const record = (await (await fetch(`${svc.url}/status`)).json());
    expect(record).toEqual({ success: true });
    const stored = await readFile(path.join(dataDir, "carves", `${result.carveId}.tar`));
    expect(sha256(stored)).toBe(sha256(bytes));
    expect(peekEntry(dataDir, result.carveId)).toMatchObject({ state: "complete", sha256: sha256(bytes) });
    svc.proc.kill("SIGTERM");
    expect(await svc.exited).toBe(0);
  });
});

describe("graceful shutdown", () => {
  it("finishes an in-flight block after SIGTERM, refuses new connections, exits 0 and releases the data dir", async () => {
    const dataDir = path.join(work, randomUUID());
    const svc = await spawnService({ CARVE_DATA_DIR: dataDir, LOG_LEVEL: "info" });
    const data = randomBytes(300_000);
    const start = {
      block_count: 1,
      block_size: data.length,
      carve_size: data.length,
      carve_id: randomUUID(),
      request_id: randomUUID(),
      node_key: "",
    };
    const startRes = await fetch(`${svc.url}/start_uploads`, { method: "POST", body: JSON.stringify(start) });
    const { session_id } = (await startRes.json()) as { session_id: string };
    const body = Buffer.from(
      JSON.stringify({ block_id: 0, session_id, request_id: start.request_id, data: data.toString("base64") }),
    );
    const url = new URL(`${svc.url}/upload_blocks`);
    let req!: http.ClientRequest;
    const connected = new Promise<void>((resolve) => {
      req = http.request({ host: url.hostname, port: url.port, path: url.pathname, method: "POST", headers: { "content-length": body.length } });
      req.once("socket", (socket) => socket.once("connect", () => resolve()));
    });
    const reply = new Promise<{ status: number; text: string }>((resolve, reject) => {
      req.once("response", (res) => {
        let text = "";
        res.on("data", (c: Buffer) => (text += c.toString()));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
      });
      req.on("error", reject);
    });
    req.write(body.subarray(0, 1000));
    await connected;
    // The service is reading this body (its in-flight budget holds the 1000 bytes sent) before it is told to stop.
    await waitForMetric(svc.url, "carve_inflight_body_bytes", (v) => v >= 1000);
    svc.proc.kill("SIGTERM");
    // The listener is closed in the same tick that logs this line: from now on new connections are refused.
    await waitForOutput(svc, /shutting down/);
    // A new connection (not one of fetch's pooled ones) is refused.
    const refused = await new Promise<string>((resolve) => {
      http
        .get({ host: url.hostname, port: url.port, path: "/status", agent: false }, (r) => resolve(`answered ${r.statusCode}`))
        .on("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    });
    expect(refused).toBe("ECONNREFUSED");
    req.end(body.subarray(1000));
    const res = await reply;
    expect(res).toEqual({ status: 200, text: '{"success":true}' });
    expect(await svc.exited).toBe(0);
    expect(svc.output.join("\n")).toContain("stopped");
    expect(existsSync(path.join(dataDir, ".lock"))).toBe(false);
    expect(sha256(await readFile(path.join(dataDir, "carves", `${start.carve_id}.tar`)))).toBe(sha256(data));
  });
});
