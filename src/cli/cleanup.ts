/**
 * One-shot retention run for cron: `npm run cleanup [-- --dry-run] [--json]`, or in the container
 * `node dist/src/cli/cleanup.js [--dry-run] [--json]`. Uses the same configuration as the service.
 *
 * Prints the carves it would delete (dry run) one per line, then ONE summary line. Logs go to stderr.
 * Exit codes: 0 done (nothing failed), 1 some carves could not be deleted, 2 invalid configuration or
 * arguments, 3 storage could not be opened (e.g. the filesystem data directory is owned by the running
 * service, whose built-in retention job does this work), 4 the run itself failed.
 */
import { parseArgs } from "node:util";
import { pino } from "pino";
import { ConfigError, loadConfig } from "../config/load.js";
import { formatBytes } from "../config/sizes.js";
import { describeError } from "../errors.js";
import { createLogger } from "../logger.js";
import { RetentionJob, type RetentionSummary } from "../jobs/retention.js";
import { openServices } from "../services/deployment.js";
import { retentionOptionsOf } from "../jobs/retention-config.js";

export function summaryLine(s: RetentionSummary): string {
  if (s.dryRun) {
    const bytes = s.candidates.reduce((n, c) => n + c.bytes, 0);
    return `cleanup (dry run): would delete ${s.candidates.length} carve(s), ${formatBytes(bytes)}${s.backlog ? ", more beyond this run's cap" : ""}`;
  }
  return (
    `cleanup: deleted ${s.deleted} carve(s) (${s.byReason.retention} expired, ${s.byReason.abandoned} abandoned, ` +
    `${s.byReason["unfinished-delete"]} unfinished deletes), freed ${formatBytes(s.bytesFreed)}, ` +
    `${s.kept} kept, ${s.failed} failed${s.backlog ? ", backlog remains" : ""}`
  );
}

export async function main(argv: string[], out: (line: string) => void = (l) => process.stdout.write(`${l}\n`)): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: argv,
      options: { "dry-run": { type: "boolean", default: false }, json: { type: "boolean", default: false }, help: { type: "boolean" } },
      allowPositionals: true,
    });
  } catch (err) {
    process.stderr.write(`cleanup: ${err instanceof Error ? err.message : String(err)}\n`);
    return 2;
  }
  if (args.values.help) {
    out("usage: cleanup [--dry-run] [--json]   (configuration: conf/carve-server.yml and CARVE_* environment)");
    return 0;
  }
  const positional = args.positionals.filter((p) => p !== "cleanup");
  if (positional.length > 0) {
    process.stderr.write(`cleanup: unexpected argument ${positional[0]}\n`);
    return 2;
  }
  let config;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`cleanup: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  // The service's log format (level names, ISO times, same redaction), on stderr: stdout is the report.
  const logger = createLogger(config.logging.level, pino.destination(2)).child({ component: "cleanup" });
  let services;
  try {
    services = await openServices(config, logger);
  } catch (err) {
    process.stderr.write(`cleanup: cannot open storage: ${describeError(err)}\n`);
    return 3;
  }
  try {
    const job = new RetentionJob({ expiry: services.expiry, audit: services.audit, logger, options: retentionOptionsOf(config) });
    const summary = await job.runOnce({ dryRun: args.values["dry-run"] });
    if (args.values.json) {
      out(JSON.stringify(summary));
    } else {
      for (const c of summary.candidates) out(`${c.carveId}\t${c.reason}\t${c.bytes}`);
      out(summaryLine(summary));
    }
    return summary.failed > 0 ? 1 : 0;
  } catch (err) {
    process.stderr.write(`cleanup: run failed: ${describeError(err)}\n`);
    return 4;
  } finally {
    await services.close();
  }
}

const invokedDirectly = process.argv[1] !== undefined && import.meta.url === new URL(`file://${process.argv[1]}`).href;
if (invokedDirectly) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`cleanup: ${String(err)}\n`);
      process.exit(4);
    },
  );
}
