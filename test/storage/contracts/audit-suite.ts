/**
 * The AuditLog conformance suite (src/storage/contracts.ts). Every audit log runs all of it, without opt-outs.
 */
import { randomUUID } from "node:crypto";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { AuditLog } from "../../../src/storage/contracts.js";
import type { AuditEvent, AuditQuery } from "../../../src/storage/model.js";
import { expectCode } from "./catalog-suite.js";

export interface AuditHarness {
  /** A new audit log instance (its own connection) over this harness's storage: every call sees the same data. */
  open(): Promise<AuditLog>;
  /** Removes the storage; every log the suite opened is closed by then. */
  cleanup(): Promise<void>;
}

const T0 = Date.parse("2026-06-01T00:00:00.000Z");
const at = (seconds: number): Date => new Date(T0 + seconds * 1000);

export function testEvent(over: Partial<AuditEvent> = {}): AuditEvent {
  return {
    id: randomUUID(),
    at: at(0),
    action: "carve.read",
    result: "allowed",
    actor: { displayName: "token-responder", entityId: "ent-1", tokenFingerprint: "f00d" },
    client: { address: "10.0.0.7", certificateSubject: "CN=responder", requestId: "rq-1" },
    carveId: randomUUID(),
    detail: { sha256: "a".repeat(64), bytes: 10240, partial: false, range: null },
    ...over,
  };
}

/** Newest first: (at desc, id desc). */
function newestFirst(a: AuditEvent, b: AuditEvent): number {
  return b.at.getTime() - a.at.getTime() || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0);
}

export function auditConformance(name: string, makeHarness: () => Promise<AuditHarness>): void {
  describe(`AuditLog conformance: ${name}`, () => {
    let harness: AuditHarness;
    let log: AuditLog;
    const opened: AuditLog[] = [];
    const another = async (): Promise<AuditLog> => {
      const l = await harness.open();
      opened.push(l);
      return l;
    };
    const ids = (events: AuditEvent[]): string[] => events.map((e) => e.id);
    const all = async (q: Omit<AuditQuery, "limit"> = {}): Promise<AuditEvent[]> => (await log.query({ limit: 1000, ...q })).events;

    beforeEach(async () => {
      harness = await makeHarness();
      log = await another();
    });
    afterEach(async () => {
      for (const l of opened.splice(0)) await l.close();
      await harness.cleanup();
    });

    it("names its kind", () => {
      expect(typeof log.kind).toBe("string");
      expect(log.kind.length).toBeGreaterThan(0);
    });

    it("stores every field of an event and hands it back unchanged", async () => {
      const full = testEvent({ detail: { s: "x", n: -1.5, yes: true, no: false, nothing: null } });
      const bare = testEvent({
        at: at(1),
        result: "denied",
        actor: { displayName: null, entityId: null, tokenFingerprint: null },
        client: { address: null, certificateSubject: null, requestId: null },
        carveId: null,
        detail: {},
      });
      await log.append(full);
      await log.append(bare);
      const events = await all();
      expect(events).toEqual([bare, full]);
      expect(events[0]?.at).toBeInstanceOf(Date);
    });

    it("never shares mutable parts with the caller", async () => {
      const e = testEvent();
      await log.append(e);
      e.detail.bytes = 1;
      e.actor.displayName = "changed";
      const [got] = await all();
      expect(got?.detail.bytes).toBe(10240);
      expect(got?.actor.displayName).toBe("token-responder");
      if (got) got.client.address = "mutated";
      expect((await all())[0]?.client.address).toBe("10.0.0.7");
    });

    it("ignores an event id already recorded (a retried append), also from another instance", async () => {
      const e = testEvent();
      await log.append(e);
      await log.append({ ...e, action: "carve.delete" });
      const other = await another();
      await Promise.all([other.append(e), log.append(e), other.append(e)]);
      expect(await all()).toEqual([e]);
    });

    it("orders newest first, equal instants by id descending", async () => {
      const events = [
        testEvent({ id: "b-2", at: at(5) }),
        testEvent({ id: "a-1", at: at(5) }),
        testEvent({ id: "c-3", at: at(5) }),
        testEvent({ id: "z-9", at: at(1) }),
        testEvent({ id: "a-0", at: at(9) }),
      ];
      for (const e of events) await log.append(e);
      expect(ids(await all())).toEqual(["a-0", "c-3", "b-2", "a-1", "z-9"]);
    });

    it("filters by carve, action and time (since inclusive, until exclusive)", async () => {
      const carve = randomUUID();
      const events = [
        testEvent({ carveId: carve, action: "carve.read", at: at(10) }),
        testEvent({ carveId: carve, action: "carve.download", at: at(20) }),
        testEvent({ carveId: carve, action: "carve.read", at: at(30) }),
        testEvent({ action: "carve.read", at: at(20) }),
        testEvent({ carveId: null, action: "audit.read", at: at(25) }),
      ];
      for (const e of events) await log.append(e);
      const pick = (...is: number[]): string[] => is.map((i) => events[i]?.id as string);
      expect(ids(await all({ carveId: carve }))).toEqual(pick(2, 1, 0));
      expect(ids(await all({ action: "carve.read" }))).toEqual(pick(2, 3, 0));
      expect(ids(await all({ carveId: carve, action: "carve.read" }))).toEqual(pick(2, 0));
      expect(ids(await all({ since: at(25) }))).toEqual(pick(2, 4));
      expect(ids(await all({ until: at(20) }))).toEqual(pick(0));
      expect(ids(await all({ since: at(20), until: at(30), action: "audit.read" }))).toEqual(pick(4));
      expect(await all({ carveId: randomUUID() })).toEqual([]);
      expect(await all({ action: "no.such.action" })).toEqual([]);
    });

    it("pages over equal instants without losing or repeating an event", async () => {
      const events: AuditEvent[] = [];
      const carve = randomUUID();
      for (let i = 0; i < 23; i++) {
        const e = testEvent({ at: at(Math.floor(i / 4)), carveId: i % 2 ? carve : null, action: i % 3 ? "carve.read" : "carve.list" });
        events.push(e);
        await log.append(e);
      }
      const check = async (q: Omit<AuditQuery, "limit" | "cursor">, limit: number): Promise<void> => {
        const expected = ids(
          events
            .filter((e) => (q.carveId === undefined || e.carveId === q.carveId) && (q.action === undefined || e.action === q.action))
            .filter((e) => (!q.since || e.at >= q.since) && (!q.until || e.at < q.until))
            .sort(newestFirst),
        );
        const seen: string[] = [];
        let cursor: string | undefined;
        let pages = 0;
        do {
          const page = await log.query({ ...q, limit, ...(cursor ? { cursor } : {}) });
          expect(page.events.length).toBeLessThanOrEqual(limit);
          seen.push(...ids(page.events));
          cursor = page.nextCursor ?? undefined;
          pages++;
        } while (cursor && pages < 100);
        expect(seen, JSON.stringify({ q, limit })).toEqual(expected);
        expect(pages).toBe(Math.max(1, Math.ceil(expected.length / limit)));
      };
      for (const limit of [1, 3, 4, 23]) await check({}, limit);
      await check({ carveId: carve }, 2);
      await check({ action: "carve.read" }, 3);
      await check({ since: at(1), until: at(4) }, 2);
    });

    it("shows one instance's appends to another", async () => {
      const other = await another();
      const e = testEvent();
      await other.append(e);
      expect(await all()).toEqual([e]);
    });

    it("raises INVALID_QUERY for a cursor it did not make", async () => {
      await log.append(testEvent());
      const b64 = (s: string): string => Buffer.from(s).toString("base64url");
      for (const cursor of ["!!!", b64("{"), b64("null"), b64('{"t":"x","id":"y"}'), b64('{"t":1e400,"id":"x"}'), b64('{"id":"x"}')]) {
        await expectCode(log.query({ limit: 5, cursor }), "INVALID_QUERY");
      }
    });

    it("fails once closed, while another instance carries on", async () => {
      const e = testEvent();
      await log.append(e);
      const other = await another();
      opened.splice(opened.indexOf(log), 1);
      await log.close();
      await expectCode(log.append(testEvent()), "STORAGE_UNAVAILABLE");
      await expectCode(log.query({ limit: 1 }), "STORAGE_UNAVAILABLE");
      expect((await other.query({ limit: 5 })).events).toEqual([e]);
    });
  });
}
