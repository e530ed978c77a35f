/**
 * Property-based tests (fast-check) of the agent endpoints against a listening service, on both backends:
 * random and hostile bodies for POST /start_uploads, /upload_blocks and / (body-routed), sent as raw bytes
 * with lying content types, compression, chunked transfer, invalid UTF-8 and sizes at the body limits.
 *
 * Every reply is checked against an independent model of the protocol rules (README "How the server answers
 * agents", osquery-carver-protocol.md): a valid start gets 200 {session_id}, an invalid one a 4xx JSON error
 * without session_id; an identical re-send of a stored block gets 200 {"success":true}, any other block a
 * 4xx non-JSON `refused: CODE: ...`; never a 5xx, and the service keeps answering GET /status. The model
 * also names the acceptable refusal codes. A few complete and receiving carves are stored first; hostile
 * blocks aimed at their real sessions, and everything else, must leave their records, archives, partial data
 * and the set of stored files exactly as they were.
 *
 * CARVE_FUZZ_RUNS=<n> scales the number of runs (default 100: 200 per property, 300 for the hostile blocks); anything
 * but a positive integer is refused, so a typo cannot make the properties pass without running.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { readFile, readdir } from "node:fs/promises";
import path from "node:path";
import { brotliCompressSync, deflateSync, gzipSync } from "node:zlib";
import fc from "fast-check";
import { MongoClient, type Binary } from "mongodb";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { ZSTD_MAGIC } from "../../scripts/emulator/index.js";
import { readAll, sha256 } from "../support/carve-data.js";
import { peekEntries, peekEntry } from "../support/catalog-peek.js";
import { positiveCountFromEnv } from "../support/fuzz-runs.js";
import { agentCountsAsSuccess, rawPost, type RawReply } from "../support/raw-http.js";
import { startTestService, type TestService } from "../support/service.js";

// ---------------------------------------------------------------------------------------------- the rules

const MAX_BLOCK = 64 * 1024; // CARVE_MAX_BLOCK_SIZE below
const MAX_CARVE = 1024 * 1024; // CARVE_MAX_CARVE_SIZE below
/** README: the body limit is derived from the largest block, 4 * ceil(size / 3) + 4 KiB. */
const BODY_LIMIT = 4 * Math.ceil(MAX_BLOCK / 3) + 4096;
/** Start requests on their own endpoint are small: src/http/agent-routes.ts START_BODY_LIMIT. */
const START_LIMIT = 64 * 1024;
/** src/storage/gridfs/gridfs-blobs.ts MAX_GRIDFS_BLOCKS */
const MAX_GRIDFS_BLOCKS = 500_000;
const SAFE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const STRICT_BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
/** Runs per property: a positive integer, never 0 or junk (a property run 0 times passes without testing). */
const RUNS = positiveCountFromEnv("CARVE_FUZZ_RUNS", 100);

type Route = "start" | "block" | "auto";
const PATHS: Record<Route, string> = { start: "/start_uploads", block: "/upload_blocks", auto: "/" };
const LIMITS: Record<Route, number> = { start: START_LIMIT, block: BODY_LIMIT, auto: BODY_LIMIT };
type Backend = "filesystem" | "gridfs";

interface KnownCarve {
  carveId: string;
  requestId: string;
  sessionId: string;
  nodeKey: string;
  blockSize: number;
  blockCount: number;
  carveSize: number;
  /** null for carves a fuzz start created: their bytes are unknown and no block is ever sent to them. */
  bytes: Buffer | null;
  stored: Set<number>;
  complete: boolean;
}

type Verdict =
  | { kind: "start-accepted"; sessionId: string | null }
  | { kind: "start-refused"; codes: string[] }
  | { kind: "block-accepted" }
  | { kind: "block-refused"; codes: string[] }
  /** Not JSON at all, on the block or body-routed endpoint: any deliberate refusal, never a success. */
  | { kind: "garbage-refused" }
  | { kind: "would-store" };

/** What goes on the wire. */
interface WireRequest {
  route: Route;
  body: Buffer;
  contentType: string | null;
  /** Content-Encoding header, or null for none. */
  encoding: string | null;
  chunked: boolean;
  /** The body before compression: what the model reasons about when the encoding is a real one. */
  plain: Buffer;
  label: string;
}

const isCount = (v: unknown, min: number): v is number =>
  typeof v === "number" && Number.isInteger(v) && v >= min && v <= Number.MAX_SAFE_INTEGER;
const isSafeId = (v: unknown): v is string => typeof v === "string" && v.length <= 128 && SAFE_ID.test(v);
/** How deeply JSON text nests arrays and objects, counted in the text (a duplicate key that a later one replaces still counts). */
function depthOf(text: string): number {
  let depth = 0;
  let max = 0;
  for (const c of text.replace(/"(?:[^"\\]|\\.)*"/gs, '""')) {
    if (c === "[" || c === "{") max = Math.max(max, ++depth);
    else if (c === "]" || c === "}") depth--;
  }
  return max;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

function expectedLength(c: { blockCount: number; blockSize: number; carveSize: number }, blockId: number): number {
  return blockId < c.blockCount - 1 ? c.blockSize : c.carveSize - (c.blockCount - 1) * c.blockSize;
}

/** The model: what the service must answer, given the carves it holds. */
class Model {
  readonly byCarveId = new Map<string, KnownCarve>();
  readonly bySessionId = new Map<string, KnownCarve>();

  constructor(readonly backend: Backend) {}

  add(c: KnownCarve): void {
    this.byCarveId.set(c.carveId, c);
    this.bySessionId.set(c.sessionId, c);
  }

  /**
   * The bytes the service reads, or the refusal of the read itself. osquery never compresses: any
   * Content-Encoding but identity is refused (the service once inflated gzip; it no longer does).
   */
  private read(req: WireRequest): { bytes: Buffer } | { codes: string[] } {
    if (req.encoding !== null && req.encoding.toLowerCase() !== "identity") return { codes: ["INVALID_BLOCK"] };
    return req.body.length > LIMITS[req.route] ? { codes: ["BODY_TOO_LARGE"] } : { bytes: req.body };
  }

  verdict(req: WireRequest): Verdict {
    const nonJsonRefusal = req.route !== "start";
    const refuse = (codes: string[]): Verdict =>
      nonJsonRefusal ? { kind: "block-refused", codes } : { kind: "start-refused", codes };
    const read = this.read(req);
    if ("codes" in read) return refuse(read.codes);
    let body: unknown;
    try {
      body = JSON.parse(read.bytes.toString("utf8"));
    } catch {
      // Block bodies may be read by a shortcut that only parses the head (src/http/body.ts fastBlockBody):
      // what is not JSON must be refused, by whichever reason the service finds first.
      return nonJsonRefusal ? { kind: "garbage-refused" } : refuse(["INVALID_JSON"]);
    }
    // osquery's bodies are flat: deeper nesting is refused as not-JSON before it is parsed.
    if (depthOf(read.bytes.toString("utf8")) > 32) return nonJsonRefusal ? { kind: "garbage-refused" } : refuse(["INVALID_JSON"]);
    if (req.route === "start") return this.start(body);
    if (req.route === "block") return this.block(body);
    if (isObject(body) && ("block_count" in body || "carve_size" in body)) return this.start(body);
    if (isObject(body) && ("block_id" in body || "session_id" in body)) return this.block(body);
    return { kind: "block-refused", codes: ["UNKNOWN_REQUEST"] };
  }

  private start(body: unknown): Verdict {
    const invalid: Verdict = { kind: "start-refused", codes: ["INVALID_START"] };
    if (!isObject(body)) return invalid;
    const { block_count: bc, block_size: bs, carve_size: cs, carve_id: carveId, request_id: requestId, node_key: nodeKey } = body;
    if (!isCount(bc, 1) || !isCount(bs, 1) || !isCount(cs, 1) || !isSafeId(carveId) || !(requestId === "" || isSafeId(requestId))) return invalid;
    if (nodeKey !== undefined && (typeof nodeKey !== "string" || nodeKey.length > 4096)) return invalid;
    const codes: string[] = [];
    if (bs > MAX_BLOCK) codes.push("BLOCK_SIZE_TOO_LARGE");
    if (cs > MAX_CARVE) codes.push("CARVE_TOO_LARGE");
    if (bc !== Math.ceil(cs / bs)) codes.push("INVALID_START");
    const existing = this.byCarveId.get(carveId);
    if (this.backend === "gridfs" && bc > MAX_GRIDFS_BLOCKS) {
      codes.push("INVALID_START");
      // The blob store judges the geometry (src/storage/gridfs/gridfs-blobs.ts begin()), after the catalog has
      // found the carve id taken: either refusal is right for a start that is both.
      if (existing && codes.length === 1) codes.push("CARVE_ID_CONFLICT");
    }
    if (codes.length > 0) return { kind: "start-refused", codes };
    if (!existing) return { kind: "start-accepted", sessionId: null };
    const same =
      existing.requestId === requestId &&
      existing.blockCount === bc &&
      existing.blockSize === bs &&
      existing.carveSize === cs &&
      existing.nodeKey === (nodeKey ?? "");
    return same ? { kind: "start-accepted", sessionId: existing.sessionId } : { kind: "start-refused", codes: ["CARVE_ID_CONFLICT"] };
  }

  private block(body: unknown): Verdict {
    const refuse = (...codes: string[]): Verdict => ({ kind: "block-refused", codes });
    if (!isObject(body)) return refuse("INVALID_BLOCK");
    const { block_id: blockId, session_id: sessionId, request_id: requestId, data } = body;
    if (!isCount(blockId, 0) || !isSafeId(sessionId) || typeof requestId !== "string" || requestId.length > 256 || typeof data !== "string") {
      return refuse("INVALID_BLOCK");
    }
    const carve = this.bySessionId.get(sessionId);
    if (!carve) return refuse("UNKNOWN_SESSION");
    if (requestId !== carve.requestId) return refuse("REQUEST_ID_MISMATCH");
    if (blockId >= carve.blockCount) return refuse("BLOCK_OUT_OF_RANGE");
    const want = expectedLength(carve, blockId);
    const padding = data.endsWith("==") ? 2 : data.endsWith("=") ? 1 : 0;
    const announced = data.length % 4 === 0 ? (data.length / 4) * 3 - padding : -1;
    // Not standard base64: refused for that, or for the length a decoder makes of it.
    if (data.length % 4 !== 0 || !STRICT_BASE64.test(data)) return refuse("INVALID_BASE64", "BLOCK_LENGTH_MISMATCH");
    if (announced !== want) return refuse("BLOCK_LENGTH_MISMATCH");
    if (!carve.complete && !carve.stored.has(blockId)) return { kind: "would-store" };
    const stored = carve.bytes?.subarray(blockId * carve.blockSize, blockId * carve.blockSize + want);
    return stored && Buffer.from(data, "base64").equals(stored) ? { kind: "block-accepted" } : refuse("BLOCK_CONFLICT");
  }
}

/** Checks one reply against the verdict; returns what is wrong, or null. */
function judge(v: Verdict, reply: RawReply): string | null {
  if (reply.status >= 500) return `5xx for a client's request: ${reply.status} ${reply.text.slice(0, 200)}`;
  let json: unknown = undefined;
  const isJson = (() => {
    try {
      json = JSON.parse(reply.text);
      return true;
    } catch {
      return false;
    }
  })();
  switch (v.kind) {
    case "start-accepted": {
      if (reply.status !== 200 || !isObject(json) || typeof json.session_id !== "string" || !/^[0-9a-f]{32}$/.test(json.session_id)) {
        return `expected 200 {session_id}, got ${reply.status} ${reply.text.slice(0, 200)}`;
      }
      if (v.sessionId !== null && json.session_id !== v.sessionId) return `retried start got another session: ${reply.text}`;
      return null;
    }
    case "start-refused": {
      if (reply.status < 400 || reply.status >= 500) return `expected a 4xx start refusal (${v.codes.join("|")}), got ${reply.status} ${reply.text.slice(0, 200)}`;
      if (!isJson || !isObject(json)) return `a start refusal must be JSON (the agent then fails at once), got ${reply.text.slice(0, 200)}`;
      if ("session_id" in json || reply.text.includes('"session_id"')) return `a start refusal carries a session_id: ${reply.text}`;
      const code = isObject(json.error) ? json.error.code : undefined;
      return typeof code === "string" && v.codes.includes(code) ? null : `expected code ${v.codes.join("|")}, got ${reply.text.slice(0, 200)}`;
    }
    case "block-accepted":
      return reply.status === 200 && reply.text === '{"success":true}' ? null : `expected 200 {"success":true}, got ${reply.status} ${reply.text.slice(0, 200)}`;
    case "block-refused": {
      if (reply.status < 400 || reply.status >= 500) return `expected a 4xx refusal (${v.codes.join("|")}), got ${reply.status} ${reply.text.slice(0, 200)}`;
      if (agentCountsAsSuccess(reply.text)) return `a block refusal must not be empty or JSON (the agent counts those as stored): ${reply.text.slice(0, 200)}`;
      const m = /^refused: ([A-Z0-9_]+): /.exec(reply.text);
      return m?.[1] && v.codes.includes(m[1]) ? null : `expected refused: ${v.codes.join("|")}, got ${reply.status} ${reply.text.slice(0, 200)}`;
    }
    case "garbage-refused": {
      if (reply.status < 400 || reply.status >= 500) return `expected a 4xx refusal of a non-JSON body, got ${reply.status} ${reply.text.slice(0, 200)}`;
      if (/^refused: [A-Z0-9_]+: /.test(reply.text) && !agentCountsAsSuccess(reply.text)) return null;
      // On "/" a body the shortcut read as a start may get the start's JSON refusal; never a session.
      return isObject(json) && isObject(json.error) && !("session_id" in json) ? null : `expected a refusal, got ${reply.status} ${reply.text.slice(0, 200)}`;
    }
    case "would-store":
      return "the generator produced a genuine new block";
  }
}

// ---------------------------------------------------------------------------------------------- generators

const PATH_LIKE = [
  "../../etc/passwd",
  "..",
  ".",
  "../",
  "..\\..\\windows\\win.ini",
  "..\\",
  "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
  "%2e%2e",
  "..%2f",
  "/etc/passwd",
  "/",
  "C:\\Windows\\System32",
  "a/b",
  "a\\b",
  "a\u0000b",
  "\u0000",
  "carve\u0000.json",
  "sessions/../meta/x",
  "../meta/x.json",
  ".lock",
  ".hidden",
  "-rf",
  "_x",
  " a",
  "a ",
  "a".repeat(129),
  "\u202eevil",
  "carvé",
  "\ud800",
  "ａ",
  "x".repeat(300),
  "file:///etc/passwd",
  "index",
  "tmp",
];

const hostileString: fc.Arbitrary<string> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...PATH_LIKE) },
  { weight: 2, arbitrary: fc.string({ maxLength: 30 }) },
  { weight: 2, arbitrary: fc.string({ unit: "binary", maxLength: 12 }) },
  { weight: 2, arbitrary: fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,10}$/) },
  { weight: 1, arbitrary: fc.uuid() },
  { weight: 1, arbitrary: fc.constantFrom("NaN", "Infinity", "-1", "1e400", "0x10", "null", "true", "", " ", "\r\n", "\t") },
);

/** JSON number tokens, including ones JSON.stringify never writes (1e400 parses to Infinity, -0, 1.0 ...). */
const numberToken: fc.Arbitrary<string> = fc.oneof(
  { weight: 3, arbitrary: fc.integer().map(String) },
  { weight: 2, arbitrary: fc.integer({ min: -3, max: 70_000 }).map(String) },
  { weight: 1, arbitrary: fc.double({ noNaN: true, noDefaultInfinity: true }).map((d) => JSON.stringify(d)) },
  {
    weight: 3,
    arbitrary: fc.constantFrom(
      "0", "-0", "1", "-1", "1.0", "1.5", "0.5", "1e3", "1E3", "1e400", "-1e400", "1e-400", "9007199254740991",
      "9007199254740992", "9007199254740993", "1e21", "4294967296", "2147483648", "0.1e1", "100000000000000000000000000000",
      "65536", "65537", "1048576", "1048577", "500001",
    ),
  },
);

/** Not JSON at all. */
const badToken = fc.constantFrom("NaN", "Infinity", "-Infinity", "undefined", "0x10", "01", "+1", ".5", "1.", "'a'", "True", "nul", '"open', "[1,]", "{,}", '"\\x41"');

const DEEP = 10_000;
const deepNested = fc.constantFrom(
  "[".repeat(DEEP) + "]".repeat(DEEP),
  '{"a":'.repeat(DEEP) + "0" + "}".repeat(DEEP),
  "[".repeat(DEEP),
  "[".repeat(100) + "]".repeat(100),
);

const valueToken: fc.Arbitrary<string> = fc.oneof(
  { weight: 4, arbitrary: numberToken },
  { weight: 4, arbitrary: hostileString.map((s) => JSON.stringify(s)) },
  { weight: 1, arbitrary: fc.constantFrom("true", "false", "null", "[]", "{}", '""', "[1]", '{"block_count":1}') },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify(v)) },
  { weight: 1, arbitrary: deepNested },
  { weight: 1, arbitrary: badToken },
);

const START_KEYS = ["block_count", "block_size", "carve_size", "carve_id", "request_id", "node_key"] as const;
const BLOCK_KEYS = ["block_id", "session_id", "request_id", "data"] as const;
const ODD_KEYS = ["session_id", "block_id", "data", "__proto__", "constructor", "toString", "", "BLOCK_COUNT", "carve_id\u0000"];

interface Pairs {
  pairs: Array<[string, string]>;
  drop: string[];
  extra: Array<[string, string]>;
  extraFirst: boolean;
}

/** An object as JSON text; `extra` pairs come first or last, so duplicate keys win or lose. */
function objectText(p: Pairs): string {
  const base = p.pairs.filter(([k]) => !p.drop.includes(k));
  const all = p.extraFirst ? [...p.extra, ...base] : [...base, ...p.extra];
  return `{${all.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(",")}}`;
}

/** How the text is wrapped: mostly as is, sometimes broken or hidden in something else. */
const wrapper: fc.Arbitrary<(t: string) => string> = fc.oneof(
  { weight: 20, arbitrary: fc.constant((t: string) => t) },
  {
    weight: 7,
    arbitrary: fc.constantFrom<(t: string) => string>(
      (t) => `[${t}]`,
      (t) => t.slice(0, Math.max(0, t.length - 1)),
      (t) => `${t}x`,
      (t) => `${t}${t}`,
      (t) => `\ufeff${t}`,
      (t) => `\n\t ${t} \r\n`,
      (t) => `{"body":${t}}`,
    ),
  },
);

const topLevelOther: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom("null", "true", "0", "-1", '"str"', "[]", "[{}]", "", " ", "{", "}", "{}", '{"a":1}', "\u0000", "\uffff", "[null]"),
  deepNested,
  fc.string({ maxLength: 50 }),
  fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
);

/** Raw bytes that are not UTF-8, spliced into a body. */
const INVALID_UTF8 = [[0xff], [0xfe, 0xff], [0xc3], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0x80], [0x00]];

const CONTENT_TYPES = [
  null,
  "application/json",
  "application/json",
  "text/plain",
  "application/x-www-form-urlencoded",
  "multipart/form-data; boundary=----x",
  "application/json; charset=utf-16",
  "text/html; charset=iso-8859-1",
  "application/octet-stream",
  "image/png",
  ";;;",
  'application/json; charset="unterminated',
];
const ENCODINGS = [
  "identity", "IDENTITY", "gzip", "GZIP", "deflate", "br", "gzip:truncated", "gzip:garbage", "compress", "zstd", "gzip, gzip", "x-bogus",
] as const;

interface Transport {
  contentType: string | null;
  encoding: (typeof ENCODINGS)[number] | null;
  chunked: boolean;
  utf8: { at: number; bytes: number[] } | null;
  /** Pad with leading whitespace to exactly the route's body limit, or one byte over. */
  pad: "none" | "limit" | "over";
}

/** Mostly what an agent sends, so the body's content decides; sometimes the transport itself is hostile. */
const transport: fc.Arbitrary<Transport> = fc.record({
  contentType: fc.constantFrom(...CONTENT_TYPES),
  encoding: fc.oneof({ weight: 17, arbitrary: fc.constant(null) }, { weight: 3, arbitrary: fc.constantFrom(...ENCODINGS) }),
  chunked: fc.oneof({ weight: 3, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
  utf8: fc.oneof(
    { weight: 14, arbitrary: fc.constant(null) },
    { weight: 1, arbitrary: fc.record({ at: fc.nat(), bytes: fc.constantFrom(...INVALID_UTF8) }) },
  ),
  pad: fc.oneof(
    { weight: 22, arbitrary: fc.constant<Transport["pad"]>("none") },
    { weight: 3, arbitrary: fc.constantFrom<Transport["pad"]>("limit", "over") },
  ),
});

function wire(route: Route, text: string, t: Transport, label: string): WireRequest {
  let plain = Buffer.from(text, "utf8");
  if (t.utf8) {
    const at = t.utf8.at % (plain.length + 1);
    plain = Buffer.concat([plain.subarray(0, at), Buffer.from(t.utf8.bytes), plain.subarray(at)]);
  }
  if (t.pad !== "none") {
    const target = LIMITS[route] + (t.pad === "over" ? 1 : 0);
    if (plain.length < target) plain = Buffer.concat([Buffer.alloc(target - plain.length, 0x20), plain]);
  }
  let body = plain;
  let encoding: string | null = t.encoding;
  if (t.encoding === "gzip" || t.encoding === "GZIP") body = gzipSync(plain);
  else if (t.encoding === "deflate") body = deflateSync(plain);
  else if (t.encoding === "br") body = brotliCompressSync(plain);
  else if (t.encoding === "gzip:truncated") {
    const gz = gzipSync(plain);
    body = gz.subarray(0, Math.max(1, gz.length - 6));
    encoding = "gzip";
  } else if (t.encoding === "gzip:garbage") encoding = "gzip";
  return printable({ route, body, plain, contentType: t.contentType, encoding, chunked: t.chunked, label });
}

/** A one-line description for counterexamples (bodies can be 90 KB): what matters in them, spelled out. */
function describeRequest(req: WireRequest): string {
  const text = req.plain.toString("utf8");
  const shown = text.length > 300 ? `${text.slice(0, 150)}...(${req.plain.length} bytes)...${text.slice(-100)}` : text;
  let data = "";
  try {
    const parsed: unknown = JSON.parse(text);
    if (isObject(parsed) && typeof parsed.data === "string") {
      const odd = [...parsed.data.matchAll(/[^A-Za-z0-9+/=]/g)].slice(0, 5).map((m) => `${JSON.stringify(m[0])}@${m.index}`);
      data = ` data: ${parsed.data.length} chars${odd.length ? `, not base64: ${odd.join(" ")}` : ""}, ends ${JSON.stringify(parsed.data.slice(-4))};`;
    }
  } catch {
    // not JSON: the body says it all
  }
  return `${req.label}: POST ${PATHS[req.route]} content-type=${req.contentType} encoding=${req.encoding} chunked=${req.chunked};${data} body=${JSON.stringify(shown)}`;
}

/** fast-check prints counterexamples with this instead of dumping the buffers. */
function printable(req: WireRequest): WireRequest {
  return Object.assign(req, { [fc.toStringMethod]: () => describeRequest(req) });
}

// ---------------------------------------------------------------------------------------------- the carves stored first

interface Plan {
  size: number;
  blockSize: number;
  store: number[] | "all";
  zstd?: boolean;
}

const PLANS: Plan[] = [
  { size: 2500, blockSize: 1000, store: "all" },
  { size: 1000, blockSize: 1000, store: "all", zstd: true },
  { size: 4000, blockSize: 1000, store: [0, 2] },
  { size: 2600, blockSize: 1024, store: [2] },
];

async function post(url: string, route: Route, body: unknown): Promise<RawReply> {
  return rawPost(url, PATHS[route], Buffer.from(JSON.stringify(body)), { headers: { "content-type": "application/json" } });
}

async function storeCarves(url: string): Promise<KnownCarve[]> {
  const out: KnownCarve[] = [];
  for (const [i, plan] of PLANS.entries()) {
    const bytes = plan.zstd ? Buffer.concat([ZSTD_MAGIC, randomBytes(plan.size - 4)]) : randomBytes(plan.size);
    const blockCount = Math.ceil(plan.size / plan.blockSize);
    const c = { carveId: randomUUID(), requestId: randomUUID(), nodeKey: `nk-${i}`, blockSize: plan.blockSize, blockCount, carveSize: plan.size };
    const start = await post(url, "start", {
      block_count: blockCount,
      block_size: plan.blockSize,
      carve_size: plan.size,
      carve_id: c.carveId,
      request_id: c.requestId,
      node_key: c.nodeKey,
    });
    const sessionId = (JSON.parse(start.text) as { session_id: string }).session_id;
    const ids = plan.store === "all" ? Array.from({ length: blockCount }, (_, b) => b) : plan.store;
    for (const b of ids) {
      const data = bytes.subarray(b * plan.blockSize, b * plan.blockSize + expectedLength(c, b)).toString("base64");
      const r = await post(url, "block", { block_id: b, session_id: sessionId, request_id: c.requestId, data });
      expect(r.text).toBe('{"success":true}');
    }
    out.push({ ...c, sessionId, bytes, stored: new Set(ids), complete: plan.store === "all" });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------- the suite

const BACKENDS: Backend[] = ["filesystem", "gridfs"];

describe.each(BACKENDS)("agent endpoints under hostile input (%s)", (backend) => {
  let svc: TestService;
  let model: Model;
  let real: KnownCarve[];
  let mongo: MongoClient | null = null;
  let database = "";
  /** Carves fuzz starts created (valid random starts are accepted, as they must be). */
  const created = new Set<string>();

  beforeAll(async () => {
    const env: Record<string, string> = { CARVE_MAX_BLOCK_SIZE: "64KiB", CARVE_MAX_CARVE_SIZE: "1MiB", LOG_LEVEL: "warn" };
    if (backend === "gridfs") {
      database = `carve_fuzz_${randomBytes(6).toString("hex")}`;
      Object.assign(env, { CARVE_STORAGE: "gridfs", CARVE_MONGODB_URI: inject("mongoUri"), CARVE_MONGODB_DATABASE: database });
      mongo = await MongoClient.connect(inject("mongoUri"));
    }
    svc = await startTestService(env);
    model = new Model(backend);
    real = await storeCarves(svc.url);
    for (const c of real) model.add(c);
  });

  afterAll(async () => {
    await svc.dispose();
    if (mongo) {
      await mongo.db(database).dropDatabase();
      await mongo.close();
    }
  });

  /** Everything that must not change: records, archives, partial data, and which files exist. */
  async function snapshot(): Promise<Record<string, unknown>> {
    const s: Record<string, unknown> = {};
    for (const c of real) {
      const r = await svc.store.getCarve(c.carveId);
      s[`record ${c.carveId}`] = {
        status: r.status,
        blocksReceived: r.blocksReceived,
        bytesReceived: r.bytesReceived,
        sha256: r.sha256,
        compression: r.compression,
        sessionId: r.sessionId,
        requestId: r.requestId,
        nodeKeySha256: r.nodeKeySha256,
        geometry: [r.blockCount, r.blockSize, r.carveSize],
        completedAt: r.completedAt?.toISOString() ?? null,
        updatedAt: r.updatedAt.toISOString(),
      };
      s[`missing ${c.carveId}`] = await svc.store.missingBlocks(c.carveId, 1000);
      if (r.status === "complete") s[`archive ${c.carveId}`] = sha256(await readAll((await svc.store.openArchive(c.carveId)).stream));
    }
    if (backend === "filesystem") {
      s["carves/"] = (await readdir(path.join(svc.dataDir, "carves"))).sort();
      for (const c of real) {
        const entry = peekEntry(svc.dataDir, c.carveId);
        if (!entry) throw new Error(`no catalog entry for ${c.carveId}`);
        s[`catalog ${c.carveId}`] = JSON.stringify(entry);
        if (!c.complete) {
          for (const f of ["data.part", "journal"]) {
            s[`${f} ${c.carveId}`] = sha256(await readFile(path.join(svc.dataDir, "sessions", c.carveId, f)));
          }
        }
      }
    } else if (mongo) {
      const db = mongo.db(database);
      const ids = real.map((c) => c.carveId);
      s.carves = JSON.stringify(await db.collection("carves.carves").find({ _id: { $in: ids as never[] } }).sort({ _id: 1 }).toArray());
      s.sessions = JSON.stringify(await db.collection("carves.sessions").find({ _id: { $in: ids as never[] } }).sort({ _id: 1 }).toArray());
      const chunks = await db.collection("carves.chunks").find({}).sort({ _id: 1 }).toArray();
      s.chunks = chunks.map((d) => `${String(d._id)}:${sha256(Buffer.from((d.data as Binary).value()))}`);
      s.files = JSON.stringify(await db.collection("carves.files").find({}).sort({ _id: 1 }).toArray());
    }
    return s;
  }

  /** Carves in the catalog, and uploads staged (each accepted start makes one of each). */
  async function carveCount(): Promise<{ catalog: number; staged: number }> {
    if (backend === "filesystem") {
      return { catalog: peekEntries(svc.dataDir).length, staged: (await readdir(path.join(svc.dataDir, "sessions"))).length };
    }
    const db = (mongo as MongoClient).db(database);
    return { catalog: await db.collection("carves.carves").countDocuments(), staged: await db.collection("carves.sessions").countDocuments() };
  }

  /** What changed since `before`, one line per changed item. */
  async function changesSince(before: Record<string, unknown>): Promise<string[]> {
    const after = await snapshot();
    return Object.keys({ ...before, ...after })
      .filter((k) => JSON.stringify(before[k]) !== JSON.stringify(after[k]))
      .map((k) => `${k}: ${JSON.stringify(before[k])} -> ${JSON.stringify(after[k])}`.slice(0, 600));
  }

  /** Sends one request, checks the reply against the model, and that the service still answers. */
  async function exchange(req: WireRequest): Promise<void> {
    const v = model.verdict(req);
    fc.pre(v.kind !== "would-store");
    const headers: Record<string, string> = {};
    if (req.contentType !== null) headers["content-type"] = req.contentType;
    if (req.encoding !== null) headers["content-encoding"] = req.encoding;
    const reply = await rawPost(svc.url, PATHS[req.route], req.body, { headers, chunked: req.chunked });
    const problem = judge(v, reply);
    if (problem !== null) throw new Error(`${problem}\n  request: ${describeRequest(req)}\n  model: ${JSON.stringify(v)}`);
    if (v.kind === "start-accepted" && v.sessionId === null) {
      // A new carve (the plain body is what the service decoded): the model must know it from now on.
      const body = JSON.parse(req.plain.toString("utf8")) as Record<string, unknown>;
      model.add({
        carveId: body.carve_id as string,
        requestId: body.request_id as string,
        sessionId: (JSON.parse(reply.text) as { session_id: string }).session_id,
        nodeKey: typeof body.node_key === "string" ? body.node_key : "",
        blockCount: body.block_count as number,
        blockSize: body.block_size as number,
        carveSize: body.carve_size as number,
        bytes: null,
        stored: new Set(),
        complete: false,
      });
      created.add(body.carve_id as string);
    }
    const status = await fetch(`${svc.url}/status`);
    if (status.status !== 200) throw new Error(`GET /status answered ${status.status} after ${describeRequest(req)}`);
  }

  /**
   * Runs a property over generated requests; afterwards (and, with `everyRun`, after each request) nothing
   * stored has changed, refused starts left nothing behind, and nothing was logged as a server-side error.
   */
  async function check(requests: fc.Arbitrary<WireRequest>, runs: number, everyRun: boolean): Promise<void> {
    // The store is the truth about which blocks are stored (a failed earlier property may have changed it).
    for (const c of real) {
      const missing = new Set(await svc.store.missingBlocks(c.carveId, 1000));
      c.stored = new Set(Array.from({ length: c.blockCount }, (_, b) => b).filter((b) => !missing.has(b)));
      c.complete = missing.size === 0;
    }
    const before = await snapshot();
    const countBefore = await carveCount();
    const createdBefore = created.size;
    const logsBefore = svc.logs.lines.length;
    let ran = 0;
    const prop = fc.asyncProperty(requests, async (req) => {
      ran++;
      try {
        await exchange(req);
      } catch (err) {
        if (fc.PreconditionFailure.isFailure(err)) throw err;
        const changes = await changesSince(before);
        const also = changes.length > 0 ? `\n  and stored carves changed:\n    ${changes.join("\n    ")}` : "";
        throw new Error(`${err instanceof Error ? err.message : String(err)}${also}`);
      }
      if (!everyRun) return;
      const changes = await changesSince(before);
      if (changes.length > 0) throw new Error(`stored carves changed:\n  ${changes.join("\n  ")}\n  after: ${describeRequest(req)}`);
    });
    await fc.assert(prop, { numRuns: runs, endOnFailure: true });
    // the property really ran (skipped preconditions run it more often than numRuns, never less)
    expect(ran).toBeGreaterThanOrEqual(runs);
    expect(await changesSince(before)).toEqual([]);
    const accepted = created.size - createdBefore;
    expect(await carveCount(), "carves stored = carves before + valid starts accepted").toEqual({
      catalog: countBefore.catalog + accepted,
      staged: countBefore.staged + accepted,
    });
    const errors = svc.logs.entries().slice(logsBefore).filter((e) => typeof e.level === "number" && e.level >= 50);
    expect(errors.map((e) => JSON.stringify(e).slice(0, 300))).toEqual([]);
  }

  // -------------------------------------------------------------------------------------------- properties

  /** Rare structural damage: a dropped key, or extra pairs that come first or last (duplicate keys). */
  function damage<K extends string>(keys: readonly K[], extraKeys: readonly string[]) {
    return fc.record({
      drop: fc.oneof({ weight: 5, arbitrary: fc.constant<string[]>([]) }, { weight: 1, arbitrary: fc.subarray<string>([...keys], { minLength: 1, maxLength: 2 }) }),
      extra: fc.oneof(
        { weight: 4, arbitrary: fc.constant<Array<[string, string]>>([]) },
        { weight: 1, arbitrary: fc.array(fc.tuple(fc.constantFrom(...keys, ...extraKeys), valueToken), { minLength: 1, maxLength: 3 }) },
      ),
      extraFirst: fc.boolean(),
    });
  }

  /** Mostly one thing wrong at a time, so that every rule gets to decide on its own. */
  function startText(): fc.Arbitrary<string> {
    const realCarves = real;
    const blockSize = fc.oneof(
      { weight: 4, arbitrary: fc.integer({ min: 1, max: MAX_BLOCK }) },
      { weight: 2, arbitrary: fc.integer({ min: 1, max: 100 }) },
      { weight: 1, arbitrary: fc.constantFrom(MAX_BLOCK, MAX_BLOCK + 1, 2 * MAX_BLOCK) },
    );
    const carveSize = fc.oneof(
      { weight: 4, arbitrary: fc.integer({ min: 1, max: MAX_CARVE }) },
      { weight: 2, arbitrary: fc.integer({ min: 1, max: 5000 }) },
      { weight: 1, arbitrary: fc.constantFrom(MAX_CARVE, MAX_CARVE + 1, 4 * MAX_CARVE) },
    );
    const consistent = fc
      .record({ bs: blockSize, cs: carveSize, off: fc.oneof({ weight: 6, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.constantFrom(-1, 1) }) })
      .map(({ bs, cs, off }) => ({ bc: String(Math.ceil(cs / bs) + off), bs: String(bs), cs: String(cs) }));
    const random = fc.record({ bc: numberToken, bs: numberToken, cs: numberToken });
    // GridFS keeps one marker per block in its session document: at most 500,000 blocks.
    const manyBlocks = fc.constantFrom(MAX_GRIDFS_BLOCKS, MAX_GRIDFS_BLOCKS + 1).map((n) => ({ bc: String(n), bs: "1", cs: String(n) }));
    const realGeometry = fc.constantFrom(...realCarves).map((c) => ({ bc: String(c.blockCount), bs: String(c.blockSize), cs: String(c.carveSize) }));
    const id = (real_: string[]) =>
      fc.oneof(
        { weight: 8, arbitrary: fc.uuid().map((s) => JSON.stringify(s)) },
        { weight: 2, arbitrary: fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/).map((s) => JSON.stringify(s)) },
        { weight: 4, arbitrary: fc.constantFrom(...real_.map((s) => JSON.stringify(s))) },
        { weight: 3, arbitrary: hostileString.map((s) => JSON.stringify(s)) },
        { weight: 1, arbitrary: valueToken },
      );
    const fields = fc.record({
      geometry: fc.oneof(
        { weight: 8, arbitrary: consistent },
        { weight: 2, arbitrary: random },
        { weight: 1, arbitrary: manyBlocks },
        { weight: 2, arbitrary: realGeometry },
      ),
      carveId: id(realCarves.map((c) => c.carveId)),
      requestId: id(realCarves.map((c) => c.requestId)),
      nodeKey: fc.oneof(
        { weight: 6, arbitrary: fc.constantFrom(...realCarves.map((c) => JSON.stringify(c.nodeKey)), '""') },
        { weight: 3, arbitrary: hostileString.map((s) => JSON.stringify(s)) },
        { weight: 1, arbitrary: valueToken },
        { weight: 1, arbitrary: fc.constant(JSON.stringify("k".repeat(4097))) },
      ),
      damage: damage(START_KEYS, ODD_KEYS),
    });
    const random_ = fields.map((f) =>
      objectText({
        pairs: [
          ["block_count", f.geometry.bc],
          ["block_size", f.geometry.bs],
          ["carve_size", f.geometry.cs],
          ["carve_id", f.carveId],
          ["request_id", f.requestId],
          ["node_key", f.nodeKey],
        ],
        ...f.damage,
      }),
    );
    // A real carve's own start, retried exactly (must get its session) or with one field changed (conflict).
    const retried = fc
      .record({
        c: fc.constantFrom(...realCarves),
        change: fc.oneof(
          { weight: 3, arbitrary: fc.constant(null) },
          { weight: 4, arbitrary: fc.constantFrom("request_id", "block_count", "block_size", "carve_size", "node_key") },
        ),
        value: fc.oneof(fc.uuid().map((s) => JSON.stringify(s)), fc.nat(5000).map(String), valueToken),
      })
      .map(({ c, change, value }) => {
        const pairs: Array<[string, string]> = [
          ["block_count", String(c.blockCount)],
          ["block_size", String(c.blockSize)],
          ["carve_size", String(c.carveSize)],
          ["carve_id", JSON.stringify(c.carveId)],
          ["request_id", JSON.stringify(c.requestId)],
          ["node_key", JSON.stringify(c.nodeKey)],
        ];
        return objectText({ pairs, drop: [], extra: change ? [[change, value]] : [], extraFirst: false });
      });
    return fc.oneof({ weight: 7, arbitrary: random_ }, { weight: 3, arbitrary: retried }, { weight: 1, arbitrary: topLevelOther });
  }

  function blockText(): fc.Arbitrary<string> {
    const realCarves = real;
    const base64ish = fc.oneof(
      fc.base64String({ maxLength: 64 }),
      fc.string({ maxLength: 40 }),
      fc.constantFrom("", "====", "A", "AA==", "AAA=", "AAAA"),
      fc.constantFrom(...realCarves).map((c) => (c.bytes as Buffer).subarray(0, c.blockSize).toString("base64")),
    );
    const fields = fc.record({
      blockId: fc.oneof({ weight: 4, arbitrary: fc.nat(5).map(String) }, { weight: 2, arbitrary: numberToken }, { weight: 1, arbitrary: valueToken }),
      sessionId: fc.oneof(
        { weight: 5, arbitrary: fc.constantFrom(...realCarves.map((c) => JSON.stringify(c.sessionId))) },
        { weight: 3, arbitrary: hostileString.map((s) => JSON.stringify(s)) },
        { weight: 1, arbitrary: fc.stringMatching(/^[0-9a-f]{32}$/).map((s) => JSON.stringify(s)) },
        { weight: 1, arbitrary: valueToken },
      ),
      requestId: fc.oneof(
        { weight: 5, arbitrary: fc.constantFrom(...realCarves.map((c) => JSON.stringify(c.requestId))) },
        { weight: 2, arbitrary: valueToken },
      ),
      data: fc.oneof({ weight: 5, arbitrary: base64ish.map((s) => JSON.stringify(s)) }, { weight: 1, arbitrary: valueToken }),
      damage: damage(BLOCK_KEYS, [...ODD_KEYS, "carve_size"]),
    });
    const random_ = fields.map((f) =>
      objectText({
        pairs: [
          ["block_id", f.blockId],
          ["session_id", f.sessionId],
          ["request_id", f.requestId],
          ["data", f.data],
        ],
        ...f.damage,
      }),
    );
    return fc.oneof({ weight: 8, arbitrary: random_ }, { weight: 1, arbitrary: topLevelOther });
  }

  /** Blocks aimed at the real sessions: wrong request ids, odd block ids, broken or conflicting data. */
  function hostileBlockText(): fc.Arbitrary<string> {
    const realCarves = real;
    return fc
      .record({
        c: fc.constantFrom(...realCarves),
        other: fc.constantFrom(...realCarves),
        requestVariant: fc.oneof(
          { weight: 12, arbitrary: fc.constant("right") },
          { weight: 3, arbitrary: fc.constantFrom("other", "uuid", "empty", "upper", "long", "space") },
        ),
        uuid: fc.uuid(),
        blockId: fc.oneof(
          { weight: 7, arbitrary: fc.nat(4).map(String) },
          { weight: 1, arbitrary: fc.constantFrom("-1", "-0", "0.5", "1.5", "1.0", "2147483648", "4294967296", "9007199254740991", "9007199254740992", "1e21", "1e308", "1e400", '"0"', "null") },
        ),
        dataVariant: fc.constantFrom(
          "identical", "identical", "conflict", "conflict", "short", "long", "empty", "urlsafe", "space", "mime", "midpad", "nopad",
          "unicode", "unicode-escaped", "unicode-escaped", "bang", "double", "null", "number", "array",
        ),
        at: fc.nat(),
      })
      .map(({ c, other, requestVariant, uuid, blockId, dataVariant, at }) => {
        const requestId = {
          right: c.requestId,
          other: other.carveId === c.carveId ? uuid : other.requestId,
          uuid,
          empty: "",
          upper: c.requestId.toUpperCase(),
          long: "r".repeat(300),
          space: `${c.requestId} `,
        }[requestVariant];
        const n = Number(blockId);
        const id = Number.isInteger(n) && n >= 0 && n < c.blockCount ? n : 0;
        const genuine = (c.bytes as Buffer).subarray(id * c.blockSize, id * c.blockSize + expectedLength(c, id));
        const stored = c.complete || c.stored.has(id);
        // Valid base64 of the right length may only carry the stored bytes or conflict with them.
        const variant = !stored && (dataVariant === "identical" || dataVariant === "conflict") ? "short" : dataVariant;
        const b64 = genuine.toString("base64");
        const pos = at % Math.max(1, b64.length - 4);
        const flipped = Buffer.from(genuine);
        flipped[at % flipped.length] = ((flipped[at % flipped.length] ?? 0) ^ (1 << at % 8)) & 0xff;
        const dataText: Record<string, () => string> = {
          identical: () => JSON.stringify(b64),
          conflict: () => JSON.stringify(flipped.toString("base64")),
          short: () => JSON.stringify(genuine.subarray(0, genuine.length - 1).toString("base64")),
          long: () => JSON.stringify(Buffer.concat([genuine, Buffer.from([at & 0xff])]).toString("base64")),
          empty: () => '""',
          urlsafe: () => JSON.stringify(/[+/]/.test(b64) ? b64.replace(/\+/g, "-").replace(/\//g, "_") : `-${b64.slice(1)}`),
          space: () => JSON.stringify(`${b64.slice(0, pos)} ${b64.slice(pos + 1)}`),
          mime: () => JSON.stringify(b64.replace(/(.{76})/g, "$1\r\n")),
          midpad: () => JSON.stringify(`${b64.slice(0, pos)}=${b64.slice(pos + 1)}`),
          nopad: () => JSON.stringify(b64.endsWith("=") ? b64.replace(/=+$/, "") : b64.slice(0, -1)),
          // A character whose low byte is a base64 letter: not base64, whatever a lenient decoder makes of it.
          unicode: () => JSON.stringify(`${b64.slice(0, pos)}${String.fromCharCode(0x100 | b64.charCodeAt(pos))}${b64.slice(pos + 1)}`),
          // The same character written as a JSON escape, as any JSON encoder may write non-ASCII.
          "unicode-escaped": () => `"${b64.slice(0, pos)}\\u${(0x100 | b64.charCodeAt(pos)).toString(16).padStart(4, "0")}${b64.slice(pos + 1)}"`,
          bang: () => JSON.stringify(`${b64.slice(0, pos)}!${b64.slice(pos + 1)}`),
          double: () => JSON.stringify(b64 + b64),
          null: () => "null",
          number: () => "12345",
          array: () => JSON.stringify([b64]),
        };
        return `{"block_id":${blockId},"session_id":${JSON.stringify(c.sessionId)},"request_id":${JSON.stringify(requestId)},"data":${(dataText[variant] as () => string)()}}`;
      });
  }

  it("POST /start_uploads: any body gets 200 {session_id} exactly when it is a valid start, else a 4xx JSON refusal without session_id", async () => {
    await check(fc.tuple(startText(), wrapper, transport).map(([text, wrap, t]) => wire("start", wrap(text), t, "start")), RUNS * 2, false);
  });

  it("POST /upload_blocks: any body is refused 4xx non-JSON with its reason, unless it re-sends a stored block exactly", async () => {
    await check(fc.tuple(blockText(), wrapper, transport).map(([text, wrap, t]) => wire("block", wrap(text), t, "block")), RUNS * 2, false);
  });

  it("POST / (empty endpoint flags): starts and blocks are told apart by their keys and answered by the same rules", async () => {
    const text = fc.oneof(startText(), blockText(), topLevelOther);
    await check(fc.tuple(text, wrapper, transport).map(([t, wrap, tr]) => wire("auto", wrap(t), tr, "auto")), RUNS * 2, false);
  });

  it("hostile blocks aimed at the real sessions change nothing stored (checked after every request)", async () => {
    const plainTransport = fc.record({
      contentType: fc.constantFrom(...CONTENT_TYPES),
      encoding: fc.oneof({ weight: 19, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.constant("gzip" as const) }),
      chunked: fc.boolean(),
      utf8: fc.constant(null),
      pad: fc.oneof({ weight: 11, arbitrary: fc.constant<Transport["pad"]>("none") }, { weight: 1, arbitrary: fc.constantFrom<Transport["pad"]>("limit", "over") }),
    });
    const requests = fc
      .tuple(hostileBlockText(), plainTransport, fc.constantFrom<Route>("block", "block", "auto"))
      .map(([text, t, route]) => wire(route, text, t, "hostile block"));
    await check(requests, RUNS * 3, true);
  });

  it("fixed hostile cases: exact body limits, 10k-deep nesting, a gzip bomb, path-like and NUL ids, duplicate keys, invalid UTF-8", async () => {
    const c = real[0] as KnownCarve; // complete
    const r = real[2] as KnownCarve; // receiving, blocks 0 and 2 stored
    const validStart = (): string =>
      JSON.stringify({ block_count: 2, block_size: 1000, carve_size: 1500, carve_id: randomUUID(), request_id: randomUUID(), node_key: "" });
    const resend = JSON.stringify({
      block_id: 0,
      session_id: c.sessionId,
      request_id: c.requestId,
      data: (c.bytes as Buffer).subarray(0, c.blockSize).toString("base64"),
    });
    const plain: Transport = { contentType: "application/json", encoding: null, chunked: false, utf8: null, pad: "none" };
    const bomb = gzipSync(Buffer.concat([Buffer.alloc(8 * 1024 * 1024, 0x20), Buffer.from(validStart())]));
    const cases: WireRequest[] = [
      wire("start", validStart(), { ...plain, pad: "limit" }, "start padded to exactly the limit"),
      wire("start", validStart(), { ...plain, pad: "over" }, "start one byte over the limit"),
      wire("block", resend, { ...plain, pad: "limit" }, "identical re-send padded to exactly the limit"),
      wire("block", resend, { ...plain, pad: "over" }, "block one byte over the limit"),
      wire("block", resend, { ...plain, pad: "over", chunked: true }, "chunked block one byte over the limit"),
      wire("auto", validStart(), { ...plain, pad: "over" }, "start on / one byte over the (block) limit"),
      wire("auto", validStart(), { ...plain, pad: "limit" }, "start on / at the limit"),
      ...(["start", "block", "auto"] as const).flatMap((route) => [
        wire(route, "[".repeat(DEEP) + "]".repeat(DEEP), plain, "10k nested arrays"),
        wire(route, '{"a":'.repeat(DEEP) + "0" + "}".repeat(DEEP), plain, "10k nested objects"),
        wire(route, `{"block_count":${"[".repeat(DEEP)}${"]".repeat(DEEP)},"carve_size":1}`, plain, "10k nesting in a field"),
        wire(route, `{"block_id":0,"session_id":${"[".repeat(DEEP)}${"]".repeat(DEEP)}}`, plain, "10k nesting in session_id"),
        { route, body: bomb, plain: Buffer.from("(8 MiB of spaces, gzip)"), contentType: "application/json", encoding: "gzip", chunked: false, label: "gzip bomb" },
        wire(route, "", plain, "empty body"),
        wire(route, "", { ...plain, chunked: true }, "empty chunked body"),
      ]),
      ...["../../etc/passwd", "..", "/etc/passwd", "..\\..\\x", "%2e%2e%2f", "a\u0000b", "\u0000", "a/../../b", "x".repeat(129)].flatMap((bad) => [
        wire("start", JSON.stringify({ block_count: 1, block_size: 10, carve_size: 10, carve_id: bad, request_id: randomUUID(), node_key: "" }), plain, "path-like carve_id"),
        wire("start", JSON.stringify({ block_count: 1, block_size: 10, carve_size: 10, carve_id: randomUUID(), request_id: bad, node_key: "" }), plain, "path-like request_id"),
        wire("block", JSON.stringify({ block_id: 0, session_id: bad, request_id: r.requestId, data: "AAAA" }), plain, "path-like session_id"),
        wire("auto", JSON.stringify({ block_id: 0, session_id: bad, request_id: r.requestId, data: "AAAA" }), plain, "path-like session_id on /"),
      ]),
      // Duplicate keys: the last one wins, both ways.
      wire("start", `{"carve_id":"../x",${validStart().slice(1)}`, plain, "unsafe carve_id overridden by a later valid one"),
      wire("start", `${validStart().slice(0, -1)},"carve_id":"../x"}`, plain, "valid carve_id overridden by a later unsafe one"),
      wire("block", `${resend.slice(0, -1)},"session_id":"../../meta"}`, plain, "session_id overridden by a path"),
      wire("block", `${resend.slice(0, -1)},"block_id":-1}`, plain, "block_id overridden by -1"),
      // Invalid UTF-8 in ids and data.
      { ...wire("start", validStart(), plain, ""), label: "invalid UTF-8 in carve_id", body: Buffer.concat([Buffer.from('{"block_count":1,"block_size":10,"carve_size":10,"carve_id":"a'), Buffer.from([0xff, 0xfe]), Buffer.from('b","request_id":"r"}')]) },
      { ...wire("block", resend, plain, ""), label: "invalid UTF-8 in data", body: Buffer.from(Buffer.from(resend.replace(/"data":"(.)/, '"data":"\u0000$1'), "utf8").map((b) => (b === 0 ? 0xff : b))) },
      // Content types and encodings that lie or are unsupported; the valid requests still work.
      wire("start", validStart(), { ...plain, contentType: "multipart/form-data; boundary=x" }, "valid start as multipart"),
      wire("start", validStart(), { ...plain, encoding: "gzip" }, "valid start, gzip (osquery never compresses)"),
      wire("block", resend, { ...plain, contentType: "text/html", encoding: "deflate" }, "identical re-send, deflate, text/html"),
      wire("block", resend, { ...plain, contentType: "text/html", encoding: "IDENTITY" }, "identical re-send, Content-Encoding: IDENTITY"),
      wire("block", resend, { ...plain, encoding: "zstd" }, "zstd encoding"),
      wire("block", resend, { ...plain, encoding: "gzip:garbage" }, "gzip header on plain text"),
      wire("block", resend, { ...plain, encoding: "gzip:truncated" }, "truncated gzip"),
    ];
    // The plain text of hand-built bodies is the body itself.
    for (const req of cases) if (req.encoding === null) req.plain = req.body;
    const before = await snapshot();
    const failures: string[] = [];
    for (const req of cases) {
      await exchange(req).catch((err: unknown) => failures.push(err instanceof Error ? err.message : String(err)));
    }
    expect(failures).toEqual([]);
    expect(await changesSince(before)).toEqual([]);
  });
});
