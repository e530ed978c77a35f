import { randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { pinoHttp, type HttpLogger } from "pino-http";
import type { Logger } from "../logger.js";

/** Headers worth logging; everything else (Authorization, X-Vault-Token, cookies...) never reaches a log. */
const LOGGED_HEADERS = ["user-agent", "content-type", "content-length", "x-forwarded-for", "x-request-id"];

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** First path segments of the service's own non-agent routes: never a node key (responder API, health). */
export const PUBLIC_FIRST_SEGMENTS: ReadonlySet<string> = new Set(["api", "status", "ready", "metrics", "file_request"]);

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

/** Our own routes under a public first segment: anything else under one may carry a node key (`/status/KEY`). */
const OWN_ROUTE = /^\/(?:api\/v1(?:\/.*)?|status|ready|metrics|file_request)$/s;

/** Query parameters of our own API whose values are logged; every other value is redacted (`?token=...`). */
const LOGGED_QUERY_KEYS: ReadonlySet<string> = new Set(["status", "limit", "since", "until", "cursor", "carve_id", "action", "format", "node"]);

/** A query string with every value redacted except those of our own harmless parameters. */
export function redactQuery(query: string): string {
  if (query === "") return "";
  return query
    .split("&")
    .map((pair) => {
      const eq = pair.indexOf("=");
      const key = eq === -1 ? pair : pair.slice(0, eq);
      if (eq === -1) return key.length > 64 ? "[redacted]" : key;
      return LOGGED_QUERY_KEYS.has(key) ? pair : `${key.length > 64 ? "[redacted]" : key}=[redacted]`;
    })
    .join("&");
}

/**
 * A request URL as it may be logged (access log, error logs). Agents started with `--tls_node_api` put their
 * node key (a secret) in a path segment: `/<node_key>/start_uploads`, `//<node_key>/start_uploads`, and
 * `/<node_key>` when their endpoint flags are empty; a tls_hostname with a path puts it after that path
 * (`/api/<node_key>/...`). The request logger binds the URL when the request arrives, before any route matched,
 * so the rule is about the URL alone: the first non-empty path segment is replaced by `[node-key]` unless the
 * path is a known agent endpoint or starts with one (a mistyped endpoint such as `/start_uploads%20` stays
 * readable), or is one of the service's own routes; under a public first segment that is not our route, the
 * second segment is masked. Query values are redacted except our own parameters'. An unknown path loses a
 * segment in the log, which is the safe side.
 */
export function maskNodeKeyInUrl(url: string, agentPaths: Iterable<string> = []): string {
  const q = url.indexOf("?");
  const pathPart = q === -1 ? url : url.slice(0, q);
  const query = q === -1 ? "" : `?${redactQuery(url.slice(q + 1))}`;
  const m = /^(\/+)([^/]+)(\/.*)?$/s.exec(pathPart);
  if (!m) return pathPart + query;
  const [, lead = "/", first = "", rest = ""] = m;
  const collapsed = `/${first}${rest}`;
  if (PUBLIC_FIRST_SEGMENTS.has(first)) {
    if (lead === "/" && OWN_ROUTE.test(collapsed)) return pathPart + query;
    const second = /^\/([^/]*)(\/.*)?$/s.exec(rest);
    return second ? `${lead}${first}/${NODE_KEY_MASK}${second[2] ?? ""}${query}` : pathPart + query;
  }
  for (const known of agentPaths) if (known !== "/" && collapsed.startsWith(known)) return pathPart + query;
  return `${lead}${NODE_KEY_MASK}${rest}${query}`;
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
        const url = typeof req.url === "string" ? maskNodeKeyInUrl(req.url, knownPaths()) : req.url;
        return { id: req.id, method: req.method, url, remoteAddress: req.remoteAddress, headers };
      },
      res: (res: { statusCode: number }) => ({ statusCode: res.statusCode }),
    },
  });
}
