import type { Request, RequestHandler, Response, Router } from "express";
import type { FilesLister } from "../files-listing.js";
import type { AuthAction, AuthQuestion, Authorizer } from "../../auth/authorizer.js";
import { tokenFromHeaders } from "../../auth/token.js";
import { TarFormatError, type ListingLimits } from "../../carves/tar-listing.js";
import { ZstdFormatError } from "../../carves/zstd-stream.js";
import { AppError, isAppError, safeErrorFields, type ErrorCode } from "../../errors.js";
import type { Logger } from "../../logger.js";
import type { Metrics } from "../../metrics.js";
import { NO_ACTOR, type AuditDetail, type AuditRecorder } from "../../services/audit-events.js";
import type { ExpiryPolicy } from "../../carves/expiry.js";
import type { AuditTrail, CarveReads, Custody, Imports } from "../../services/types.js";
import type { AuditActor, AuditEvent, CarveRecord } from "../../storage/model.js";
import { resolveClient, type ClientInfo } from "../client-identity.js";
import { sendJsonError } from "../json-error.js";
import { CARVE_ID } from "../responder-schemas.js";
import { viewStatus } from "../responder-views.js";

/*
 * The frame every responder endpoint runs in: authorization by Vault, the one JSON error shape, and one audit
 * event per request (what the request was, who sent it from where, and what came of it).
 */

/** What responder handlers call; none of them touches a store. */
export interface ResponderServices {
  reads: CarveReads;
  custody: Custody;
  imports: Imports;
  audit: AuditTrail;
}

/** What each resource's routes get from the responder router. */
export interface RouteDeps {
  services: ResponderServices;
  endpoint: Endpoint;
  now: () => Date;
  /** Retention rules, to show each carve's expiry. */
  expiry: ExpiryPolicy | undefined;
  logger: Logger;
  /** Largest archive an import accepts (config `import.maxSize`). */
  maxImportSize: number;
  /** Bounds of the files endpoint's tar listing (config `listing`). */
  listing: ListingLimits;
  /** The tar listings (cached per archive), shared by the files listing and single-file downloads. */
  files: FilesLister;
}

/** One resource's routes (src/http/responder/*.ts), registered by src/http/responder/index.ts. */
export type RegisterRoutes = (router: Router, deps: RouteDeps) => void;

/** What one responder request's handler works with; `detail` and `result` end up in its audit event. */
export interface EndpointContext {
  req: Request;
  res: Response;
  client: ClientInfo;
  requestId: string | null;
  actor: AuditActor;
  carveId: string | null;
  detail: AuditDetail;
  result: AuditEvent["result"];
}

/** The token of a request and the question its handler needs Vault to answer. */
export interface EndpointTarget {
  token: string;
  /** null: the carve id cannot exist (the store would never accept it), nothing is asked. */
  question: AuthQuestion | null;
  carveId: string | null;
}

/** Authorize, run, answer errors in one JSON shape, and audit. */
export type Endpoint = (
  action: string,
  target: (req: Request) => EndpointTarget | Promise<EndpointTarget>,
  run: (ctx: EndpointContext) => Promise<void>,
) => RequestHandler;

/** A request about the carve named in the path (`:carve_id`). */
export function carveTarget(action: "read" | "delete" | "hold"): (req: Request) => EndpointTarget {
  return (req) => {
    const token = tokenFromHeaders(req.headers);
    const carveId = String(req.params.carve_id ?? "");
    if (!CARVE_ID.test(carveId)) return { token, question: null, carveId: null };
    return { token, question: { action, carveId }, carveId };
  };
}

/** A request about no carve in particular (listing, the audit trail, an import). */
export function globalTarget(action: Exclude<AuthAction, "read" | "delete" | "hold">): (req: Request) => EndpointTarget {
  return (req) => ({ token: tokenFromHeaders(req.headers), question: { action }, carveId: null });
}

/** A carve that has no archive yet, said the same way by every endpoint that needs one. */
export function notComplete(record: CarveRecord, now: Date, after = ""): AppError {
  return new AppError(
    "CARVE_NOT_COMPLETE",
    `status ${viewStatus(record, now)}, ${record.blocksReceived} of ${record.blockCount} blocks received${after}`,
  );
}

const DENIED: ReadonlySet<ErrorCode> = new Set(["TOKEN_MISSING", "TOKEN_INVALID", "ACCESS_DENIED"]);
/** Headers describing an archive, withdrawn when an error reply replaces it. */
const REPRESENTATION_HEADERS = ["content-disposition", "etag", "last-modified", "accept-ranges", "content-range", "content-length"];

export function createEndpoint(deps: {
  authorizer: Authorizer;
  isTrustedProxy: (address: string | undefined) => boolean;
  audit: AuditRecorder;
  logger: Logger;
  metrics?: Metrics | undefined;
}): Endpoint {
  const { authorizer, logger, metrics } = deps;

  function fail(ctx: EndpointContext, err: unknown): void {
    let appErr: AppError;
    if (isAppError(err)) appErr = err;
    else if (err instanceof TarFormatError || err instanceof ZstdFormatError) appErr = new AppError("ARCHIVE_NOT_TAR", err.message);
    else appErr = new AppError("INTERNAL", undefined, { cause: err });
    ctx.result = DENIED.has(appErr.code) ? "denied" : appErr.code === "CARVE_NOT_FOUND" ? "not-found" : "error";
    ctx.detail.code = appErr.code;
    // Vault failures were logged (safely) by the authorizer; anything else server-side is logged here.
    if (appErr.status >= 500 && !appErr.code.startsWith("VAULT_")) {
      logger.error({ err: safeErrorFields(appErr.cause ?? appErr), code: appErr.code }, "responder request failed");
    }
    const { res, req } = ctx;
    if (res.headersSent) {
      res.destroy();
      return;
    }
    for (const h of REPRESENTATION_HEADERS) if (!(h === "content-range" && appErr.code === "RANGE_NOT_SATISFIABLE")) res.removeHeader(h);
    if (appErr.status === 401) res.setHeader("WWW-Authenticate", 'Bearer realm="osquery-carve-server"');
    sendJsonError(req, res, appErr);
  }

  return (action, target, run) => {
    return async (req: Request, res: Response): Promise<void> => {
      const ctx: EndpointContext = {
        req,
        res,
        client: resolveClient(req, deps.isTrustedProxy),
        requestId: typeof req.id === "string" ? req.id : null,
        actor: NO_ACTOR,
        carveId: null,
        detail: { method: req.method },
        result: "allowed",
      };
      try {
        const t = await target(req);
        ctx.carveId = t.carveId;
        if (t.token !== "") ctx.actor = { ...NO_ACTOR, tokenFingerprint: authorizer.fingerprint(t.token) };
        if (t.question === null) {
          // Nothing by that name can exist; Vault is not asked about a path built from it.
          throw new AppError(t.token === "" ? "TOKEN_MISSING" : "CARVE_NOT_FOUND");
        }
        let decision;
        try {
          decision = await authorizer.decide(t.token, undefined, t.question);
        } catch (err) {
          const code = isAppError(err) ? err.code : "";
          metrics?.authDecisions.inc({ outcome: code.startsWith("TOKEN_") ? "invalid-token" : "unavailable" });
          throw err;
        }
        metrics?.authDecisions.inc({ outcome: decision.allowed ? "allowed" : "denied" });
        ctx.actor = decision.actor;
        ctx.detail.authorization = decision.reason;
        ctx.detail.authorizationCached = decision.cached;
        if (!decision.allowed) throw new AppError("ACCESS_DENIED");
        await run(ctx);
      } catch (err) {
        fail(ctx, err);
      }
      ctx.detail.status = res.statusCode;
      if (typeof ctx.detail.bytesSent === "number") {
        metrics?.downloads.inc({ result: ctx.detail.completed ? "complete" : "aborted" });
        metrics?.bytesSent.inc(ctx.detail.bytesSent);
      }
      await deps.audit.record({
        action,
        result: ctx.result,
        actor: ctx.actor,
        client: ctx.client,
        requestId: ctx.requestId,
        carveId: ctx.carveId,
        detail: ctx.detail,
      });
    };
  };
}
