import type { IncomingMessage, ServerResponse } from "node:http";
import express, { type NextFunction, type Request, type Response, type Router } from "express";
import { AppError, safeErrorFields } from "../errors.js";
import type { IngestService } from "../services/ingest.js";
import type { Logger } from "../logger.js";
import { refuseNonJson, refuseStart, replyBlockAccepted, replyStartAccepted } from "./agent-reply.js";
import { blockBodySchema, describeIssues, startBodySchema, type BlockBody } from "./agent-schemas.js";
import { fastBlockBody, MAX_JSON_DEPTH, readBody, tooDeeplyNested, type BudgetCharge } from "./body.js";
import { answerTimeout, type BodyWatch } from "./body-watch.js";
import { resolveClient } from "./client-identity.js";
import { ByteBudget } from "../util/byte-budget.js";
import { BufferPool } from "../util/buffer-pool.js";
import { expectedBlockLength, SAFE_ID } from "../carves/geometry.js";
import type { Metrics } from "../metrics.js";
import { PUBLIC_FIRST_SEGMENTS, registerAgentPaths, requestIdOf } from "./logging.js";

export interface AgentRoutesOptions {
  startPath: string;
  continuePath: string;
  maxBlockSize: number;
  /** Bytes of agent request bodies held in memory at once; further requests wait (TCP backpressure). */
  inflightBodyBytes: number;
  /** Blocks are bound to the start's certificate: only then is each block's certificate looked at. */
  bindCertificates: boolean;
  /** Whether a peer address is a trusted TLS proxy whose identity headers are believed. */
  isTrustedProxy: (address: string | undefined) => boolean;
}

type Kind = "start" | "block";

/** Largest block request body: base64 of the largest block plus room for the other keys. */
export function blockBodyLimit(maxBlockSize: number): number {
  return 4 * Math.ceil(maxBlockSize / 3) + 4096;
}

const START_BODY_LIMIT = 64 * 1024;

/**
 * One path segment holding a node key, as agents started with the hidden `--tls_node_api` flag send it: osquery
 * builds every URI as `https://` + tls_hostname + `/<node_key>` + endpoint (osquery/remote/utility.h makeURI),
 * without encoding. Node keys are made by the enrolling server; this accepts the URL-safe characters of a path
 * segment (RFC 3986 pchar without "%", "(" and ")"). A key containing "/" cannot be told apart from a path.
 * The segment may be empty: an agent without a node key yet (or with --disable_enrollment) sends
 * `//start_uploads`, which NGINX matches as `/start_uploads` but passes on as sent.
 */
export const NODE_KEY_SEGMENT = "[A-Za-z0-9._~!$&'*+,;=:@-]{0,512}";

const escapeRegExp = (s: string): string => s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");

/** The service's own first segments (`/api/`, `/file_request/`...) are never taken for a node key. */
const NOT_A_NODE_KEY = `(?!(?:${[...PUBLIC_FIRST_SEGMENTS].map(escapeRegExp).join("|")})/)`;

/**
 * The `--tls_node_api` form of an endpoint: `/<node_key><endpoint>`, and `/<node_key>/` for the body-routed
 * endpoint. The node key is captured as the route parameter `nodeKey`.
 */
export function nodeApiRoute(endpoint: string): RegExp {
  return new RegExp(`^/${NOT_A_NODE_KEY}(?<nodeKey>${NODE_KEY_SEGMENT})${escapeRegExp(endpoint)}$`);
}

/** osquery sends `Authorization: NodeKey <key>` from 5.23 on. */
/** A request announces a body by Content-Length > 0 or Transfer-Encoding (RFC 9112 6.1). */
function hasBody(req: IncomingMessage): boolean {
  const length = Number(req.headers["content-length"] ?? "0");
  return (Number.isFinite(length) && length > 0) || req.headers["transfer-encoding"] !== undefined;
}

function nodeKeyFromHeader(req: IncomingMessage): string | undefined {
  const auth = req.headers.authorization;
  if (typeof auth !== "string") return undefined;
  const m = /^NodeKey\s+(\S+)$/i.exec(auth.trim());
  return m?.[1];
}

/**
 * The block body when it is plainly valid (every agent block), checked by hand: the same rules as
 * blockBodySchema, without zod's machinery (~3% of the 8 KiB block path). Anything else returns null and is
 * parsed by the schema, for its exact error.
 */
export function plainBlockBody(body: unknown): BlockBody | null {
  if (typeof body !== "object" || body === null) return null;
  const { block_id: blockId, session_id: sessionId, request_id: requestId, data } = body as Record<string, unknown>;
  if (typeof blockId !== "number" || !Number.isSafeInteger(blockId) || blockId < 0) return null;
  if (typeof sessionId !== "string" || sessionId.length > 128 || !SAFE_ID.test(sessionId)) return null;
  if (typeof requestId !== "string" || requestId.length > 256) return null;
  if (typeof data !== "string" && !Buffer.isBuffer(data)) return null;
  return { block_id: blockId, session_id: sessionId, request_id: requestId, data };
}

/** Which request a body is, for agents whose endpoint flags are empty and post both to `/`. */
function kindOf(body: unknown): Kind | null {
  if (typeof body !== "object" || body === null || Array.isArray(body)) return null;
  if ("block_count" in body || "carve_size" in body) return "start";
  if ("block_id" in body || "session_id" in body) return "block";
  return null;
}

/** What a request is handled with: where refusals are logged and the request id they carry. */
interface RequestContext {
  log: Logger;
  requestId: string | undefined;
}

export interface AgentEndpoints {
  /** Every agent route, for the Express app. */
  router: Router;
  /**
   * Runs in front of the Express app (app.ts createRequestHandler): answers `POST <continuePath>` itself and
   * passes anything else on (`next`). Blocks are by far the most frequent request; Express's per-request
   * work (router walk, response helpers) was about an eighth of the 8 KiB block path. Same handler, same
   * replies, same refusal logs as the router; only the per-request access log is skipped, so mount it only
   * when successful blocks would not be logged anyway (below debug level).
   */
  fastBlocks: (req: IncomingMessage, res: ServerResponse, next: NextFunction) => void;
}

export function agentEndpoints(
  deps: {
    carves: IngestService;
    logger: Logger;
    metrics?: Metrics | undefined;
    isShuttingDown?: () => boolean;
    /** Progress-based timeouts; agent bodies are held to its minimum rate. */
    bodyWatch?: BodyWatch | undefined;
    /** The service's clock, the one carves' start times come from. */
    now?: (() => Date) | undefined;
  },
  options: AgentRoutesOptions,
): AgentEndpoints {
  const metrics = deps.metrics;
  const now = deps.now ?? ((): Date => new Date());
  const router = express.Router();
  // The request log shows these paths as they are; anything else POSTed has its first segment (where
  // --tls_node_api agents put their node key) masked.
  registerAgentPaths(deps.logger, [options.startPath, options.continuePath]);
  const blockLimit = blockBodyLimit(options.maxBlockSize);
  // Memory is bounded by this budget, not by the number of agents: a body is read only once its bytes fit.
  // Blocks are decoded in place (no copy), so the budget bounds the bodies' memory, plus at most as much
  // again of free pooled buffers. A slow sender holds only its own body's share.
  const budget = new ByteBudget(options.inflightBodyBytes);
  metrics?.measureInflight(() => budget.inUse);
  // Body buffers are reused: with 1 MiB blocks a fresh 1.4 MB buffer per request was most of the garbage.
  // Free buffers kept are bounded by the same budget as the bodies being read.
  const pool = new BufferPool(options.inflightBodyBytes);

  const logRefusal = (ctx: RequestContext, kind: Kind | "unknown", err: AppError): AppError => {
    const fields = {
      kind,
      code: err.code,
      requestId: ctx.requestId,
      ...(err.cause ? { cause: safeErrorFields(err.cause) } : {}),
    };
    if (err.status >= 500) ctx.log.error(fields, "agent request failed on the server side");
    else ctx.log.warn(fields, "agent request refused");
    if (err.code === "STORAGE_UNAVAILABLE") metrics?.storeErrors.inc();
    if (kind === "start") metrics?.sessionsFailed.inc({ reason: err.code });
    else metrics?.blocksRefused.inc({ reason: err.code });
    return err;
  };

  const handleStart = async (
    body: unknown,
    req: IncomingMessage,
    res: ServerResponse,
    ctx: RequestContext,
    pathNodeKey: string | undefined,
  ): Promise<void> => {
    const parsed = startBodySchema.safeParse(body);
    if (!parsed.success) {
      logRefusal(ctx, "start", refuseStart(res, new AppError("INVALID_START", describeIssues(parsed.error))));
      return;
    }
    const b = parsed.data;
    const client = resolveClient(req, options.isTrustedProxy);
    const userAgent = req.headers["user-agent"];
    try {
      const { session, created } = await deps.carves.start({
        blockCount: b.block_count,
        blockSize: b.block_size,
        carveSize: b.carve_size,
        carveId: b.carve_id,
        requestId: b.request_id,
        // The body's node key wins (osquery 5.x sends it in start); agents with an empty one that use
        // --tls_node_api carry it in the path, and 5.23+ in the Authorization header.
        nodeKey: b.node_key || pathNodeKey || nodeKeyFromHeader(req) || "",
        agent: { address: client.address, userAgent: typeof userAgent === "string" ? userAgent : null, certificate: client.certificate },
      });
      if (created) metrics?.sessionsStarted.inc();
      replyStartAccepted(res, session.sessionId);
    } catch (err) {
      logRefusal(ctx, "start", refuseStart(res, err));
    }
  };

  /** Resolves false when the body's bytes must not be reused (the store failed: keep nothing to chance). */
  const handleBlock = async (body: unknown, req: IncomingMessage, res: ServerResponse, ctx: RequestContext): Promise<boolean> => {
    let b = plainBlockBody(body);
    if (b === null) {
      const parsed = blockBodySchema.safeParse(body);
      if (!parsed.success) {
        logRefusal(ctx, "block", refuseNonJson(res, new AppError("INVALID_BLOCK", describeIssues(parsed.error))));
        return true;
      }
      b = parsed.data;
    }
    try {
      const outcome = await deps.carves.block({
        blockId: b.block_id,
        sessionId: b.session_id,
        requestId: b.request_id,
        data: b.data,
        // Parsing the proxy's PEM header costs a certificate parse per block: only when it is checked.
        certificate: options.bindCertificates ? resolveClient(req, options.isTrustedProxy).certificate : null,
      });
      if (outcome.duplicate) {
        ctx.log.debug({ carveId: outcome.session.carveId, blockId: b.block_id, requestId: ctx.requestId }, "duplicate block acknowledged");
        metrics?.blocksDuplicate.inc();
      } else {
        metrics?.blocksReceived.inc();
        metrics?.bytesStored.inc(expectedBlockLength(outcome.session, b.block_id));
      }
      if (outcome.completedNow) {
        metrics?.sessionsCompleted.inc();
        metrics?.completionSeconds.observe((now().getTime() - outcome.session.createdAt.getTime()) / 1000);
      }
      replyBlockAccepted(res);
      return true;
    } catch (err) {
      return logRefusal(ctx, "block", refuseNonJson(res, err)).status < 500;
    }
  };

  const handle = async (
    route: Kind | "auto",
    req: IncomingMessage,
    res: ServerResponse,
    ctx: RequestContext,
    pathNodeKey: string | undefined,
  ): Promise<void> => {
    const limit = route === "start" ? START_BODY_LIMIT : blockLimit;
    // Bytes are charged as they arrive (body.ts): a body announcing a large Content-Length and trickling
    // holds only what it sent, and the progress watch cuts it off once it falls under the minimum rate.
    const charge: BudgetCharge = { budget, held: 0 };
    deps.bodyWatch?.requireRate(req);
    let backing: Buffer | undefined;
    let reusable = true;
    try {
      let raw: Buffer;
      try {
        // The Content-Type is not trusted (agents send application/json, other clients may not).
        ({ bytes: raw, backing } = await readBody(req, limit, {
          pool: route === "start" ? undefined : pool,
          charge,
          watch: deps.bodyWatch,
        }));
      } catch (err) {
        const e = err instanceof AppError ? err : new AppError("INVALID_BLOCK");
        if (e.code === "REQUEST_TIMEOUT") {
          // Cut off by the progress watch: a non-JSON 408 (agents count it as failure), then the connection closes.
          logRefusal(ctx, route === "auto" ? "unknown" : route, e);
          answerTimeout(req, res, e.detail === "idle" ? "idle" : "too-slow");
          return;
        }
        if (res.headersSent || res.destroyed) {
          logRefusal(ctx, route === "auto" ? "unknown" : route, e);
          return;
        }
        logRefusal(ctx, route === "auto" ? "unknown" : route, route === "start" ? refuseStart(res, e) : refuseNonJson(res, e));
        return;
      }
      let body: unknown = route === "start" ? null : fastBlockBody(raw);
      if (body === null) {
        try {
          // osquery's bodies are flat: deep nesting is refused before JSON.parse spends seconds on it.
          if (tooDeeplyNested(raw)) throw new AppError("INVALID_JSON", `nested deeper than ${MAX_JSON_DEPTH} levels`);
          body = JSON.parse(raw.toString("utf8"));
        } catch (err) {
          const e = err instanceof AppError ? err : new AppError("INVALID_JSON");
          logRefusal(ctx, route === "auto" ? "unknown" : route, route === "start" ? refuseStart(res, e) : refuseNonJson(res, e));
          return;
        }
      }
      const kind = route === "auto" ? kindOf(body) : route;
      if (kind === "start") return await handleStart(body, req, res, ctx, pathNodeKey);
      if (kind === "block") {
        reusable = await handleBlock(body, req, res, ctx);
        return;
      }
      logRefusal(ctx, "unknown", refuseNonJson(res, new AppError("UNKNOWN_REQUEST")));
    } finally {
      if (backing && reusable) pool.release(backing);
      budget.release(charge);
    }
  };

  const routeHandler =
    (route: Kind | "auto") =>
    async (req: Request, res: Response): Promise<void> => {
      // Present only on the --tls_node_api routes (the path's first segment). Never logged.
      const pathNodeKey = typeof req.params.nodeKey === "string" ? req.params.nodeKey : undefined;
      const ctx = { log: req.log, requestId: typeof req.id === "string" ? req.id : undefined };
      await handle(route, req, res, ctx, pathNodeKey);
    };

  router.post(options.startPath, routeHandler("start"));
  // The seed Go server routed by path alone, and its test client sends the start as GET with a JSON body
  // (and no Content-Type): a GET that carries a body is that start. A bodiless GET stays a 404.
  router.get(options.startPath, (req, res, next) => {
    if (!hasBody(req)) {
      next();
      return;
    }
    req.log.info("start request sent as GET with a body (the seed server's test client does this): handled as a start");
    return routeHandler("start")(req, res);
  });
  router.post(options.continuePath, routeHandler("block"));
  router.post("/", routeHandler("auto"));
  // --tls_node_api: the same endpoints behind a node-key segment. "/<node_key>" alone (what empty endpoint
  // flags produce with --tls_node_api) is not accepted: it cannot be told apart from any one-segment path.
  router.post(nodeApiRoute(options.startPath), routeHandler("start"));
  router.post(nodeApiRoute(options.continuePath), routeHandler("block"));
  router.post(nodeApiRoute("/"), routeHandler("auto"));

  const isShuttingDown = deps.isShuttingDown ?? (() => false);
  const continuePath = options.continuePath;
  const fastBlocks = (req: IncomingMessage, res: ServerResponse, next: NextFunction): void => {
    const url = req.url ?? "";
    // Exactly the continue path (Express's router also matches a trailing slash or a query: those take
    // the ordinary route).
    if (req.method !== "POST" || url !== continuePath) {
      next();
      return;
    }
    const requestId = requestIdOf(req);
    res.setHeader("X-Request-Id", requestId);
    // While draining, tell clients not to reuse the connection.
    if (isShuttingDown()) res.setHeader("Connection", "close");
    handle("block", req, res, { log: deps.logger, requestId }, undefined).catch((err: unknown) => {
      // handle() answers every refusal itself; anything here is a bug: fail the request, never silently.
      deps.logger.error({ err: safeErrorFields(err), requestId }, "block request failed");
      if (!res.headersSent) refuseNonJson(res, err);
      else res.destroy();
    });
  };
  return { router, fastBlocks };
}
