import type { AuditLog } from "../storage/contracts.js";
import type { AuditEvent, AuditPage, AuditQuery } from "../storage/model.js";
import { withCustodyRoom } from "./custody.js";
import type { AuditTrail } from "./types.js";

/** The audit trail every caller records through (HTTP handlers, retention, the CLIs). */
export class AuditTrailService implements AuditTrail {
  constructor(
    private readonly log: AuditLog,
    private readonly releaseReserve?: () => boolean,
  ) {}

  /** Durable before it resolves; on a full disk the custody reserve is used (see withCustodyRoom). */
  record(event: AuditEvent): Promise<void> {
    return withCustodyRoom(this.releaseReserve, () => this.log.append(event));
  }

  list(query: AuditQuery): Promise<AuditPage> {
    return this.log.query(query);
  }
}
