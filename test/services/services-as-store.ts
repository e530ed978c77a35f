/**
 * The whole-deployment view the service-level conformance suite (test/services/deployment-suite.ts) drives: every
 * rule that spans catalog, blob store and audit log, reached through the services exactly as HTTP, retention and
 * the CLIs reach them. Test-only glue: it names each service call after the behaviour the suite checks.
 */
import type { CarveServices } from "../../src/services/deployment.js";
import { nodeKeyDigest } from "../../src/services/ingest.js";
import type { ImportLimits } from "../../src/storage/contracts.js";
import type {
  AgentInfo,
  ArchiveHandle,
  AuditEvent,
  AuditPage,
  AuditQuery,
  ByteRange,
  CarveRecord,
  ExpiryCandidate,
  ExpiryCriteria,
  ImportSpec,
  LegalHold,
  ListPage,
  ListQuery,
  PutBlockResult,
  Session,
  StoreHealth,
  Verification,
} from "../../src/storage/model.js";

/** A start as the suite makes it: osquery's raw node key, hashed by the ingest service. */
export interface TestSpec {
  carveId: string;
  requestId: string;
  nodeKey: string;
  blockCount: number;
  blockSize: number;
  carveSize: number;
  agent: AgentInfo;
}

export interface DeploymentStore {
  readonly backend: string;
  readonly services: CarveServices;
  createSession(spec: TestSpec, sessionId: string): Promise<{ session: Session; created: boolean }>;
  findSession(sessionId: string): Promise<Session>;
  putBlock(session: Session, blockId: number, data: Buffer): Promise<PutBlockResult>;
  getCarve(carveId: string): Promise<CarveRecord>;
  missingBlocks(carveId: string, limit: number): Promise<number[]>;
  listCarves(query: ListQuery): Promise<ListPage>;
  openArchive(carveId: string, range?: ByteRange): Promise<ArchiveHandle>;
  deleteCarve(carveId: string, options?: { onlyIfExpired?: ExpiryCriteria }): Promise<{ deleted: boolean; bytesFreed: number }>;
  findExpired(criteria: ExpiryCriteria, limit: number): Promise<ExpiryCandidate[]>;
  importCarve(spec: ImportSpec, data: AsyncIterable<Buffer>, limits: ImportLimits): Promise<CarveRecord>;
  recordVerification(carveId: string, verification: Verification): Promise<CarveRecord>;
  setHold(carveId: string, hold: LegalHold | null): Promise<CarveRecord>;
  appendAudit(event: AuditEvent): Promise<void>;
  listAudit(query: AuditQuery): Promise<AuditPage>;
  freeBytes(): Promise<number | null>;
  health(): Promise<StoreHealth>;
  close(): Promise<void>;
}

const UNLIMITED = { maxBlockSize: 2 ** 40, maxCarveSize: 2 ** 50 };

export function storeOver(services: CarveServices): DeploymentStore {
  const ingest = (sessionId?: string) =>
    services.ingest({ limits: UNLIMITED, ...(sessionId ? { sessionIds: () => sessionId } : {}) });
  const anyIngest = ingest();
  return {
    backend: services.storage.blobs.kind,
    services,
    createSession: (spec, sessionId) => ingest(sessionId).createSession(spec, nodeKeyDigest(spec.nodeKey)),
    findSession: (sessionId) => anyIngest.findSession(sessionId),
    putBlock: (session, blockId, data) => anyIngest.storeBlock(session, blockId, data),
    getCarve: (carveId) => services.reads.get(carveId),
    missingBlocks: (carveId, limit) => services.reads.missingBlocks(carveId, limit),
    listCarves: (query) => services.reads.list(query),
    openArchive: (carveId, range) => services.reads.openArchive(carveId, range),
    deleteCarve: async (carveId, options) => {
      if (options?.onlyIfExpired) {
        const r = await services.expiry.deleteIfExpired(carveId, options.onlyIfExpired);
        if (!r.deleted && !(await services.storage.catalog.get(carveId))) {
          // The old contract: a carve that is gone altogether is not found.
          const { AppError } = await import("../../src/errors.js");
          throw new AppError("CARVE_NOT_FOUND");
        }
        return r;
      }
      return { deleted: true, ...(await services.custody.delete(carveId)) };
    },
    findExpired: (criteria, limit) => services.expiry.findExpired(criteria, limit),
    importCarve: (spec, data, limits) => services.imports.importArchive(spec, data, limits),
    recordVerification: (carveId, v) => services.custody.recordVerification(carveId, v),
    setHold: (carveId, hold) => (hold ? services.custody.placeHold(carveId, hold) : services.custody.releaseHold(carveId)),
    appendAudit: (event) => services.audit.record(event),
    listAudit: (query) => services.audit.list(query),
    freeBytes: () => services.freeBytes(),
    health: () => services.health(),
    close: () => services.close(),
  };
}
