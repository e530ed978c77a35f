import { pino, type Logger, type DestinationStream, type LoggerOptions } from "pino";

export type { Logger } from "pino";

/**
 * Paths pino removes from every log line. The request serializer in src/http/logging.ts already keeps only
 * an allow-list of headers; this is the second line of defence for anything a caller logs by mistake:
 * Vault tokens, node keys (osquery enrollment secrets) and block data (evidence, and large).
 */
export const REDACT_PATHS = [
  "req.headers.authorization",
  "req.headers.cookie",
  'req.headers["x-vault-token"]',
  "token",
  "*.token",
  "nodeKey",
  "*.nodeKey",
  "node_key",
  "*.node_key",
  "data",
  "*.data",
  "body",
  "*.body",
  "headers.authorization",
  '*.headers["x-vault-token"]',
  "*.headers.authorization",
];

export function createLogger(level: string, destination?: DestinationStream): Logger {
  const options: LoggerOptions = {
    level,
    base: { service: "osquery-carve-server" },
    redact: { paths: REDACT_PATHS, censor: "[redacted]" },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  };
  return destination ? pino(options, destination) : pino(options);
}
