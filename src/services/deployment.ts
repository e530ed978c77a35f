import type { Config } from "../config/schema.js";
import type { Logger } from "../logger.js";
import { openStorage } from "../storage/factory.js";
import type { Storage } from "../storage/contracts.js";
import type { StoreHealth } from "../storage/model.js";
import { AuditTrailService } from "./audit-trail.js";
import { Completer, type CompletionOptions } from "./completion.js";
import { CustodyService } from "./custody.js";
import { ExpiryService } from "./expiry.js";
import { ImportService } from "./imports.js";
import { IngestService, SessionCache, type CarveLimits } from "./ingest.js";
import { CarveReadsService } from "./records.js";
import type { StorageStatus } from "./types.js";

export interface ServicesOptions {
  logger: Logger;
  now?: () => Date;
  completion?: CompletionOptions;
}

/** Every service over one storage deployment; what server.ts, the jobs and the CLIs build on. */
export class CarveServices implements StorageStatus {
  readonly reads: CarveReadsService;
  readonly custody: CustodyService;
  readonly imports: ImportService;
  readonly audit: AuditTrailService;
  readonly expiry: ExpiryService;
  readonly completer: Completer;
  readonly sessions = new SessionCache();
  private readonly now: () => Date;

  constructor(
    readonly storage: Storage,
    private readonly options: ServicesOptions,
  ) {
    const { catalog, blobs } = storage;
    const logger = options.logger;
    this.now = options.now ?? (() => new Date());
    const now = this.now;
    this.reads = new CarveReadsService({ catalog, blobs });
    this.completer = new Completer({ catalog, blobs, logger, now, ...options.completion });
    const releaseReserve = storage.releaseReserve;
    this.custody = new CustodyService({ catalog, blobs, reads: this.reads, sessions: this.sessions, logger, now, ...(releaseReserve ? { releaseReserve } : {}) });
    this.imports = new ImportService({ catalog, blobs, reads: this.reads, logger, now });
    this.audit = new AuditTrailService(storage.audit, releaseReserve);
    this.expiry = new ExpiryService({ catalog, blobs, completer: this.completer, sessions: this.sessions, logger, now });
  }

  /** The agent-facing service, with the deployment's limits. */
  ingest(options: { limits: CarveLimits; requireSameCertificate?: boolean; sessionIds?: () => string }): IngestService {
    return new IngestService({
      catalog: this.storage.catalog,
      blobs: this.storage.blobs,
      reads: this.reads,
      completer: this.completer,
      sessions: this.sessions,
      now: this.now,
      logger: this.options.logger,
      ...options,
    });
  }

  /** Finishes what a crash left (completions, deletes, imports) before agents are served. */
  async recoverAtStart(staleAfterMs = 10_000): Promise<void> {
    const done = await this.storage.catalog.health().then(() =>
      this.expiry.recover({ exclusive: this.storage.exclusive, staleBefore: new Date(this.now().getTime() - staleAfterMs) }),
    );
    if (done.completed > 0 || done.deleted > 0) this.options.logger.info(done, "finished work a previous process left");
  }

  async health(): Promise<StoreHealth> {
    const [catalog, blobs] = await Promise.all([this.storage.catalog.health(), this.storage.blobs.health()]);
    return {
      ok: catalog.ok && blobs.ok,
      backend: blobs.backend,
      detail: {
        ...blobs.detail,
        catalog: catalog.backend,
        ...Object.fromEntries(Object.entries(catalog.detail).map(([k, v]) => [`catalog.${k}`, v])),
      },
    };
  }

  freeBytes(): Promise<number | null> {
    return this.storage.blobs.freeBytes();
  }

  close(): Promise<void> {
    return this.storage.close();
  }
}

/** Opens the configured storage and the services over it: what the service, the jobs and the CLIs start from. */
export async function openServices(config: Config, logger: Logger, now?: () => Date): Promise<CarveServices> {
  const storage = await openStorage(config, logger, now);
  return new CarveServices(storage, { logger: logger.child({ component: "carves" }), ...(now ? { now } : {}) });
}
