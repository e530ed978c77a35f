/**
 * Shutdown and start-up promises of the built service (dist/src/main.js) as a child process: SIGINT drains
 * like SIGTERM, a second signal exits at once (1), the grace period cuts connections still open when it ends,
 * /ready says 503 to a request that reaches a draining service, the retention job stops with it, and a bad
 * configuration exits 2 before anything listens. Every wait is for an event (a log line, a metric), never a
 * fixed sleep.
 */
import { spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawnServiceWith, waitForMetric, waitForOutput, type WrappedChildService } from "../support/child-service.js";
import { ROOT } from "../support/service.js";

let work: string;
beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "carve-shutdown-"));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** Starts a one-block carve and opens its block request, sending all but the last `held` bytes of the body. */
async function heldBlock(svc: WrappedChildService, held = 100): Promise<{ socket: net.Socket; rest: Buffer; body: Buffer; carveId: string; reply: Promise<string> }> {
  const data = randomBytes(50_000);
  const carveId = randomUUID();
  const requestId = randomUUID();
  const start = await fetch(`${svc.url}/start_uploads`, {
    method: "POST",
    body: JSON.stringify({ block_count: 1, block_size: data.length, carve_size: data.length, carve_id: carveId, request_id: requestId, node_key: "" }),
  });
  const { session_id } = (await start.json()) as { session_id: string };
  const body = Buffer.from(JSON.stringify({ block_id: 0, session_id, request_id: requestId, data: data.toString("base64") }));
  const socket = net.connect(svc.port, "127.0.0.1");
  let raw = "";
  socket.on("data", (c: Buffer) => (raw += c.toString("utf8")));
  socket.on("error", () => undefined);
  const reply = new Promise<string>((resolve) => socket.on("close", () => resolve(raw)));
  await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
  socket.write(`POST /upload_blocks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`);
  socket.write(body.subarray(0, body.length - held));
  // The service is reading it: its in-flight budget holds the bytes received so far.
  await waitForMetric(svc.url, "carve_inflight_body_bytes", (v) => v >= body.length - held);
  return { socket, rest: body.subarray(body.length - held), body, carveId, reply };
}

describe("shutdown", () => {
  it("SIGINT drains like SIGTERM: the in-flight block is answered and stored, exit 0", async () => {
    const dataDir = path.join(work, randomUUID());
    const svc = await spawnServiceWith({ env: { CARVE_DATA_DIR: dataDir, LOG_LEVEL: "info" } });
    const held = await heldBlock(svc);
    svc.proc.kill("SIGINT");
    await waitForOutput(svc, /"signal":"SIGINT".*signal received|signal received.*"signal":"SIGINT"/);
    await waitForOutput(svc, /shutting down/);
    held.socket.write(held.rest);
    const raw = await held.reply;
    expect(raw.split("\r\n")[0]).toBe("HTTP/1.1 200 OK");
    expect(raw.endsWith('{"success":true}')).toBe(true);
    expect(await svc.exited).toBe(0);
    expect(existsSync(path.join(dataDir, "carves", `${held.carveId}.tar`))).toBe(true);
  });

  it("answers 503 on /ready to a request that reaches the service while it drains", async () => {
    const dataDir = path.join(work, randomUUID());
    const svc = await spawnServiceWith({ env: { CARVE_DATA_DIR: dataDir, LOG_LEVEL: "info" } });
    const held = await heldBlock(svc);
    svc.proc.kill("SIGTERM");
    await waitForOutput(svc, /shutting down/);
    // The connection is busy, so it is not closed as idle: a request pipelined behind the block reaches the
    // draining service.
    held.socket.write(Buffer.concat([held.rest, Buffer.from("GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")]));
    const raw = await held.reply;
    expect(raw.split("\r\n")[0]).toBe("HTTP/1.1 200 OK");
    const second = raw.indexOf("HTTP/1.1", 10);
    expect(second, raw).toBeGreaterThan(0);
    expect(raw.slice(second).split("\r\n")[0]).toBe("HTTP/1.1 503 Service Unavailable");
    expect(raw.slice(second)).toContain('"shuttingDown":true');
    expect(await svc.exited).toBe(0);
  });

  it("a second signal while draining exits 1 at once", async () => {
    const dataDir = path.join(work, randomUUID());
    const svc = await spawnServiceWith({ env: { CARVE_DATA_DIR: dataDir, LOG_LEVEL: "info", CARVE_SHUTDOWN_GRACE_SECONDS: "600" } });
    const held = await heldBlock(svc);
    svc.proc.kill("SIGTERM");
    await waitForOutput(svc, /shutting down/);
    svc.proc.kill("SIGTERM");
    expect(await svc.exited).toBe(1);
    expect(svc.output.join("\n")).toContain("second signal: exiting now");
    expect(svc.output.join("\n")).not.toContain('"msg":"stopped"');
    held.socket.destroy();
  });

  it("closes connections still open when the grace period ends, keeps nothing of their block, and exits 0", async () => {
    const dataDir = path.join(work, randomUUID());
    const svc = await spawnServiceWith({ env: { CARVE_DATA_DIR: dataDir, LOG_LEVEL: "info", CARVE_SHUTDOWN_GRACE_SECONDS: "1" } });
    const held = await heldBlock(svc);
    svc.proc.kill("SIGTERM");
    await waitForOutput(svc, /grace period over: closing connections/);
    const raw = await held.reply; // closed by the service, the body never completed
    expect(raw.startsWith("HTTP/1.1 200")).toBe(false);
    expect(await svc.exited).toBe(0);
    expect(svc.output.join("\n")).toContain('"msg":"stopped"');
    expect(await readdir(path.join(dataDir, "carves"))).toEqual([]);
  });

  it("runs retention on its interval, and stops it: no run after the shutdown began but the one in progress", async () => {
    const dataDir = path.join(work, randomUUID());
    // A run every 0.6 s (counted from the end of the previous one); each logs "retention run finished".
    const svc = await spawnServiceWith({
      env: { CARVE_DATA_DIR: dataDir, LOG_LEVEL: "info", CARVE_RETENTION_ENABLED: "true", CARVE_RETENTION_INTERVAL_MINUTES: "0.01" },
    });
    const runs = (lines: string[]): number => lines.join("").split("retention run finished").length - 1;
    const deadline = Date.now() + 60_000;
    while (runs(svc.output) < 3) {
      if (Date.now() > deadline) throw new Error(`fewer than 3 retention runs in 60 s:\n${svc.output.join("\n")}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    svc.proc.kill("SIGTERM");
    expect(await svc.exited).toBe(0);
    // One string: the output is collected in pipe chunks, which may cut a log line in two. The lines arrive in the
    // order they were written: exiting before pino's asynchronous writes were done once delivered "shutting down"
    // after "stopped" (written 4 ms later; src/main.ts now waits for the log to drain). The checks below go by time.
    const text = svc.output.join("");
    expect(text.indexOf('"msg":"shutting down'), text).toBeLessThan(text.lastIndexOf('"msg":"stopped"'));
    const entries = text
      .split(/(?<=\})(?=\{"level")/)
      .map((l) => JSON.parse(l) as { time: string; msg?: string })
      .map((e) => ({ at: Date.parse(e.time), msg: e.msg ?? "" }));
    const stopAt = entries.find((e) => e.msg.startsWith("shutting down"))?.at;
    const stoppedAt = entries.find((e) => e.msg === "stopped")?.at;
    expect(stopAt, text).toBeDefined();
    expect(stoppedAt, text).toBeGreaterThanOrEqual(stopAt as number);
    const finished = (from: number): number => entries.filter((e) => e.msg === "retention run finished" && e.at >= from).length;
    expect(finished(stopAt as number), "at most the run in progress finishes").toBeLessThanOrEqual(1);
    expect(finished((stoppedAt as number) + 1), "nothing of the job after the service stopped").toBe(0);
  });
});

describe("start-up", () => {
  it.each([
    ["a negative retention period", { CARVE_RETENTION_DAYS: "-1" }, /retention/],
    ["a port that is not a number", { CARVE_PORT: "eighty" }, /port/i],
    ["gridfs without a MongoDB URI", { CARVE_STORAGE: "gridfs" }, /CARVE_MONGODB_URI/],
  ])("exits 2 with the problem on stderr for %s, before listening", async (_label, env, problem) => {
    const proc = spawn(process.execPath, [path.join(ROOT, "dist/src/main.js")], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? "", CARVE_CONFIG: "/dev/null", CARVE_DATA_DIR: path.join(work, randomUUID()), ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    proc.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    const code = await new Promise<number | null>((resolve) => proc.once("exit", resolve));
    expect(code, stderr).toBe(2);
    expect(stderr).toContain("invalid configuration");
    expect(stderr).toMatch(problem);
  });
});
