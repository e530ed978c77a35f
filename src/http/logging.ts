import { randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { pinoHttp, type HttpLogger } from "pino-http";
import type { Logger } from "../logger.js";

/** Headers worth logging; everything else (Authorization, X-Vault-Token, cookies...) never reaches a log. */
const LOGGED_HEADERS = ["user-agent", "content-type", "content-length", "x-forwarded-for", "x-request-id"];

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** First path segments of the service's own non-agent routes: never a node key (responder API, health). */
export const PUBLIC_FIRST_SEGMENTS: ReadonlySet<string> = new Set(["api", "status", "ready", "file_request"]);

export const NODE_KEY_MASK = "[node-key]";

/**
 * The agent endpoint paths in use, per logger: the agent router registers them (it is built after the request
 * logger, and the logger only learns the continue path from its options).
 */
const agentPathsByLogger = new WeakMap<object, readonly string[]>();

/** Tells the request logger of `logger` which paths are agent endpoints, so they are logged as they are. */
export function registerAgentPaths(logger: Logger, paths: readonly string[]): void {
  agentPathsByLogger.set(logger, [...(agentPathsByLogger.get(logger) ?? []), ...paths]);
}

/**
 * A request URL as it may be logged. Agents started with `--tls_node_api` put their node key (a secret) in the
 * first path segment of every request: `/<node_key>/start_uploads`, and `/<node_key>` when their endpoint flags
 * are empty. The request logger binds the URL when the request arrives, before any route matched, so the rule
 * is about the URL alone: in a POST (osquery only ever POSTs), the first path segment is replaced by
 * `[node-key]` unless the path is a known agent endpoint or starts with one (a mistyped endpoint such as
 * `/start_uploads%20` stays readable), or its first segment is one of the service's own routes. An unknown path
 * loses its first segment in the log, which is the safe side.
 */
export function maskNodeKeyInUrl(url: string, agentPaths: Iterable<string> = [], method = "POST"): string {
  if (method !== "POST") return url;
  const q = url.indexOf("?");
  const pathPart = q === -1 ? url : url.slice(0, q);
  const m = /^\/([^/]+)(\/.*)?$/s.exec(pathPart);
  if (!m) return url;
  const [, first = "", rest = ""] = m;
  if (PUBLIC_FIRST_SEGMENTS.has(first)) return url;
  for (const known of agentPaths) if (known !== "/" && pathPart.startsWith(known)) return url;
  return `/${NODE_KEY_MASK}${rest}${q === -1 ? "" : url.slice(q)}`;
}

/** Reuses NGINX's `X-Request-Id` ($request_id) when it looks sane, else makes one. */
export function requestIdOf(req: IncomingMessage): string {
  const given = req.headers["x-request-id"];
  return typeof given === "string" && REQUEST_ID.test(given) ? given : randomUUID();
}

export function httpLogger(logger: Logger, options: { quietPaths: ReadonlySet<string> }): HttpLogger {
  const knownPaths = (): string[] => [...options.quietPaths, ...(agentPathsByLogger.get(logger) ?? [])];
  return pinoHttp({
    logger,
    genReqId: (req: IncomingMessage, res: ServerResponse) => {
      const id = requestIdOf(req);
      res.setHeader("X-Request-Id", id);
      return id;
    },
    // Blocks are many and small: successful ones are logged at debug; refusals always show.
    customLogLevel: (req: IncomingMessage, res: ServerResponse, err?: Error) => {
      if (err || res.statusCode >= 500) return "error";
      if (res.statusCode >= 400) return "warn";
      const pathOnly = (req.url ?? "").split("?")[0] ?? "";
      // also the --tls_node_api form, /<node_key><path>
      const quiet = options.quietPaths.has(pathOnly) || options.quietPaths.has(pathOnly.replace(/^\/[^/]+/, ""));
      return quiet ? "debug" : "info";
    },
    serializers: {
      req: (req: { id: unknown; method: string; url: string; headers: Record<string, unknown>; remoteAddress?: string }) => {
        const headers: Record<string, unknown> = {};
        for (const name of LOGGED_HEADERS) if (req.headers[name] !== undefined) headers[name] = req.headers[name];
        const url = typeof req.url === "string" ? maskNodeKeyInUrl(req.url, knownPaths(), req.method) : req.url;
        return { id: req.id, method: req.method, url, remoteAddress: req.remoteAddress, headers };
      },
      res: (res: { statusCode: number }) => ({ statusCode: res.statusCode }),
    },
  });
}
