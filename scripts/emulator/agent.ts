/**
 * Uploads a carve archive exactly as an osquery agent (4.0 - 5.23) does.
 *
 * Sources of truth: /work/shared/docs/osquery-carver-protocol.md and osquery's own
 * carver.cpp (postCarve / fireRequest), remote/transports/tls.cpp (headers, 16 s timeout),
 * remote/http_client.cpp (one silent resend after a transport error, redirects followed),
 * remote/serializers/json.cpp (an empty body is a valid reply).
 *
 * Injection options let a test make the agent misbehave in ways real networks and agents do
 * (duplicates, gaps, reordering, conflicting re-sends, broken bodies).
 */
import { randomUUID } from "node:crypto";
import { open } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import { setTimeout as sleep } from "node:timers/promises";

import { sha256File } from "./archive.js";

export type CarveStatus = "SUCCESS" | "START FAILED" | "DATA POST FAILED";
export type RequestKind = "start" | "block";
/** Why a request was sent: the genuine one, or one of the injected variants. */
export type RequestVariant = "genuine" | "duplicate" | "corrupt" | "badBase64" | "wrongLength";

export interface CarveTlsOptions {
  ca?: string | Buffer | Array<string | Buffer>;
  cert?: string | Buffer;
  key?: string | Buffer;
  servername?: string;
  rejectUnauthorized?: boolean;
}

export interface CarveInjectOptions {
  /** Send these blocks twice in a row. */
  duplicate?: number[];
  /** Never send these blocks (a gap). */
  skip?: number[];
  /**
   * Send order: reversed, shuffled, or exactly this list of block ids: ids not listed are not sent,
   * repeats are sent again, ids >= block_count are sent with empty data.
   */
  order?: "reverse" | "shuffle" | number[];
  /** After the genuine block, send a conflicting re-send: same length, different bytes. */
  corrupt?: number[];
  /** Send these blocks with invalid base64 instead of the genuine body (retries resend it). */
  badBase64?: number[];
  /** Send these blocks one decoded byte short instead of the genuine body (retries resend it). */
  wrongLength?: number[];
  /** Last word on every body: return a new object (serialized in its key order) or a raw string. */
  mutateBody?: (
    kind: RequestKind,
    blockId: number | null,
    attempt: number,
    body: Record<string, unknown>,
  ) => Record<string, unknown> | string;
}

export interface CarveRequestRecord {
  kind: RequestKind;
  /** null for the start request. */
  blockId: number | null;
  /** 1-based attempt of the agent's retry loop (always 1 before 5.22). */
  attempt: number;
  /** true for the HTTP client's silent resend after a transport error. */
  silentResend: boolean;
  variant: RequestVariant;
  /** HTTP status, null when no response was received. */
  statusCode: number | null;
  latencyMs: number;
  /** What the agent made of the exchange: completed and body empty or JSON. */
  ok: boolean;
  /** Response body text (truncated to 200 characters in CarveResult.requests). */
  body: string;
  /** Transport error or "non-JSON reply". */
  error?: string;
}

export interface RunCarveOptions {
  /** http:// or https://host:port (a path here is ignored: osquery builds URIs from tls_hostname). */
  baseUrl: string;
  /** --carver_start_endpoint; "" (default) means "/". */
  startEndpoint?: string;
  /** --carver_continue_endpoint; "" (default) means "/". */
  continueEndpoint?: string;
  /** --tls_node_api: puts "/<nodeApiKey>" before each endpoint. */
  nodeApiKey?: string;
  archivePath: string;
  /** --carver_block_size, default 8192. */
  blockSize?: number;
  carveId?: string;
  requestId?: string;
  nodeKey?: string;
  agentVersion?: string;
  tls?: CarveTlsOptions;
  /** Covers connect + upload + reply, and the silent resend after a transport error. Default 16000. */
  timeoutMs?: number;
  /** Waits between attempts (5.22+). Default [1000, 4000]. */
  retryDelaysMs?: number[];
  /** Agent to use (e.g. a shared keep-alive agent); by default one keep-alive socket per carve. */
  httpAgent?: http.Agent;
  inject?: CarveInjectOptions;
  onRequest?: (record: CarveRequestRecord) => void;
}

export interface CarveResult {
  carveId: string;
  requestId: string;
  sessionId: string | null;
  sha256: string;
  carveSize: number;
  blockCount: number;
  blockSize: number;
  status: CarveStatus;
  /** What the host's carves table would show: osquery records a failed start as "DATA POST FAILED". */
  hostStatus: "SUCCESS" | "DATA POST FAILED";
  durationMs: number;
  requests: CarveRequestRecord[];
}

const BODY_KEEP = 200;

/** Compares dotted versions numerically: <0, 0, >0. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(/[.-]/).map((x) => Number.parseInt(x, 10) || 0);
  const pb = b.split(/[.-]/).map((x) => Number.parseInt(x, 10) || 0);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** The endpoint path as TLSRequestHelper::makeURI builds it ("" becomes "/"). */
export function endpointPath(endpoint: string, nodeApiKey?: string): string {
  const p = (nodeApiKey !== undefined && nodeApiKey !== "" ? `/${nodeApiKey}` : "") + endpoint;
  return p === "" ? "/" : p;
}

interface ExchangeResult {
  statusCode: number | null;
  body: string;
  ok: boolean;
  error?: string;
  timedOut: boolean;
}

interface Target {
  url: URL;
  headersBase: Record<string, string>;
  agent: http.Agent;
  tls: CarveTlsOptions | undefined;
}

const REDIRECTS = new Set([301, 302, 303, 304, 305, 307, 308]);

/** One HTTP request/response. Resolves with a transport error instead of rejecting. */
function httpOnce(
  target: Target,
  url: URL,
  body: Buffer,
  deadline: number,
): Promise<{ statusCode: number; body: Buffer; location?: string } | { error: string; timedOut: boolean }> {
  return new Promise((resolve) => {
    const isHttps = url.protocol === "https:";
    const headers: Record<string, string> = {
      ...target.headersBase,
      Host: url.host,
      "Content-Length": String(body.length),
    };
    const options: https.RequestOptions = {
      method: "POST",
      protocol: url.protocol,
      hostname: url.hostname.replace(/^\[(.*)\]$/, "$1"),
      port: url.port === "" ? (isHttps ? 443 : 80) : Number(url.port),
      path: url.pathname + url.search,
      headers,
      agent: target.agent,
    };
    if (isHttps && target.tls) {
      const t = target.tls;
      if (t.ca !== undefined) options.ca = t.ca;
      if (t.cert !== undefined) options.cert = t.cert;
      if (t.key !== undefined) options.key = t.key;
      if (t.servername !== undefined) options.servername = t.servername;
      if (t.rejectUnauthorized !== undefined) options.rejectUnauthorized = t.rejectUnauthorized;
    }
    let settled = false;
    const finish = (
      r: { statusCode: number; body: Buffer; location?: string } | { error: string; timedOut: boolean },
    ): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(r);
    };
    const remaining = Math.max(0, deadline - Date.now());
    const req = (isHttps ? https : http).request(options, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("error", (e) => finish({ error: e.message, timedOut: false }));
      res.on("aborted", () => finish({ error: "response aborted", timedOut: false }));
      res.on("end", () => {
        if (!res.complete) {
          finish({ error: "incomplete response", timedOut: false });
          return;
        }
        const location = res.headers.location;
        finish({
          statusCode: res.statusCode ?? 0,
          body: Buffer.concat(chunks),
          ...(location !== undefined ? { location } : {}),
        });
      });
    });
    const timer = setTimeout(() => {
      finish({ error: "timed out", timedOut: true });
      req.destroy(new Error("timed out"));
    }, remaining);
    req.on("error", (e) => finish({ error: e.message, timedOut: false }));
    req.end(body);
  });
}

/**
 * What osquery's http::Client::sendHTTPRequest + JSONSerializer::deserialize do with one request:
 * one deadline for everything, one silent resend after a transport error (not after a timeout),
 * redirects followed (max 10), then the body must be empty or JSON.
 */
async function exchange(
  target: Target,
  body: Buffer,
  timeoutMs: number,
  onAttempt: (r: ExchangeResult, silentResend: boolean, latencyMs: number) => void,
): Promise<ExchangeResult> {
  const deadline = Date.now() + timeoutMs;
  let resent = false;
  let url = target.url;
  let redirects = 0;
  for (;;) {
    const t0 = performance.now();
    const r = await httpOnce(target, url, body, deadline);
    const latency = performance.now() - t0;
    if ("error" in r) {
      const res: ExchangeResult = { statusCode: null, body: "", ok: false, error: r.error, timedOut: r.timedOut };
      onAttempt(res, resent, latency);
      if (!resent && !r.timedOut) {
        resent = true;
        continue;
      }
      return res;
    }
    const text = r.body.toString("utf8");
    if (REDIRECTS.has(r.statusCode)) {
      if (r.location === undefined || r.location === "" || redirects++ >= 10) {
        const res: ExchangeResult = {
          statusCode: r.statusCode,
          body: text,
          ok: false,
          error: r.location ? "too many redirects" : "redirect without Location",
          timedOut: false,
        };
        onAttempt(res, resent, latency);
        if (!resent) {
          resent = true;
          continue;
        }
        return res;
      }
      const res: ExchangeResult = { statusCode: r.statusCode, body: text, ok: false, error: "redirect", timedOut: false };
      onAttempt(res, resent, latency);
      url = new URL(r.location, url);
      continue;
    }
    let ok = r.body.length === 0;
    if (!ok) {
      try {
        JSON.parse(text);
        ok = true;
      } catch {
        ok = false;
      }
    }
    const res: ExchangeResult = {
      statusCode: r.statusCode,
      body: text,
      ok,
      timedOut: false,
      ...(ok ? {} : { error: "non-JSON reply" }),
    };
    onAttempt(res, resent, latency);
    return res;
  }
}

function shuffled(ids: number[]): number[] {
  const a = [...ids];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    const t = a[i] as number;
    a[i] = a[j] as number;
    a[j] = t;
  }
  return a;
}

async function readBlock(fh: FileHandle, blockId: number, blockSize: number, carveSize: number): Promise<Buffer> {
  const offset = blockId * blockSize;
  const len = Math.max(0, Math.min(blockSize, carveSize - offset));
  const buf = Buffer.alloc(len);
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(buf, got, len - got, offset + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got === len ? buf : buf.subarray(0, got);
}

/** Uploads `opts.archivePath` as one carve and reports what happened. */
export async function runCarve(opts: RunCarveOptions): Promise<CarveResult> {
  const started = performance.now();
  const carveId = opts.carveId ?? randomUUID();
  const requestId = opts.requestId ?? randomUUID();
  const nodeKey = opts.nodeKey ?? "";
  const agentVersion = opts.agentVersion ?? "5.23.0";
  const blockSize = opts.blockSize ?? 8192;
  const timeoutMs = opts.timeoutMs ?? 16000;
  const retryDelays = opts.retryDelaysMs ?? [1000, 4000];
  const retries = compareVersions(agentVersion, "5.22.0") >= 0;
  const attempts = retries ? 3 : 1;
  const inject = opts.inject ?? {};
  if (!Number.isInteger(blockSize) || blockSize <= 0) throw new Error(`invalid block size ${blockSize}`);

  const base = new URL(opts.baseUrl);
  if (base.protocol !== "http:" && base.protocol !== "https:") throw new Error(`unsupported URL ${opts.baseUrl}`);
  const origin = `${base.protocol}//${base.host}`;
  const headersBase: Record<string, string> = {
    "Content-Type": "application/json",
    Accept: "application/json",
    "User-Agent": `osquery/${agentVersion}`,
  };
  if (compareVersions(agentVersion, "5.23.0") >= 0 && nodeKey !== "") {
    headersBase.Authorization = `NodeKey ${nodeKey}`;
  }
  const ownsAgent = opts.httpAgent === undefined;
  const agent: http.Agent =
    opts.httpAgent ??
    (base.protocol === "https:"
      ? new https.Agent({ keepAlive: true, maxSockets: 1 })
      : new http.Agent({ keepAlive: true, maxSockets: 1 }));
  const makeTarget = (endpoint: string): Target => ({
    url: new URL(origin + endpointPath(endpoint, opts.nodeApiKey)),
    headersBase,
    agent,
    tls: opts.tls,
  });
  const startTarget = makeTarget(opts.startEndpoint ?? "");
  const contTarget = makeTarget(opts.continueEndpoint ?? "");

  const sha256 = await sha256File(opts.archivePath);
  const fh = await open(opts.archivePath, "r");
  const requests: CarveRequestRecord[] = [];
  let sessionId: string | null = null;
  let carveSize = 0;
  let blockCount = 0;
  let status: CarveStatus = "SUCCESS";

  /** The agent's fireRequest: up to `attempts` exchanges of the same body. */
  const fire = async (
    target: Target,
    kind: RequestKind,
    blockId: number | null,
    variant: RequestVariant,
    bodyFor: (attempt: number) => Buffer,
  ): Promise<ExchangeResult> => {
    let last: ExchangeResult | undefined;
    for (let attempt = 1; attempt <= attempts; attempt++) {
      last = await exchange(target, bodyFor(attempt), timeoutMs, (r, silentResend, latencyMs) => {
        const record: CarveRequestRecord = {
          kind,
          blockId,
          attempt,
          silentResend,
          variant,
          statusCode: r.statusCode,
          latencyMs: Math.round(latencyMs * 1000) / 1000,
          ok: r.ok,
          body: r.body,
          ...(r.error !== undefined ? { error: r.error } : {}),
        };
        opts.onRequest?.(record);
        requests.push(
          record.body.length > BODY_KEEP ? { ...record, body: `${record.body.slice(0, BODY_KEEP)}...` } : record,
        );
      });
      if (last.ok) return last;
      if (attempt < attempts) {
        const delay = retryDelays[attempt - 1] ?? retryDelays[retryDelays.length - 1] ?? 0;
        if (delay > 0) await sleep(delay);
      }
    }
    return last as ExchangeResult;
  };

  const serialize = (
    kind: RequestKind,
    blockId: number | null,
    attempt: number,
    body: Record<string, unknown>,
  ): Buffer => {
    const out = inject.mutateBody ? inject.mutateBody(kind, blockId, attempt, body) : body;
    return Buffer.from(typeof out === "string" ? out : JSON.stringify(out), "utf8");
  };

  try {
    carveSize = (await fh.stat()).size;
    blockCount = Math.ceil(carveSize / blockSize);

    // --- start ---
    const startBody = {
      block_count: blockCount,
      block_size: blockSize,
      carve_size: carveSize,
      carve_id: carveId,
      request_id: requestId,
      node_key: nodeKey,
    };
    const start = await fire(startTarget, "start", null, "genuine", (attempt) =>
      serialize("start", null, attempt, { ...startBody }),
    );
    if (start.ok) {
      let parsed: unknown = {};
      try {
        parsed = start.body === "" ? {} : JSON.parse(start.body);
      } catch {
        parsed = undefined;
      }
      const sid =
        parsed !== null && typeof parsed === "object" && !Array.isArray(parsed)
          ? (parsed as Record<string, unknown>).session_id
          : undefined;
      if (typeof sid === "string" && sid !== "") sessionId = sid;
    }
    if (sessionId === null) {
      status = "START FAILED";
    } else {
      // --- blocks ---
      const sid = sessionId;
      const all = Array.from({ length: blockCount }, (_, i) => i);
      let order: number[];
      if (inject.order === "reverse") order = [...all].reverse();
      else if (inject.order === "shuffle") order = shuffled(all);
      else if (Array.isArray(inject.order)) order = inject.order.filter((i) => Number.isInteger(i) && i >= 0);
      else order = all;
      const skip = new Set(inject.skip ?? []);
      const dup = new Set(inject.duplicate ?? []);
      const corrupt = new Set(inject.corrupt ?? []);
      const badB64 = new Set(inject.badBase64 ?? []);
      const wrongLen = new Set(inject.wrongLength ?? []);

      const blockBody = (blockId: number, data: string): Record<string, unknown> => ({
        block_id: blockId,
        session_id: sid,
        request_id: requestId,
        data,
      });

      outer: for (const blockId of order) {
        if (skip.has(blockId)) continue;
        const bytes = await readBlock(fh, blockId, blockSize, carveSize);
        const genuine = bytes.toString("base64");
        let firstVariant: RequestVariant = "genuine";
        let firstData = genuine;
        if (badB64.has(blockId)) {
          firstVariant = "badBase64";
          firstData = `!!!!${genuine.slice(4)}`;
        } else if (wrongLen.has(blockId)) {
          firstVariant = "wrongLength";
          firstData = bytes.subarray(0, Math.max(0, bytes.length - 1)).toString("base64");
        }
        const sends: Array<{ variant: RequestVariant; data: string }> = [{ variant: firstVariant, data: firstData }];
        if (dup.has(blockId)) sends.push({ variant: "duplicate", data: firstData });
        if (corrupt.has(blockId)) {
          const flipped = Buffer.from(bytes);
          for (let i = 0; i < flipped.length; i++) flipped[i] = (flipped[i] as number) ^ 0xff;
          sends.push({ variant: "corrupt", data: flipped.toString("base64") });
        }
        for (const s of sends) {
          const r = await fire(contTarget, "block", blockId, s.variant, (attempt) =>
            serialize("block", blockId, attempt, blockBody(blockId, s.data)),
          );
          if (!r.ok && retries) {
            status = "DATA POST FAILED";
            break outer;
          }
          // Before 5.22: "Post of carved block N failed", and on to the next block.
        }
      }
    }
  } finally {
    await fh.close();
    if (ownsAgent) agent.destroy();
  }

  return {
    carveId,
    requestId,
    sessionId,
    sha256,
    carveSize,
    blockCount,
    blockSize,
    status,
    hostStatus: status === "SUCCESS" ? "SUCCESS" : "DATA POST FAILED",
    durationMs: Math.round(performance.now() - started),
    requests,
  };
}
