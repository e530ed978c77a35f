import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

/**
 * The service's Prometheus metrics (GET /metrics). One instance per service, passed to whoever counts:
 * nothing is registered globally, so tests and several services in one process never collide.
 * Names and labels are documented in README.md ("Metrics"); a test checks the two agree.
 */
export class Metrics {
  readonly registry = new Registry();

  readonly sessionsStarted = new Counter({
    name: "carve_sessions_started_total",
    help: "Carve sessions opened (a retried start of the same carve is not counted again)",
    registers: [this.registry],
  });
  readonly sessionsCompleted = new Counter({
    name: "carve_sessions_completed_total",
    help: "Carves completed (every block stored, SHA-256 computed)",
    registers: [this.registry],
  });
  readonly sessionsFailed = new Counter({
    name: "carve_sessions_refused_total",
    help: "Start requests refused, by reason (error code)",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });
  readonly sessionsExpired = new Counter({
    name: "carve_sessions_expired_total",
    help: "Carves deleted by retention, by reason (retention, abandoned, unfinished-delete)",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });
  readonly blocksReceived = new Counter({
    name: "carve_blocks_received_total",
    help: "Blocks stored for the first time",
    registers: [this.registry],
  });
  readonly blocksDuplicate = new Counter({
    name: "carve_blocks_duplicate_total",
    help: "Identical re-sends of a stored block, acknowledged without change",
    registers: [this.registry],
  });
  readonly blocksRefused = new Counter({
    name: "carve_blocks_refused_total",
    help: "Block requests refused, by reason (error code)",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });
  readonly bytesStored = new Counter({
    name: "carve_bytes_stored_total",
    help: "Decoded carve bytes stored (duplicates not counted)",
    registers: [this.registry],
  });
  readonly completionSeconds = new Histogram({
    name: "carve_completion_seconds",
    help: "Time from a carve's start to its completion",
    buckets: [1, 5, 15, 60, 300, 900, 3600, 4 * 3600],
    registers: [this.registry],
  });
  readonly downloads = new Counter({
    name: "carve_downloads_total",
    help: "Archive downloads by result (complete, aborted)",
    labelNames: ["result"] as const,
    registers: [this.registry],
  });
  readonly bytesSent = new Counter({
    name: "carve_download_bytes_total",
    help: "Archive bytes sent to responders",
    registers: [this.registry],
  });
  readonly authDecisions = new Counter({
    name: "carve_vault_decisions_total",
    help: "Responder authorization outcomes (allowed, denied, invalid-token, unavailable)",
    labelNames: ["outcome"] as const,
    registers: [this.registry],
  });
  readonly storeErrors = new Counter({
    name: "carve_store_errors_total",
    help: "Requests that failed because storage was unavailable",
    registers: [this.registry],
  });
  /** Read when scraped (see `measureInflight`), so it also shows bodies still arriving. */
  private inflightSource: () => number = () => 0;
  readonly inflightBytes: Gauge = new Gauge({
    name: "carve_inflight_body_bytes",
    help: "Budgeted bytes of agent request bodies in progress (bytes received so far, not declared lengths)",
    registers: [this.registry],
    collect: (): void => this.inflightBytes.set(this.inflightSource()),
  });

  /** Where carve_inflight_body_bytes comes from: the agent routes' in-flight budget. */
  measureInflight(source: () => number): void {
    this.inflightSource = source;
  }

  constructor(options: { processMetrics?: boolean } = {}) {
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
  }
}
