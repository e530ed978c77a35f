import { randomUUID } from "node:crypto";
import type { Logger } from "../logger.js";
import type { BlobStore, CarveCatalog } from "../storage/contracts.js";
import type { ExpiryCandidate, ExpiryCriteria } from "../storage/model.js";
import { crashPoint } from "../util/crash-point.js";
import type { Completer } from "./completion.js";
import { removeCarve } from "./custody.js";
import type { SessionCache } from "./ingest.js";
import { sessionOf } from "./records.js";
import type { Expiry } from "./types.js";

interface Found extends ExpiryCandidate {
  age: number;
}

/**
 * Retention's view of storage: which carves are due, and deleting one only if it still is. The activity of a
 * carve being received is the blob store's (last block stored); everything else is the catalog's.
 */
export class ExpiryService implements Expiry {
  constructor(
    private readonly deps: {
      catalog: CarveCatalog;
      blobs: BlobStore;
      completer: Completer;
      sessions: SessionCache;
      logger: Logger;
      now: () => Date;
    },
  ) {}

  async findExpired(criteria: ExpiryCriteria, limit: number): Promise<ExpiryCandidate[]> {
    const sweep = await this.deps.catalog.sweep(criteria, limit);
    const found: Found[] = [];
    for (const e of sweep.retention) {
      found.push({ carveId: e.carveId, reason: "retention", bytes: e.carveSize, age: (e.completedAt ?? e.stateSince).getTime() });
    }
    for (const e of sweep.idle) {
      const progress = await this.deps.blobs.progress(sessionOf(e), 0);
      const last = progress?.lastBlockAt ?? e.createdAt;
      // Every block stored: not abandoned, only waiting for its completion (recover() finishes it).
      if (progress && progress.blocksReceived === e.blockCount) continue;
      if (last < criteria.idleBefore) found.push({ carveId: e.carveId, reason: "abandoned", bytes: progress?.bytesReceived ?? 0, age: last.getTime() });
    }
    for (const e of sweep.stale) {
      if (e.state === "deleting") found.push({ carveId: e.carveId, reason: "unfinished-delete", bytes: 0, age: e.stateSince.getTime() });
      else if (e.state === "importing") found.push({ carveId: e.carveId, reason: "abandoned", bytes: 0, age: e.stateSince.getTime() });
    }
    found.sort((a, b) => a.age - b.age);
    return found.slice(0, limit).map(({ age: _age, ...c }) => c);
  }

  async deleteIfExpired(carveId: string, criteria: ExpiryCriteria): Promise<{ deleted: boolean; bytesFreed: number }> {
    const { catalog } = this.deps;
    const entry = await catalog.get(carveId);
    const kept = { deleted: false, bytesFreed: 0 };
    if (!entry) return kept;
    const token = randomUUID();
    const now = this.deps.now();
    if (entry.state === "deleting" || entry.state === "importing") {
      // A delete or an import whose process died: take it over (exactly one process does), then finish it.
      const limit = entry.state === "deleting" ? criteria.staleDeleteBefore : criteria.idleBefore;
      if (entry.stateSince >= limit) return kept;
      const taken = await catalog.update(
        carveId,
        { states: [entry.state], claim: entry.claim, stateSince: entry.stateSince },
        { state: "deleting", claim: token, stateSince: now },
      );
      if (!taken) return kept;
      // What the dead delete left on disk (all of it, or what it had not removed yet) is freed now.
      return { deleted: true, bytesFreed: await removeCarve(this.deps, taken, token) };
    }
    if (entry.hold) return kept;
    if (entry.state === "complete") {
      const marked = await catalog.update(
        carveId,
        { states: ["complete"], unheld: true, completedBefore: criteria.completedBefore },
        { state: "deleting", claim: token, stateSince: now },
      );
      if (!marked) return kept;
      crashPoint("delete.after-mark");
      await removeCarve(this.deps, marked, token);
      this.deps.logger.info({ carveId, bytesFreed: entry.carveSize }, "carve deleted");
      return { deleted: true, bytesFreed: entry.carveSize };
    }
    if (entry.state !== "receiving") return kept;
    const idle = async (): Promise<{ idle: boolean; bytes: number }> => {
      const p = await this.deps.blobs.progress(sessionOf(entry), 0);
      const complete = p !== null && p.blocksReceived === entry.blockCount;
      return { idle: !complete && (p?.lastBlockAt ?? entry.createdAt) < criteria.idleBefore, bytes: p?.bytesReceived ?? 0 };
    };
    if (!(await idle()).idle) return kept;
    const marked = await catalog.update(
      carveId,
      { states: ["receiving"], unheld: true, sessionId: entry.sessionId },
      { state: "deleting", claim: token, stateSince: now },
    );
    if (!marked) return kept;
    // A block that arrived between the first look and the mark keeps the carve: look again, now that no reader
    // sees it, and give it back if so.
    const again = await idle();
    if (!again.idle) {
      await catalog.update(carveId, { states: ["deleting"], claim: token }, { state: "receiving", claim: null, stateSince: now });
      return kept;
    }
    crashPoint("delete.after-mark");
    await removeCarve(this.deps, marked, token);
    this.deps.logger.info({ carveId, bytesFreed: again.bytes }, "carve deleted");
    return { deleted: true, bytesFreed: again.bytes };
  }

  /**
   * Finishes what dead processes left: completions whose claim went stale, and uploads whose every block is stored
   * but whose completion never began. With `exclusive` (this process owns the storage, as with the filesystem
   * data directory lock), every completion claim and import in progress is a dead process's, whatever its age.
   * Unfinished deletes are left to retention, which finishes them once stale.
   */
  async recover(options: { exclusive: boolean; staleBefore: Date; limit?: number }): Promise<{ completed: number; deleted: number }> {
    const { catalog } = this.deps;
    const limit = options.limit ?? 1000;
    const before = options.exclusive ? new Date(8.64e15) : options.staleBefore;
    const far = new Date(0);
    const sweep = await catalog.sweep({ completedBefore: far, idleBefore: far, staleDeleteBefore: before }, limit);
    let completed = 0;
    let deleted = 0;
    for (const e of sweep.stale) {
      try {
        if (e.state === "completing") {
          if (await this.deps.completer.finishAbandoned(e)) completed++;
        } else if (options.exclusive && e.state === "importing") {
          const token = randomUUID();
          const taken = await catalog.update(e.carveId, { states: [e.state], claim: e.claim }, { state: "deleting", claim: token });
          if (taken) {
            this.deps.logger.warn({ carveId: e.carveId }, "removing an import interrupted by a restart");
            await removeCarve(this.deps, taken, token);
            deleted++;
          }
        }
      } catch (err) {
        this.deps.logger.warn({ carveId: e.carveId, err }, "could not finish what a dead process left; retention retries");
      }
    }
    completed += await this.completeFullUploads(limit);
    return { completed, deleted };
  }

  /** Receiving carves whose every block is stored (a crash between the last block and its completion). */
  private async completeFullUploads(limit: number): Promise<number> {
    let completed = 0;
    let cursor: string | undefined;
    for (let seen = 0; seen < limit; ) {
      const page = await this.deps.catalog.list({ status: "receiving", limit: 200, ...(cursor ? { cursor } : {}) });
      for (const e of page.entries) {
        seen++;
        if (e.state !== "receiving") continue;
        const p = await this.deps.blobs.progress(sessionOf(e), 0);
        if (p && p.blocksReceived === e.blockCount) {
          this.deps.logger.warn({ carveId: e.carveId }, "finishing a completion interrupted by a restart");
          if (await this.deps.completer.ensureComplete(sessionOf(e)).catch(() => false)) completed++;
        }
      }
      if (!page.nextCursor) break;
      cursor = page.nextCursor;
    }
    return completed;
  }
}
