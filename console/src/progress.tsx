import type { CarveSummary } from "../../src/client/api-client.js";
import { bytes, duration, rate } from "./format.js";

/** Samples older than this do not count towards the current rate. */
const RATE_WINDOW_MS = 30_000;

interface Sample {
  at: number;
  bytes: number;
}

/**
 * Upload rates from successive polls of the same carves: bytes received between the oldest and newest sample
 * of the last RATE_WINDOW_MS. Until two samples exist, the average since the carve started.
 */
export class RateTracker {
  private readonly samples = new Map<string, Sample[]>();

  observe(carves: readonly CarveSummary[], at = Date.now()): void {
    for (const c of carves) {
      if (c.status === "complete") {
        this.samples.delete(c.carveId);
        continue;
      }
      const list = this.samples.get(c.carveId) ?? [];
      if (list.at(-1)?.bytes !== c.bytesReceived || list.length < 2) list.push({ at, bytes: c.bytesReceived });
      while (list.length > 2 && (list[0] as Sample).at < at - RATE_WINDOW_MS) list.shift();
      this.samples.set(c.carveId, list);
    }
  }

  /** Bytes per second, or null when nothing can be said. */
  rateOf(c: CarveSummary, now = Date.now()): number | null {
    const list = this.samples.get(c.carveId) ?? [];
    const first = list[0];
    const last = list.at(-1);
    if (first && last && last.at - first.at >= 1000) {
      // No new bytes since the last sample: the rate falls as time passes without a block.
      const span = Math.max(last.at, now) - first.at;
      return ((last.bytes - first.bytes) * 1000) / span;
    }
    const elapsed = new Date(c.updatedAt).getTime() - new Date(c.createdAt).getTime();
    return elapsed >= 1000 ? (c.bytesReceived * 1000) / elapsed : null;
  }
}

const STATUS_TEXT: Record<CarveSummary["status"], string> = {
  receiving: "receiving",
  incomplete: "incomplete",
  complete: "complete",
};

export function StatusBadge({ carve }: { carve: CarveSummary }) {
  const title =
    carve.status === "incomplete"
      ? "No block for over 10 minutes: osquery gave up on this carve, it will not complete by itself"
      : carve.status === "receiving"
        ? "Blocks are arriving"
        : "Every block received and hashed";
  return (
    <span class={`badge badge-${carve.status}`} title={title}>
      {STATUS_TEXT[carve.status]}
    </span>
  );
}

export function HoldBadge({ carve }: { carve: CarveSummary }) {
  if (carve.hold === null) return null;
  return (
    <span class="badge badge-hold" title={`Legal hold by ${carve.hold.by}: ${carve.hold.reason}`}>
      on hold
    </span>
  );
}

/**
 * A receiving carve's progress: blocks received of total, bytes, rate and time since its last block.
 * `fetchedAt` is when `carve` was read: idleSeconds keeps counting from there.
 */
export function UploadProgress({ carve, rates, now, fetchedAt }: { carve: CarveSummary; rates: RateTracker; now: number; fetchedAt: number }) {
  const idle = carve.idleSeconds === null ? null : carve.idleSeconds + Math.max(0, now - fetchedAt) / 1000;
  const label = `${carve.blocksReceived} of ${carve.blockCount} blocks`;
  return (
    <div class="upload-progress" data-carve-progress={carve.carveId}>
      <progress max={Math.max(1, carve.blockCount)} value={carve.blocksReceived} aria-label={`Upload progress: ${label}`} />
      <span class="progress-blocks" data-blocks-received={carve.blocksReceived}>
        {label}
      </span>
      <span class="progress-detail">
        {bytes(carve.bytesReceived)} of {bytes(carve.carveSize)} · {rate(rates.rateOf(carve, now))}
        {idle !== null ? ` · last block ${duration(idle)} ago` : ""}
      </span>
    </div>
  );
}
