import type { Config } from "../config/schema.js";

/*
 * The expiry rule, once: a complete carve expires `retentionDays` after its completion, an unfinished one
 * `abandonedAfterSeconds` after its last block (a new block postpones it), a held one never. The responder API
 * shows it per carve (expiresAt) and retention selects by it (expiryCriteriaAt, an ExpiryCriteria of
 * src/storage/model.ts). Plain data in and out, so that every layer, storage included, can apply it.
 */

/** The retention rules (config `retention`). */
export interface ExpiryPolicy {
  retentionDays: number;
  abandonedAfterSeconds: number;
}

const DAY_MS = 86_400_000;

export function expiryPolicyOf(config: Config): ExpiryPolicy {
  return { retentionDays: config.retention.days, abandonedAfterSeconds: config.retention.abandonedAfterHours * 3600 };
}

/** What of a carve the rule looks at. */
export interface ExpiryFacts {
  status: "receiving" | "complete";
  completedAt: Date | null;
  /** Last block stored (its creation before the first). */
  updatedAt: Date;
  /** The legal hold in place, if any. */
  hold: object | null;
}

/** When retention may delete the carve; null under a legal hold (or without a policy). */
export function expiresAt(carve: ExpiryFacts, policy: ExpiryPolicy | undefined): Date | null {
  if (!policy || carve.hold) return null;
  if (carve.status === "complete") {
    return carve.completedAt ? new Date(carve.completedAt.getTime() + policy.retentionDays * DAY_MS) : null;
  }
  return new Date(carve.updatedAt.getTime() + policy.abandonedAfterSeconds * 1000);
}

/**
 * What retention may delete at `now`: exactly the carves whose expiresAt is before it. Deletes begun more than
 * `staleDeleteAfterSeconds` ago were left by a dead process.
 */
export function expiryCriteriaAt(
  now: Date,
  policy: ExpiryPolicy & { staleDeleteAfterSeconds: number },
): { completedBefore: Date; idleBefore: Date; staleDeleteBefore: Date } {
  return {
    completedBefore: new Date(now.getTime() - policy.retentionDays * DAY_MS),
    idleBefore: new Date(now.getTime() - policy.abandonedAfterSeconds * 1000),
    staleDeleteBefore: new Date(now.getTime() - policy.staleDeleteAfterSeconds * 1000),
  };
}
