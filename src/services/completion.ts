import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { AppError } from "../errors.js";
import type { Logger } from "../logger.js";
import type { BlobStore, CarveCatalog, CatalogEntry } from "../storage/contracts.js";
import type { Session } from "../storage/model.js";
import { crashPoint } from "../util/crash-point.js";
import { sessionOf } from "./records.js";

export interface CompletionOptions {
  /** How long a block request waits for another process's completion before answering "try again". */
  completionWaitMs?: number;
  /** A completion claim not refreshed for this long belongs to a dead process and is taken over. */
  staleCompletionMs?: number;
}

/**
 * Turns an upload whose every block is stored into a complete carve, exactly once across processes: the catalog
 * entry is claimed (receiving -> completing, with a random token), the blob store publishes the archive while the
 * claim is refreshed, and the entry becomes complete only if the claim is still ours. A claim left by a dead
 * process is taken over once stale: by the agent's retried block, by retention, or at start-up.
 */
export class Completer {
  private readonly waitMs: number;
  private readonly staleMs: number;

  constructor(
    private readonly deps: { catalog: CarveCatalog; blobs: BlobStore; logger: Logger; now: () => Date } & CompletionOptions,
  ) {
    // Both below osquery's 16 s request deadline, so a retried block takes over a dead claim in time.
    this.waitMs = deps.completionWaitMs ?? 12_000;
    this.staleMs = deps.staleCompletionMs ?? 10_000;
  }

  /**
   * Completes the carve or waits for whoever holds the claim. Returns whether THIS call completed it.
   * @throws AppError UNKNOWN_SESSION (deleted), STORAGE_UNAVAILABLE (still in progress elsewhere: retry)
   */
  async ensureComplete(session: Session): Promise<boolean> {
    const { catalog } = this.deps;
    const deadline = Date.now() + this.waitMs;
    for (;;) {
      const token = randomUUID();
      const claimed = await catalog.update(
        session.carveId,
        { states: ["receiving"], sessionId: session.sessionId },
        { state: "completing", claim: token, stateSince: this.deps.now() },
      );
      if (claimed) return this.finish(session, token);
      const current = await catalog.get(session.carveId);
      if (!current || current.sessionId !== session.sessionId || current.state === "deleting" || current.state === "importing") {
        throw new AppError("UNKNOWN_SESSION");
      }
      if (current.state === "complete") return false;
      if (current.state === "completing" && this.deps.now().getTime() - current.stateSince.getTime() > this.staleMs) {
        if (await this.takeOver(current, token)) return this.finish(session, token);
      }
      if (Date.now() > deadline) throw new AppError("STORAGE_UNAVAILABLE", "completion in progress elsewhere, retry");
      await sleep(25);
    }
  }

  /**
   * Finishes a completion whose claimant died (its claim is older than `olderThan`, or any claim when this
   * process owns the storage exclusively). Returns whether this call completed it.
   */
  async finishAbandoned(entry: CatalogEntry): Promise<boolean> {
    const token = randomUUID();
    if (!(await this.takeOver(entry, token))) return false;
    this.deps.logger.warn({ carveId: entry.carveId }, "finishing a completion its process left unfinished");
    return this.finish(sessionOf(entry), token);
  }

  private async takeOver(entry: CatalogEntry, token: string): Promise<boolean> {
    const taken = await this.deps.catalog.update(
      entry.carveId,
      { states: ["completing"], claim: entry.claim, stateSince: entry.stateSince },
      { claim: token, stateSince: this.deps.now() },
    );
    return taken !== null;
  }

  private async finish(session: Session, token: string): Promise<true> {
    const { catalog, blobs, logger } = this.deps;
    const mine = { states: ["completing"] as const, claim: token };
    const heartbeat = async (): Promise<void> => {
      // The claim stays ours while we make progress; if another process took it over, stop.
      if (!(await catalog.update(session.carveId, mine, { stateSince: this.deps.now() }))) {
        throw new AppError("STORAGE_UNAVAILABLE", "completion claim lost");
      }
    };
    let facts;
    try {
      facts = await blobs.complete(session, heartbeat);
    } catch (err) {
      // Give the claim back (if still ours) so the next re-send, or another process, retries at once.
      await catalog.update(session.carveId, mine, { state: "receiving", claim: null, stateSince: this.deps.now() }).catch(() => undefined);
      throw err;
    }
    const now = this.deps.now();
    const done = await catalog.update(session.carveId, mine, {
      state: "complete",
      claim: null,
      stateSince: now,
      completedAt: now,
      sha256: facts.sha256,
      compression: facts.compression,
    });
    if (!done) throw new AppError("STORAGE_UNAVAILABLE", "completion claim lost");
    crashPoint("complete.after-record");
    logger.info(
      { carveId: session.carveId, sha256: facts.sha256, compression: facts.compression, carveSize: session.carveSize, blockCount: session.blockCount },
      "carve complete",
    );
    return true;
  }
}
