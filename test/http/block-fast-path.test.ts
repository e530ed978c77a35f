/**
 * Below debug level, `POST <continue path>` is answered by a handler mounted before Express's routing
 * (agent-routes.ts fastBlocks); the same endpoint reached any other way (a query string, a trailing slash,
 * the --tls_node_api form) goes through the Express route. Both must answer byte for byte alike, refusals
 * included, and store alike.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestService, type TestService } from "../support/service.js";

interface Reply {
  status: number;
  type: string | null;
  length: string | null;
  requestId: string | null;
  connection: string | null;
  text: string;
}

async function post(svc: TestService, p: string, body: string, headers: Record<string, string> = {}): Promise<Reply> {
  const res = await fetch(svc.url + p, { method: "POST", headers: { "content-type": "application/json", ...headers }, body });
  return {
    status: res.status,
    type: res.headers.get("content-type"),
    length: res.headers.get("content-length"),
    requestId: res.headers.get("x-request-id"),
    connection: res.headers.get("connection"),
    text: await res.text(),
  };
}

const BLOCK = 1024;

describe.each([
  ["info (fast path for the plain continue path)", "info"],
  ["debug (Express route for every form)", "debug"],
])("block replies at log level %s", (_label, level) => {
  let svc: TestService;
  beforeAll(async () => {
    svc = await startTestService({ LOG_LEVEL: level, CARVE_MAX_BLOCK_SIZE: "64KiB" });
  });
  afterAll(async () => {
    await svc?.dispose();
  });

  async function open(bytes: Buffer): Promise<{ sid: string; carveId: string; requestId: string }> {
    const carveId = randomUUID();
    const requestId = randomUUID();
    const count = Math.ceil(bytes.length / BLOCK);
    const r = await post(svc, "/start_uploads", JSON.stringify({ block_count: count, block_size: BLOCK, carve_size: bytes.length, carve_id: carveId, request_id: requestId, node_key: "nk" }));
    const sid = (JSON.parse(r.text) as { session_id: string }).session_id;
    expect(sid).toMatch(/^[0-9a-f]{32}$/);
    return { sid, carveId, requestId };
  }

  const forms = ["/upload_blocks", "/upload_blocks?x=1", "/upload_blocks/", "/nodekey123/upload_blocks"];

  it("answers every form of the endpoint alike, for acceptance and for each refusal", async () => {
    const seen: Record<string, Array<Omit<Reply, "requestId"> & { requestId: boolean }>> = {};
    for (const form of forms) {
      const bytes = randomBytes(3 * BLOCK - 100);
      const { sid, carveId, requestId } = await open(bytes);
      const block = (id: number, data: string, extra: Record<string, unknown> = {}): string =>
        JSON.stringify({ block_id: id, session_id: sid, request_id: requestId, data, ...extra });
      const part = (id: number): string => bytes.subarray(id * BLOCK, (id + 1) * BLOCK).toString("base64");
      const replies = [
        await post(svc, form, block(0, part(0))), // accepted
        await post(svc, form, block(0, part(0))), // duplicate, same bytes: accepted
        await post(svc, form, block(0, part(1))), // duplicate, other bytes
        await post(svc, form, block(1, part(1).replace("A", "-"))), // not base64
        await post(svc, form, block(1, randomBytes(10).toString("base64"))), // wrong length
        await post(svc, form, block(9, part(1))), // out of range
        await post(svc, form, block(1, part(1), { request_id: "other" })),
        await post(svc, form, JSON.stringify({ block_id: 1, session_id: "f".repeat(32), request_id: requestId, data: part(1) })),
        await post(svc, form, "{not json"),
        await post(svc, form, JSON.stringify({ block_id: "1", session_id: sid, request_id: requestId, data: part(1) })),
        await post(svc, form, "x".repeat(200 * 1024)), // over the body limit for 64 KiB blocks
        await post(svc, form, block(1, part(1)), { "x-request-id": "given-id-1" }),
        await post(svc, form, block(2, part(2))), // completes the carve
      ];
      expect(replies.at(-2)?.requestId).toBe("given-id-1");
      seen[form] = replies.map((r) => ({ ...r, requestId: typeof r.requestId === "string" && r.requestId.length > 0 }));
      const stored = await readFile(path.join(svc.dataDir, "carves", `${carveId}.tar`));
      expect(stored.equals(bytes)).toBe(true);
    }
    const reference = seen[forms[0]!]!;
    expect(reference.map((r) => r.status)).toEqual([200, 200, 409, 400, 400, 400, 403, 404, 400, 400, 413, 200, 200]);
    expect(reference[0]).toEqual({ status: 200, type: "application/json; charset=utf-8", length: "16", requestId: true, connection: "keep-alive", text: '{"success":true}' });
    for (const r of reference.slice(2, 11)) {
      expect(r.type).toBe("text/plain; charset=utf-8");
      expect(r.text).toMatch(/^refused: [A-Z0-9_]+: /);
    }
    for (const form of forms.slice(1)) expect(seen[form], form).toEqual(reference);
  });

  it(level === "debug" ? "logs every successful block in the access log" : "keeps successful blocks out of the log, refusals in", async () => {
    const bytes = randomBytes(BLOCK);
    const { sid, requestId } = await open(bytes);
    const before = svc.logs.lines.length;
    const ok = await post(svc, "/upload_blocks", JSON.stringify({ block_id: 0, session_id: sid, request_id: requestId, data: bytes.toString("base64") }));
    const bad = await post(svc, "/upload_blocks", JSON.stringify({ block_id: 0, session_id: sid, request_id: "nope", data: "AAAA" }));
    // The refusal's line (logged after anything the earlier success logged) is the barrier: poll for it.
    const logged = (id: string | null | undefined): Array<Record<string, unknown>> =>
      svc.logs.lines
        .slice(before)
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .filter((l) => JSON.stringify(l).includes(id ?? "none"));
    const deadline = Date.now() + 30_000;
    while (!logged(bad.requestId).some((l) => l.code === "REQUEST_ID_MISMATCH") && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
    const okLines = logged(ok.requestId);
    const badLines = logged(bad.requestId);
    expect(badLines.some((l) => l.code === "REQUEST_ID_MISMATCH" && l.msg === "agent request refused")).toBe(true);
    if (level === "debug") expect(okLines.some((l) => (l.res as { statusCode?: number } | undefined)?.statusCode === 200)).toBe(true);
    else expect(okLines).toEqual([]);
  });
});
