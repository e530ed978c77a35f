import type { Config } from "../config/schema.js";
import type { RetentionOptions } from "./retention.js";

/** The retention job's options from the validated configuration (shared by the service and the CLI). */
export function retentionOptionsOf(config: Config): RetentionOptions {
  const r = config.retention;
  return {
    retentionDays: r.days,
    abandonedAfterSeconds: r.abandonedAfterHours * 3600,
    staleDeleteAfterSeconds: r.staleDeleteAfterMinutes * 60,
    batchSize: r.batchSize,
    maxBatchesPerRun: r.maxBatchesPerRun,
    intervalSeconds: r.intervalMinutes * 60,
  };
}
