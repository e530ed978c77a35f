import express, { type Router } from "express";
import type { Authorizer } from "../../auth/authorizer.js";
import type { ListingLimits } from "../../carves/tar-listing.js";
import { AppError } from "../../errors.js";
import type { Logger } from "../../logger.js";
import type { Metrics } from "../../metrics.js";
import { AuditRecorder } from "../../services/audit-events.js";
import type { ExpiryPolicy } from "../../carves/expiry.js";
import { FilesLister } from "../files-listing.js";
import { sendJsonError } from "../json-error.js";
import { registerArchiveRoutes } from "./archive.js";
import { registerAuditRoutes } from "./audit.js";
import { registerCarveRoutes } from "./carves.js";
import { registerDeletionRoutes } from "./deletion.js";
import { registerFilesRoutes } from "./files.js";
import { createEndpoint, type RegisterRoutes, type ResponderServices } from "./frame.js";
import { registerHoldRoutes } from "./holds.js";
import { registerImportRoutes } from "./imports.js";
import { registerMemberRoutes } from "./members.js";
import { registerVerifyRoutes } from "./verify.js";

export type { ResponderServices } from "./frame.js";

export interface ResponderDeps {
  services: ResponderServices;
  authorizer: Authorizer;
  logger: Logger;
  isTrustedProxy: (address: string | undefined) => boolean;
  /** Retention rules, to show each carve's expiry. */
  expiry?: ExpiryPolicy;
  /** Largest archive POST /api/v1/carves/import accepts (config `import.maxSize`). */
  maxImportSize: number;
  now?: () => Date;
  metrics?: Metrics | undefined;
  /** Repeated unauthenticated failures per client are audited once per window (config `audit`). */
  unauthenticatedAuditWindowMs?: number;
  /** Bounds of the files endpoint's tar listing (config `listing`). */
  listing?: Partial<ListingLimits>;
}

/** The files endpoint lists at most this many members by default (config `listing.maxMembers`). */
export const MAX_LISTED_MEMBERS = 100_000;

/** Every resource of the responder API, one module each. */
const RESOURCES: readonly RegisterRoutes[] = [
  registerCarveRoutes,
  registerArchiveRoutes,
  registerFilesRoutes,
  registerMemberRoutes,
  registerDeletionRoutes,
  registerHoldRoutes,
  registerAuditRoutes,
  registerImportRoutes,
  registerVerifyRoutes,
];

/**
 * The responder API: Vault-authorized listing, metadata, download, file listing and deletion of carves, legal
 * holds, imports and verifications, the audit trail, and the seed server's POST /file_request. Every request,
 * allowed or not, leaves one audit event (trail + log) once its reply is finished (for downloads: with the
 * bytes actually sent).
 */
export function responderRouter(deps: ResponderDeps): Router {
  const now = deps.now ?? (() => new Date());
  const logger = deps.logger.child({ component: "responder" });
  const audit = new AuditRecorder(deps.services.audit, deps.logger.child({ component: "audit" }), now, deps.unauthenticatedAuditWindowMs);
  const endpoint = createEndpoint({ authorizer: deps.authorizer, isTrustedProxy: deps.isTrustedProxy, audit, logger, metrics: deps.metrics });
  const router = express.Router();

  router.use(["/api/v1", "/file_request"], (_req, res, next) => {
    // Evidence and its metadata: no shared cache may keep them.
    res.setHeader("Cache-Control", "no-store");
    next();
  });

  const listing = { maxMembers: MAX_LISTED_MEMBERS, ...deps.listing };
  const routeDeps = {
    services: deps.services,
    files: new FilesLister(deps.services.reads, listing),
    endpoint,
    now,
    expiry: deps.expiry,
    logger,
    maxImportSize: deps.maxImportSize,
    listing,
  };
  for (const register of RESOURCES) register(router, routeDeps);

  // Anything else under the API: a JSON 404 (not the agents' non-JSON refusal).
  router.all("/api/v1/{*rest}", (req, res) => {
    sendJsonError(req, res, new AppError("NOT_FOUND"));
  });

  return router;
}
