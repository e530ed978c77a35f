import express, { type Express, type NextFunction, type Request, type Response } from "express";
import { unconfiguredAuthorizer, type Authorizer } from "../auth/authorizer.js";
import type { Config } from "../config/schema.js";
import type { IngestService } from "../services/ingest.js";
import { expiryPolicyOf } from "../carves/expiry.js";
import type { StorageStatus } from "../services/types.js";
import { AppError, isAppError, safeErrorFields } from "../errors.js";
import type { Logger } from "../logger.js";
import type { IncomingMessage, ServerResponse } from "node:http";
import { agentEndpoints, type AgentEndpoints } from "./agent-routes.js";
import { proxyMatcher } from "./client-identity.js";
import { refuseNonJson } from "./agent-reply.js";
import { healthRouter } from "./health-routes.js";
import { sendJsonError } from "./json-error.js";
import { httpLogger, requestIdOf } from "./logging.js";
import type { Metrics } from "../metrics.js";
import type { BodyWatch } from "./body-watch.js";
import { consoleRouter } from "./console-routes.js";
import { openApiRouter } from "./openapi-routes.js";
import { responderRouter, type ResponderServices } from "./responder/index.js";

/** What the handlers call (src/services/types.ts): none of them touches a store. */
export interface AppServices extends ResponderServices {
  status: StorageStatus;
}

export interface AppDeps {
  config: Config;
  logger: Logger;
  services: AppServices;
  carves: IngestService;
  /** Decides responder API requests; without one that API answers 503 VAULT_NOT_CONFIGURED. */
  authorizer?: Authorizer;
  isShuttingDown?: () => boolean;
  now?: () => Date;
  /** Which endpoints this listener serves (default both): agents and responders may get separate ports. */
  surfaces?: { agent: boolean; responder: boolean };
  metrics?: Metrics;
  /** Progress-based request timeouts: every request is watched until its body is complete. */
  bodyWatch?: BodyWatch;
  /** The built web console (default dist/console). */
  consoleDir?: string;
}

/** What a listener serves: the Express app, with block requests answered before it when it allows. */
export type RequestHandler = (req: IncomingMessage, res: ServerResponse) => void;

/**
 * The request listener for a server: below debug level, `POST <continue path>` goes straight to the agent
 * block handler without entering Express at all (its app and router dispatch were ~5% of the 8 KiB block
 * path even with that handler mounted first); everything else goes to the Express app.
 */
export function createRequestHandler(deps: AppDeps): RequestHandler {
  const { app, fastBlocks } = buildApp(deps);
  const watch = deps.bodyWatch;
  if (!fastBlocks) {
    if (!watch) return app;
    return (req, res) => {
      watch.watch(req, res);
      app(req, res);
    };
  }
  return (req, res) => {
    watch?.watch(req, res);
    fastBlocks(req, res, () => {
      app(req, res);
    });
  };
}

/**
 * Builds the Express application, and the block handler to put in front of it when successful blocks are not
 * logged. Creates nothing that needs closing: the caller owns services and server.
 */
function buildApp(deps: AppDeps): { app: Express; fastBlocks: AgentEndpoints["fastBlocks"] | undefined } {
  const { config } = deps;
  const app = express();
  app.disable("x-powered-by");
  app.set("etag", false);
  const quietPaths = new Set([config.agent.continuePath]);
  const requestLogger = httpLogger(deps.logger, { quietPaths });
  const debugEnabled = deps.logger.isLevelEnabled("debug");
  const isShuttingDown = deps.isShuttingDown ?? (() => false);
  const surfaces = deps.surfaces ?? { agent: true, responder: true };
  const agent = surfaces.agent
    ? agentEndpoints(
        { carves: deps.carves, logger: deps.logger, metrics: deps.metrics, isShuttingDown, bodyWatch: deps.bodyWatch, now: deps.now },
        {
          startPath: config.agent.startPath,
          continuePath: config.agent.continuePath,
          maxBlockSize: config.agent.maxBlockSize,
          inflightBodyBytes: config.agent.inflightBytes,
          bindCertificates: config.agent.requireSameCertificate,
          isTrustedProxy: proxyMatcher(config.server.trustedProxies),
        },
      )
    : undefined;
  // Successful block requests are logged at debug only. Below that level they skip the per-request logger
  // and Express's routing altogether (together ~20% of the 8 KiB block path: createRequestHandler); their
  // refusals are still logged, with the request id, by the agent handler.
  const fastBlocks = agent && !debugEnabled ? agent.fastBlocks : undefined;
  app.use((req: Request, res: Response, next: NextFunction) => {
    if (!debugEnabled && req.method === "POST") {
      // The --tls_node_api form of the continue path, /<node_key><path>, or a query string: also quiet.
      const pathOnly = (req.url ?? "").split("?")[0] ?? "";
      if (quietPaths.has(pathOnly) || quietPaths.has(pathOnly.replace(/^\/[^/]*/, ""))) {
        const id = requestIdOf(req);
        res.setHeader("X-Request-Id", id);
        req.id = id;
        req.log = deps.logger;
        next();
        return;
      }
    }
    requestLogger(req, res, next);
  });
  app.use((_req: Request, res: Response, next: NextFunction) => {
    // While draining, tell clients not to reuse the connection.
    if (isShuttingDown()) res.setHeader("Connection", "close");
    next();
  });

  app.use(healthRouter({ storage: deps.services.status, isShuttingDown, metrics: deps.metrics }));
  if (agent) app.use(agent.router);

  if (surfaces.responder) app.use(openApiRouter());
  if (surfaces.responder) app.use(consoleRouter({ logger: deps.logger, ...(deps.consoleDir ? { dir: deps.consoleDir } : {}) }));
  if (surfaces.responder) app.use(
    responderRouter({
      services: deps.services,
      authorizer: deps.authorizer ?? unconfiguredAuthorizer(),
      logger: deps.logger,
      isTrustedProxy: proxyMatcher(config.server.trustedProxies),
      expiry: expiryPolicyOf(config),
      maxImportSize: config.import.maxSize,
      unauthenticatedAuditWindowMs: config.audit.unauthenticatedWindowSeconds * 1000,
      listing: { maxMembers: config.listing.maxMembers, maxBytesExamined: config.listing.maxBytesExamined },
      metrics: deps.metrics,
      ...(deps.now ? { now: deps.now } : {}),
    }),
  );

  app.use((req: Request, res: Response) => {
    if (req.method === "POST") {
      // Possibly an agent with a mistyped endpoint (osquery keeps trailing spaces of flagfile values):
      // a non-JSON answer makes it fail visibly instead of believing its blocks were stored.
      req.log.warn("POST to an unknown path (check --carver_*_endpoint flags; req.url is logged with any node key masked)");
      refuseNonJson(res, new AppError("NOT_FOUND"));
      return;
    }
    sendJsonError(req, res, new AppError("NOT_FOUND"));
  });

  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    const appErr = isAppError(err) ? err : new AppError("INTERNAL", undefined, { cause: err });
    if (appErr.status >= 500) req.log.error({ err: safeErrorFields(appErr.cause ?? appErr) }, "request failed");
    if (res.headersSent) {
      res.destroy();
      return;
    }
    sendJsonError(req, res, appErr);
  });
  return { app, fastBlocks };
}
