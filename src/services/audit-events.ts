import { randomUUID } from "node:crypto";
import { safeErrorFields } from "../errors.js";
import type { Logger } from "../logger.js";
import type { AuditActor, AuditEvent, CertificateIdentity } from "../storage/model.js";
import type { AuditTrail } from "./types.js";

export type AuditDetail = AuditEvent["detail"];

/** Where an audited action came from: a responder's connection, or nothing for the service's own jobs. */
export interface AuditClient {
  address: string | null;
  certificate: CertificateIdentity | null;
}

/** One audited action, before it gets its id and time. */
export interface AuditInput {
  action: string;
  result: AuditEvent["result"];
  actor: AuditActor;
  client: AuditClient;
  requestId: string | null;
  carveId: string | null;
  detail: AuditDetail;
}

export const NO_ACTOR: AuditActor = { displayName: null, entityId: null, tokenFingerprint: null };
export const NO_CLIENT: AuditClient = { address: null, certificate: null };

/** The actor of what the service does by itself (retention, cleanup): named, never a token. */
export function systemActor(displayName: string): AuditActor {
  return { displayName, entityId: null, tokenFingerprint: null };
}

/** The event as stored: the client's certificate subject in `client`, its fingerprint in `detail`. */
export function buildAuditEvent(input: AuditInput, at: Date, id: string = randomUUID()): AuditEvent {
  return {
    id,
    at,
    action: input.action,
    result: input.result,
    actor: input.actor,
    client: {
      address: input.client.address,
      certificateSubject: input.client.certificate?.subjectDn ?? null,
      requestId: input.requestId,
    },
    carveId: input.carveId,
    detail: {
      ...(input.client.certificate ? { certificateFingerprint: input.client.certificate.fingerprintSha256 } : {}),
      ...input.detail,
    },
  };
}

/** Refusals of requests that did not authenticate at all: anyone can send them, as fast as they like. */
const UNAUTHENTICATED: ReadonlySet<unknown> = new Set(["TOKEN_MISSING", "TOKEN_INVALID"]);
/** Clients whose unauthenticated failures are counted at once; beyond it they share one counter. */
const MAX_TRACKED_CLIENTS = 10_000;

interface FailureWindow {
  start: Date;
  suppressed: number;
  action: string;
  sample: AuditInput;
}

/**
 * Records audit events in the trail (durable, queryable) and in the log. A trail failure does not change what
 * the caller does (the action already happened); it is logged at error level with the whole event, so the log
 * remains a complete trail.
 */
export class AuditRecorder {
  private readonly windows = new Map<string, FailureWindow>();
  private readonly sweeper: NodeJS.Timeout | null; // unref'd: a window open at exit is not written

  /**
   * @param unauthenticatedWindowMs Repeated unauthenticated failures (no token, an invalid one) of one client
   *   address are written once per window: the first as it happens, the others as one `auth.failures` event
   *   with their count when the window closes. 0 writes every one.
   */
  constructor(
    private readonly trail: AuditTrail,
    private readonly logger: Logger,
    private readonly now: () => Date,
    private readonly unauthenticatedWindowMs = 60_000,
  ) {
    this.sweeper =
      unauthenticatedWindowMs > 0
        ? setInterval(() => void this.closeWindows(), Math.min(unauthenticatedWindowMs, 10_000))
        : null;
    this.sweeper?.unref();
  }

  async record(input: AuditInput): Promise<AuditEvent | null> {
    if (this.unauthenticatedWindowMs > 0 && input.result === "denied" && UNAUTHENTICATED.has(input.detail.code)) {
      const key =
        this.windows.size < MAX_TRACKED_CLIENTS ? `${input.client.address ?? "unknown"}|${String(input.detail.code)}` : "other";
      const open = this.windows.get(key);
      if (open && this.now().getTime() - open.start.getTime() < this.unauthenticatedWindowMs) {
        open.suppressed++;
        return null;
      }
      if (open) {
        this.windows.delete(key);
        if (open.suppressed > 0) await this.summarize(open);
      }
      this.windows.set(key, { start: this.now(), suppressed: 0, action: input.action, sample: input });
    }
    return this.write(input);
  }

  private async closeWindows(): Promise<void> {
    const now = this.now().getTime();
    for (const [key, w] of this.windows) {
      if (now - w.start.getTime() < this.unauthenticatedWindowMs) continue;
      this.windows.delete(key);
      if (w.suppressed > 0) await this.summarize(w);
    }
  }

  private async summarize(w: FailureWindow): Promise<void> {
    await this.write({
      ...w.sample,
      action: "auth.failures",
      requestId: null,
      carveId: null,
      detail: {
        code: typeof w.sample.detail.code === "string" ? w.sample.detail.code : null,
        action: w.action,
        count: w.suppressed,
        windowStart: w.start.toISOString(),
        windowEnd: this.now().toISOString(),
      },
    });
  }

  private async write(input: AuditInput): Promise<AuditEvent> {
    const event = buildAuditEvent(input, this.now());
    const logged = { ...event, at: event.at.toISOString() };
    try {
      await this.trail.record(event);
      this.logger.info({ audit: logged }, "audit");
    } catch (err) {
      this.logger.error({ audit: logged, err: safeErrorFields(err) }, "audit event could not be stored");
    }
    return event;
  }
}
