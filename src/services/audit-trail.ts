import type { AuditLog } from "../storage/contracts.js";
import type { AuditEvent, AuditPage, AuditQuery } from "../storage/model.js";
import type { AuditTrail } from "./types.js";

/** The audit trail every caller records through (HTTP handlers, retention, the CLIs). */
export class AuditTrailService implements AuditTrail {
  constructor(private readonly log: AuditLog) {}

  record(event: AuditEvent): Promise<void> {
    return this.log.append(event);
  }

  list(query: AuditQuery): Promise<AuditPage> {
    return this.log.query(query);
  }
}
