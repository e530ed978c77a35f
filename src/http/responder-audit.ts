import { randomUUID } from "node:crypto";
import { safeErrorFields } from "../errors.js";
import type { Logger } from "../logger.js";
import type { AuditActor, AuditEvent, CarveStore } from "../storage/carve-store.js";
import type { ClientInfo } from "./client-identity.js";

export type AuditDetail = AuditEvent["detail"];

export interface AuditInput {
  action: string;
  result: AuditEvent["result"];
  actor: AuditActor;
  client: ClientInfo;
  requestId: string | null;
  carveId: string | null;
  detail: AuditDetail;
}

export const NO_ACTOR: AuditActor = { displayName: null, entityId: null, tokenFingerprint: null };

/**
 * Writes responder audit events to the store (durable, queryable) and to the log. A store failure does not
 * change the reply (the action already happened); it is logged at error level with the whole event, so the
 * log remains a complete trail.
 */
export class AuditTrail {
  constructor(
    private readonly store: CarveStore,
    private readonly logger: Logger,
    private readonly now: () => Date,
  ) {}

  async record(input: AuditInput): Promise<AuditEvent> {
    const event: AuditEvent = {
      id: randomUUID(),
      at: this.now(),
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
    const logged = { ...event, at: event.at.toISOString() };
    try {
      await this.store.appendAudit(event);
      this.logger.info({ audit: logged }, "audit");
    } catch (err) {
      this.logger.error({ audit: logged, err: safeErrorFields(err) }, "audit event could not be stored");
    }
    return event;
  }
}
