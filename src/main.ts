import v8 from "node:v8";
import { ConfigError, loadConfig } from "./config/load.js";
import { createLogger, type Logger } from "./logger.js";
import { safeErrorFields } from "./errors.js";
import { startService } from "./server.js";

/**
 * V8's heap heuristics favour speed over memory: under a stream of agent requests the heap grew to ~80 MB
 * for ~18 MB of live objects (peak RSS 150+ MB with 50 agents). --optimize-for-size keeps it near what is live.
 * Set here it only reaches what V8 decides after start-up (the old generation's growth): the young generation is
 * sized when V8 starts (32 MiB of semi-spaces, measured with v8.getHeapSpaceStatistics(), against 2 MiB with the
 * flag on the command line; 50 agents x 8 KiB blocks peaked at 127-129 MB against 91 MB), so the launch commands
 * (npm start, the Dockerfile, the benchmark) pass it as well. A choice made on the command line or in
 * NODE_OPTIONS (--no-optimize-for-size) wins.
 */
function tuneHeapForMemory(): void {
  const given = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? "").split(/\s+/)];
  if (given.some((a) => /^--(no-)?optimize[-_]for[-_]size$/.test(a))) return;
  v8.setFlagsFromString("--optimize-for-size");
}

/**
 * Exits once the log lines written so far have reached stdout. pino writes asynchronously: exiting at once let the
 * exit handler's synchronous flush overtake a line still being written ("stopped" arrived before "shutting down").
 * A stdout that never drains (its reader gone) does not keep the process: it exits after 2 s regardless.
 */
function exitWhenLogged(logger: Logger, code: number): void {
  setTimeout(() => process.exit(code), 2000).unref();
  logger.flush(() => process.exit(code));
}

/** Wiring only: config -> logger -> store -> app -> server; graceful shutdown on SIGTERM/SIGINT, TLS
 * reload on SIGHUP. */
async function main(): Promise<void> {
  tuneHeapForMemory();
  let config;
  const warnings: string[] = [];
  try {
    config = loadConfig({ onWarning: (w) => warnings.push(w) });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`osquery-carve-server: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const logger = createLogger(config.logging.level);
  for (const w of warnings) logger.warn(w);
  let service;
  try {
    service = await startService({ config, logger });
  } catch (err) {
    logger.fatal({ err: safeErrorFields(err) }, "could not start");
    process.exit(1);
  }
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    signals++;
    if (signals > 1) {
      logger.warn({ signal }, "second signal: exiting now");
      process.exit(1);
    }
    logger.info({ signal }, "signal received");
    service.stop().then(
      () => exitWhenLogged(logger, 0),
      (err: unknown) => {
        logger.error({ err: safeErrorFields(err) }, "error during shutdown");
        exitWhenLogged(logger, 1);
      },
    );
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
  // Certificate rotation: re-read the TLS files; a broken set is refused and the running one stays.
  process.on("SIGHUP", () => {
    service.reloadTls().catch((err: unknown) => {
      logger.error({ err: safeErrorFields(err) }, "TLS reload failed: keeping the current certificate");
    });
  });
}

void main();
