import { randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { pinoHttp, type HttpLogger } from "pino-http";
import type { Logger } from "../logger.js";

/** Headers worth logging; everything else (Authorization, X-Vault-Token, cookies...) never reaches a log. */
const LOGGED_HEADERS = ["user-agent", "content-type", "content-length", "x-forwarded-for", "x-request-id"];

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** Reuses NGINX's `X-Request-Id` ($request_id) when it looks sane, else makes one. */
export function requestIdOf(req: IncomingMessage): string {
  const given = req.headers["x-request-id"];
  return typeof given === "string" && REQUEST_ID.test(given) ? given : randomUUID();
}

export function httpLogger(logger: Logger, options: { quietPaths: ReadonlySet<string> }): HttpLogger {
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
      return options.quietPaths.has(pathOnly) ? "debug" : "info";
    },
    serializers: {
      req: (req: { id: unknown; method: string; url: string; headers: Record<string, unknown>; remoteAddress?: string }) => {
        const headers: Record<string, unknown> = {};
        for (const name of LOGGED_HEADERS) if (req.headers[name] !== undefined) headers[name] = req.headers[name];
        return { id: req.id, method: req.method, url: req.url, remoteAddress: req.remoteAddress, headers };
      },
      res: (res: { statusCode: number }) => ({ statusCode: res.statusCode }),
    },
  });
}
