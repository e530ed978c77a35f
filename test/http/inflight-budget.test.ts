/**
 * The in-flight body budget (CARVE_MAX_INFLIGHT_BYTES) charges bodies as their bytes arrive. Bodies that each
 * got part of their bytes in before the budget filled used to wait on each other forever: with 1 MiB blocks and
 * 50 agents the service stopped answering anyone (npm run bench found it). Here four agents' bodies of ~600 kB
 * are half sent into a 1 MiB budget, then finished: every block must be stored, and others served meanwhile.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { metricValue, waitForMetric } from "../support/child-service.js";
import { startTestService, type TestService } from "../support/service.js";

const BLOCK = 450_000; // base64: a 600 kB body; four of them are 2.4x the 1 MiB budget
const AGENTS = 4;

let svc: TestService;
beforeAll(async () => {
  svc = await startTestService({ CARVE_MAX_INFLIGHT_BYTES: "1MiB" });
});
afterAll(async () => {
  await svc?.dispose();
});

interface OpenBody {
  send(bytes: Buffer): void;
  reply: Promise<string>;
}

/** A raw POST whose body the test writes piece by piece; resolves with the whole reply once the server closes. */
function openBody(url: string, length: number): OpenBody {
  const { hostname, port } = new URL(url);
  const socket = net.connect(Number(port), hostname);
  socket.write(`POST /upload_blocks HTTP/1.1\r\nHost: ${hostname}:${port}\r\nContent-Type: application/json\r\nContent-Length: ${length}\r\nConnection: close\r\n\r\n`);
  let raw = "";
  socket.on("data", (c: Buffer) => (raw += c.toString("utf8")));
  const reply = new Promise<string>((resolve, reject) => {
    socket.on("close", () => resolve(raw));
    socket.on("error", reject);
  });
  return { send: (bytes) => socket.write(bytes), reply };
}

async function start(url: string, size: number): Promise<{ carveId: string; requestId: string; sessionId: string }> {
  const carveId = randomUUID();
  const requestId = randomUUID();
  const res = await fetch(`${url}/start_uploads`, {
    method: "POST",
    body: JSON.stringify({ block_count: 1, block_size: BLOCK, carve_size: size, carve_id: carveId, request_id: requestId, node_key: "" }),
  });
  const { session_id } = (await res.json()) as { session_id: string };
  return { carveId, requestId, sessionId: session_id };
}

describe("bodies that each hold part of a full in-flight budget", () => {
  it("all finish: the oldest always goes on, so they never wait on each other forever", { timeout: 60_000 }, async () => {
    const carves = await Promise.all(
      Array.from({ length: AGENTS }, async () => {
        const data = randomBytes(BLOCK);
        const s = await start(svc.url, data.length);
        const body = Buffer.from(JSON.stringify({ block_id: 0, session_id: s.sessionId, request_id: s.requestId, data: data.toString("base64") }));
        return { ...s, data, body };
      }),
    );
    const open = carves.map((c) => openBody(svc.url, c.body.length));
    // First halves of all four: 1.2 MB of bodies for a 1 MiB budget. The budget fills with partial bodies.
    for (const [i, c] of carves.entries()) (open[i] as OpenBody).send(c.body.subarray(0, c.body.length / 2));
    await waitForMetric(svc.url, "carve_inflight_body_bytes", (v) => v >= 3 * (carves[0] as { body: Buffer }).body.length / 2 - 65_536);
    // Then the rest of every body: each needs more of the full budget than is free.
    for (const [i, c] of carves.entries()) (open[i] as OpenBody).send(c.body.subarray(c.body.length / 2));
    const replies = await Promise.all(open.map((o) => o.reply));
    for (const raw of replies) expect(raw.slice(raw.indexOf("\r\n\r\n") + 4)).toBe('{"success":true}');
    for (const c of carves) {
      const record = await svc.store.getCarve(c.carveId);
      expect(record.status).toBe("complete");
      expect(record.sha256).toBe(createHash("sha256").update(c.data).digest("hex"));
    }
    // Everything given back: nothing is left charged to the budget.
    expect(await metricValue(svc.url, "carve_inflight_body_bytes")).toBe(0);
  });
});
