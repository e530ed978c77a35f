import { AppError, safeErrorFields } from "../errors.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import { buildAuditEvent, NO_CLIENT, systemActor } from "../services/audit-events.js";
import { expiryCriteriaAt, type ExpiryPolicy } from "../carves/expiry.js";
import type { AuditTrail, Expiry } from "../services/types.js";
import type { ExpiryCandidate, ExpiryCriteria } from "../storage/model.js";

/** Complete carves go retentionDays after completion, incomplete ones abandonedAfterSeconds after their last block. */
export interface RetentionOptions extends ExpiryPolicy {
  /** A delete begun this long ago and not finished belongs to a dead process: finish it. */
  staleDeleteAfterSeconds: number;
  /** Carves deleted per batch, and batches per run: a run always ends, whatever the backlog. */
  batchSize: number;
  maxBatchesPerRun: number;
  /** Seconds between the end of one in-service run and the start of the next. */
  intervalSeconds: number;
}

export interface RetentionSummary {
  dryRun: boolean;
  startedAt: Date;
  durationMs: number;
  deleted: number;
  bytesFreed: number;
  byReason: Record<ExpiryCandidate["reason"], number>;
  /** Selected but kept: a block arrived, a hold was placed, or another process deleted it first. */
  kept: number;
  failed: number;
  /** Dry run: what would go (up to batchSize x maxBatchesPerRun). */
  candidates: ExpiryCandidate[];
  /** More expired carves remain than one run may delete. */
  backlog: boolean;
  /** Completions a dead process left claimed (or never began though every block was stored), finished by this run. */
  completionsFinished: number;
}

/**
 * Deletes expired carves: complete ones past the retention period, abandoned incomplete ones, and deletes a
 * crash left unfinished. Safe with several processes running it at once (each delete re-checks expiry
 * atomically with the delete and is counted by exactly one of them); in-service runs never overlap.
 */
export class RetentionJob {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<RetentionSummary> | null = null;
  private stopped = false;

  constructor(
    private readonly deps: {
      expiry: Expiry;
      audit: AuditTrail;
      logger: Logger;
      options: RetentionOptions;
      now?: () => Date;
      metrics?: Metrics;
    },
  ) {}

  private now(): Date {
    return (this.deps.now ?? (() => new Date()))();
  }

  /** One run: at most maxBatchesPerRun batches. Never throws for a single carve's failure. */
  async runOnce(options: { dryRun?: boolean } = {}): Promise<RetentionSummary> {
    const { expiry, logger } = this.deps;
    const opts = this.deps.options;
    const startedAt = this.now();
    const criteria = expiryCriteriaAt(startedAt, opts);
    const summary: RetentionSummary = {
      dryRun: options.dryRun ?? false,
      startedAt,
      durationMs: 0,
      deleted: 0,
      bytesFreed: 0,
      byReason: { retention: 0, abandoned: 0, "unfinished-delete": 0 },
      kept: 0,
      failed: 0,
      candidates: [],
      backlog: false,
      completionsFinished: 0,
    };
    const cap = opts.batchSize * opts.maxBatchesPerRun;
    if (!summary.dryRun) {
      // A carve whose every block is stored is never abandoned: if its completion died with its process (and the
      // agent gave up), it is finished here rather than left "receiving" forever.
      try {
        summary.completionsFinished = (await expiry.recover({ exclusive: false, staleBefore: criteria.staleDeleteBefore })).completed;
      } catch (err) {
        logger.error({ err: safeErrorFields(err) }, "could not finish abandoned completions");
      }
    }
    if (summary.dryRun) {
      const found = await expiry.findExpired(criteria, cap + 1);
      summary.candidates = found.slice(0, cap);
      summary.backlog = found.length > cap;
    } else {
      // Carves that were selected but not deleted are not selected again in this run: progress is certain.
      const passed = new Set<string>();
      for (let batch = 0; batch < opts.maxBatchesPerRun; batch++) {
        const found = (await expiry.findExpired(criteria, opts.batchSize + passed.size)).filter(
          (c) => !passed.has(c.carveId),
        );
        const todo = found.slice(0, opts.batchSize);
        if (todo.length === 0) break;
        for (const candidate of todo) {
          if (this.stopped) break; // shutting down: finish this carve, leave the rest to the next run
          await this.expire(candidate, criteria, summary, passed);
        }
        if (this.stopped) break;
        if (batch === opts.maxBatchesPerRun - 1) {
          summary.backlog = (await expiry.findExpired(criteria, passed.size + 1)).some((c) => !passed.has(c.carveId));
        }
      }
    }
    summary.durationMs = this.now().getTime() - startedAt.getTime();
    logger.info(
      {
        dryRun: summary.dryRun,
        deleted: summary.deleted,
        bytesFreed: summary.bytesFreed,
        byReason: summary.byReason,
        kept: summary.kept,
        failed: summary.failed,
        candidates: summary.dryRun ? summary.candidates.length : undefined,
        backlog: summary.backlog,
      },
      "retention run finished",
    );
    return summary;
  }

  private async expire(
    candidate: ExpiryCandidate,
    criteria: ExpiryCriteria,
    summary: RetentionSummary,
    passed: Set<string>,
  ): Promise<void> {
    const { expiry, audit, logger } = this.deps;
    try {
      const result = await expiry.deleteIfExpired(candidate.carveId, criteria);
      if (!result.deleted) {
        summary.kept++;
        passed.add(candidate.carveId);
        return;
      }
      summary.deleted++;
      summary.bytesFreed += result.bytesFreed;
      summary.byReason[candidate.reason]++;
      this.deps.metrics?.sessionsExpired.inc({ reason: candidate.reason });
      logger.info(
        { carveId: candidate.carveId, reason: candidate.reason, bytesFreed: result.bytesFreed },
        "carve expired",
      );
      const event = buildAuditEvent(
        {
          action: "carve.expire",
          result: "allowed",
          actor: systemActor("retention"),
          client: NO_CLIENT,
          requestId: null,
          carveId: candidate.carveId,
          detail: { reason: candidate.reason, bytesFreed: result.bytesFreed },
        },
        this.now(),
      );
      await audit
        .record(event)
        .catch((err: unknown) => logger.error({ err: safeErrorFields(err) }, "could not audit an expiry"));
    } catch (err) {
      passed.add(candidate.carveId);
      if (err instanceof AppError && err.code === "CARVE_NOT_FOUND") {
        summary.kept++; // deleted meanwhile by someone else
        return;
      }
      summary.failed++;
      logger.error({ carveId: candidate.carveId, err: safeErrorFields(err) }, "could not expire a carve");
    }
  }

  /** Runs now and then every intervalSeconds after each run ends (never two at once in this process). */
  start(): void {
    this.stopped = false;
    const tick = (): void => {
      this.timer = null;
      this.running = this.runOnce().catch((err: unknown) => {
        this.deps.logger.error({ err: safeErrorFields(err) }, "retention run failed");
        return null as unknown as RetentionSummary;
      });
      void this.running.finally(() => {
        this.running = null;
        if (!this.stopped) {
          this.timer = setTimeout(tick, this.deps.options.intervalSeconds * 1000);
          this.timer.unref();
        }
      });
    };
    this.timer = setTimeout(tick, 1000);
    this.timer.unref();
  }

  /** Cancels the next run and waits for a run in progress. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.running) await this.running;
  }
}
