import type { Config } from "../config/schema.js";
import { expiryPolicyOf } from "../carves/expiry.js";
import type { RetentionOptions } from "./retention.js";

/** The retention job's options from the validated configuration (shared by the service and the CLI). */
export function retentionOptionsOf(config: Config): RetentionOptions {
  const r = config.retention;
  return {
    ...expiryPolicyOf(config),
    staleDeleteAfterSeconds: r.staleDeleteAfterMinutes * 60,
    batchSize: r.batchSize,
    maxBatchesPerRun: r.maxBatchesPerRun,
    intervalSeconds: r.intervalMinutes * 60,
  };
}
