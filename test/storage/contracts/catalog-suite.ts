/**
 * The CarveCatalog conformance suite (src/storage/contracts.ts). Every catalog runs all of it: a case that does
 * not hold for one implementation is a bug in that implementation, never a reason to skip.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AppError, type ErrorCode } from "../../../src/errors.js";
import type { CarveCatalog, CatalogEntry, EntryCondition, EntryState } from "../../../src/storage/contracts.js";
import { MAX_VERIFICATIONS_KEPT, type Verification } from "../../../src/storage/model.js";

export interface CatalogHarness {
  /** A new catalog instance (its own connection) over this harness's storage: every call sees the same data. */
  open(): Promise<CarveCatalog>;
  /** Removes the storage; every catalog the suite opened is closed by then. */
  cleanup(): Promise<void>;
}

export async function expectCode(promise: Promise<unknown>, code: ErrorCode): Promise<void> {
  const err = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err, `expected ${code}`).toBeInstanceOf(AppError);
  expect((err as AppError).code).toBe(code);
}

const T0 = Date.parse("2026-06-01T00:00:00.000Z");
const at = (seconds: number): Date => new Date(T0 + seconds * 1000);
const nodeHash = (key: string): string => createHash("sha256").update(key).digest("hex");

export function testEntry(over: Partial<CatalogEntry> = {}): CatalogEntry {
  const createdAt = over.createdAt ?? at(0);
  return {
    carveId: randomUUID(),
    sessionId: randomBytes(16).toString("hex"),
    requestId: randomUUID(),
    nodeKeySha256: nodeHash("node-1"),
    blockCount: 3,
    blockSize: 1024,
    carveSize: 3000,
    agent: {
      address: "10.0.0.1",
      userAgent: "osquery/5.23.0",
      certificate: { subjectDn: "CN=agent-1,O=Example", fingerprintSha256: "AB:CD:EF:01", source: "proxy" },
    },
    createdAt,
    state: "receiving",
    stateSince: createdAt,
    claim: null,
    completedAt: null,
    sha256: null,
    compression: null,
    hold: null,
    origin: "agent",
    imported: null,
    verifications: [],
    ...over,
  };
}

function completeEntry(over: Partial<CatalogEntry> = {}): CatalogEntry {
  const completedAt = over.completedAt ?? at(10);
  return testEntry({
    state: "complete",
    stateSince: completedAt,
    completedAt,
    sha256: "a".repeat(64),
    compression: "none",
    ...over,
  });
}

function verification(i: number): Verification {
  return { claimedSha256: i.toString(16).padStart(64, "0"), match: i % 2 === 0, by: i % 3 === 0 ? null : `responder-${i}`, at: at(100 + i) };
}

export function catalogConformance(name: string, makeHarness: () => Promise<CatalogHarness>): void {
  describe(`CarveCatalog conformance: ${name}`, () => {
    let harness: CatalogHarness;
    let catalog: CarveCatalog;
    const opened: CarveCatalog[] = [];

    /** Another instance on the same storage, as a second service process would have. */
    const another = async (): Promise<CarveCatalog> => {
      const c = await harness.open();
      opened.push(c);
      return c;
    };

    beforeEach(async () => {
      harness = await makeHarness();
      catalog = await another();
    });
    afterEach(async () => {
      for (const c of opened.splice(0)) await c.close();
      await harness.cleanup();
    });

    it("names its kind", () => {
      expect(typeof catalog.kind).toBe("string");
      expect(catalog.kind.length).toBeGreaterThan(0);
    });

    describe("create, get, getBySession", () => {
      it("stores every field of an entry and hands it back unchanged", async () => {
        const full = completeEntry({
          nodeKeySha256: nodeHash("node-full"),
          hold: { by: "Jane Responder", reason: "case IR-1", at: at(20) },
          origin: "import",
          imported: {
            host: "ws-1",
            originalPath: "/tmp/evidence.tar",
            description: "by hand",
            importedBy: { displayName: "token-a", entityId: "ent-1" },
          },
          verifications: [verification(1), verification(2)],
          compression: "zstd",
          claim: null,
        });
        const created = await catalog.create(full);
        expect(created.created).toBe(true);
        expect(created.entry).toEqual(full);
        expect(await catalog.get(full.carveId)).toEqual(full);
        expect(await catalog.getBySession(full.sessionId)).toEqual(full);
        expect((await catalog.get(full.carveId))?.createdAt).toBeInstanceOf(Date);
      });

      it("keeps null node keys, certificates and optional facts as null", async () => {
        const bare = testEntry({
          nodeKeySha256: null,
          agent: { address: null, userAgent: null, certificate: null },
          claim: "a-claim-token",
          state: "completing",
        });
        await catalog.create(bare);
        expect(await catalog.get(bare.carveId)).toEqual(bare);
      });

      it("never shares mutable parts with the caller", async () => {
        const e = completeEntry({ verifications: [verification(1)], hold: { by: "x", reason: "y", at: at(1) } });
        const { entry } = await catalog.create(e);
        entry.agent.address = "changed";
        (entry.verifications[0] as Verification).match = !e.verifications[0]?.match;
        e.agent.userAgent = "changed too";
        const got = await catalog.get(e.carveId);
        expect(got?.agent.address).toBe("10.0.0.1");
        expect(got?.agent.userAgent).toBe("osquery/5.23.0");
        expect(got?.verifications[0]?.match).toBe(verification(1).match);
        if (got?.hold) got.hold.reason = "mutated";
        expect((await catalog.get(e.carveId))?.hold?.reason).toBe("y");
      });

      it("returns null for a carve id or a session id it does not hold", async () => {
        expect(await catalog.get(randomUUID())).toBeNull();
        expect(await catalog.getBySession(randomBytes(16).toString("hex"))).toBeNull();
      });

      it("returns the existing entry, writing nothing, when the carve id is taken", async () => {
        const first = testEntry();
        await catalog.create(first);
        const again = await catalog.create(testEntry({ carveId: first.carveId, requestId: "other" }));
        expect(again.created).toBe(false);
        expect(again.entry).toEqual(first);
        const second = testEntry({ carveId: first.carveId });
        expect((await catalog.create(second)).entry.sessionId).toBe(first.sessionId);
        expect(await catalog.getBySession(second.sessionId)).toBeNull();
      });

      it("returns the existing entry in any state, invisible ones included", async () => {
        for (const state of ["deleting", "importing", "completing", "complete"] as const) {
          const e = testEntry({ state });
          await catalog.create(e);
          const again = await catalog.create(testEntry({ carveId: e.carveId }));
          expect(again).toEqual({ entry: e, created: false });
        }
      });

      it("raises CARVE_ID_CONFLICT when another carve owns the session id, and writes nothing", async () => {
        const first = testEntry();
        await catalog.create(first);
        const intruder = testEntry({ sessionId: first.sessionId });
        await expectCode(catalog.create(intruder), "CARVE_ID_CONFLICT");
        expect(await catalog.get(intruder.carveId)).toBeNull();
        expect(await catalog.getBySession(first.sessionId)).toEqual(first);
      });

      it("lets exactly one of 20 concurrent creates of one carve id win, across instances", async () => {
        const other = await another();
        const carveId = randomUUID();
        const attempts = Array.from({ length: 20 }, () => testEntry({ carveId }));
        const results = await Promise.all(attempts.map((e, i) => (i % 2 ? other : catalog).create(e)));
        expect(results.filter((r) => r.created)).toHaveLength(1);
        const winner = results.find((r) => r.created)?.entry;
        for (const r of results) expect(r.entry).toEqual(winner);
        const owners = await Promise.all(attempts.map((e) => catalog.getBySession(e.sessionId)));
        expect(owners.filter((o) => o !== null)).toHaveLength(1);
        expect(await catalog.count()).toEqual({ receiving: 1, complete: 0 });
      });

      it("lets exactly one of many concurrent carves claim one session id", async () => {
        const other = await another();
        const sessionId = randomBytes(16).toString("hex");
        const attempts = Array.from({ length: 10 }, () => testEntry({ sessionId }));
        const results = await Promise.allSettled(attempts.map((e, i) => (i % 2 ? other : catalog).create(e)));
        expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
        for (const r of results) {
          if (r.status === "rejected") expect((r.reason as AppError).code).toBe("CARVE_ID_CONFLICT");
        }
        const stored = await Promise.all(attempts.map((e) => catalog.get(e.carveId)));
        expect(stored.filter((s) => s !== null)).toHaveLength(1);
      });

      it("finds an entry by session in any state", async () => {
        const e = testEntry({ state: "deleting" });
        await catalog.create(e);
        expect(await catalog.getBySession(e.sessionId)).toEqual(e);
      });

      it("shows one instance's writes to another instance on the same storage", async () => {
        const other = await another();
        const e = testEntry();
        await catalog.create(e);
        expect(await other.get(e.carveId)).toEqual(e);
        expect(await other.getBySession(e.sessionId)).toEqual(e);
        const updated = await other.update(e.carveId, {}, { state: "completing", claim: "tok" });
        expect(await catalog.get(e.carveId)).toEqual(updated);
        expect((await catalog.list({ limit: 10 })).entries.map((x) => x.carveId)).toEqual([e.carveId]);
        expect(await other.remove(e.carveId, {})).toBe(true);
        expect(await catalog.get(e.carveId)).toBeNull();
      });
    });

    describe("update", () => {
      it("applies a patch and returns the entry after it", async () => {
        const e = testEntry();
        await catalog.create(e);
        const after = await catalog.update(
          e.carveId,
          { states: ["receiving"] },
          {
            state: "complete",
            stateSince: at(50),
            claim: null,
            completedAt: at(50),
            sha256: "b".repeat(64),
            compression: "zstd",
            blockCount: 1,
            blockSize: 4096,
            carveSize: 4096,
          },
        );
        const expected: CatalogEntry = {
          ...e,
          state: "complete",
          stateSince: at(50),
          completedAt: at(50),
          sha256: "b".repeat(64),
          compression: "zstd",
          blockCount: 1,
          blockSize: 4096,
          carveSize: 4096,
        };
        expect(after).toEqual(expected);
        expect(await catalog.get(e.carveId)).toEqual(expected);
      });

      it("sets and lifts a hold, and an empty patch changes nothing", async () => {
        const e = completeEntry();
        await catalog.create(e);
        const hold = { by: "Jane", reason: "case 7", at: at(30) };
        expect(await catalog.update(e.carveId, {}, { hold })).toEqual({ ...e, hold });
        expect(await catalog.update(e.carveId, {}, {})).toEqual({ ...e, hold });
        expect(await catalog.update(e.carveId, {}, { hold: null })).toEqual(e);
      });

      it("returns null for a carve it does not hold", async () => {
        expect(await catalog.update(randomUUID(), {}, { state: "complete" })).toBeNull();
      });

      const cases: Array<{ what: string; entry: Partial<CatalogEntry>; holds: EntryCondition[]; fails: EntryCondition[] }> = [
        {
          what: "states",
          entry: { state: "completing" },
          holds: [{ states: ["completing"] }, { states: ["receiving", "completing"] }],
          fails: [{ states: ["receiving"] }, { states: [] }, { states: ["complete", "deleting", "importing"] }],
        },
        {
          what: "sessionId",
          entry: { sessionId: "sess-cond-1" },
          holds: [{ sessionId: "sess-cond-1" }],
          fails: [{ sessionId: "sess-cond-2" }],
        },
        {
          what: "claim",
          entry: { state: "completing", claim: "token-1" },
          holds: [{ claim: "token-1" }],
          fails: [{ claim: "token-2" }, { claim: null }],
        },
        { what: "claim null", entry: { claim: null }, holds: [{ claim: null }], fails: [{ claim: "token-1" }] },
        {
          what: "stateSinceBefore (strictly)",
          entry: { stateSince: at(40) },
          holds: [{ stateSinceBefore: new Date(at(40).getTime() + 1) }],
          fails: [{ stateSinceBefore: at(40) }, { stateSinceBefore: at(39) }],
        },
        {
          what: "stateSince (exactly)",
          entry: { stateSince: at(40) },
          holds: [{ stateSince: at(40) }],
          fails: [{ stateSince: new Date(at(40).getTime() + 1) }, { stateSince: new Date(at(40).getTime() - 1) }],
        },
        {
          what: "unheld",
          entry: { hold: { by: "a", reason: "b", at: at(1) } },
          holds: [{ unheld: false }, {}],
          fails: [{ unheld: true }],
        },
        {
          what: "completedBefore (strictly)",
          entry: { state: "complete", completedAt: at(60) },
          holds: [{ completedBefore: at(61) }],
          fails: [{ completedBefore: at(60) }, { completedBefore: at(59) }],
        },
        {
          what: "completedBefore with no completion",
          entry: { completedAt: null },
          holds: [],
          fails: [{ completedBefore: at(1_000_000) }],
        },
        {
          what: "every field at once",
          entry: { state: "deleting", claim: "d1", stateSince: at(5) },
          holds: [{ states: ["deleting"], claim: "d1", stateSinceBefore: at(6), stateSince: at(5), unheld: true }],
          fails: [
            { states: ["deleting"], claim: "d1", stateSinceBefore: at(5) },
            { states: ["deleting"], claim: "d2", stateSinceBefore: at(6) },
            { states: ["complete"], claim: "d1", stateSinceBefore: at(6) },
          ],
        },
      ];
      for (const c of cases) {
        it(`updates only when the condition holds: ${c.what}`, async () => {
          const e = testEntry(c.entry);
          await catalog.create(e);
          for (const condition of c.fails) {
            expect(await catalog.update(e.carveId, condition, { sha256: "c".repeat(64) }), JSON.stringify(condition)).toBeNull();
            expect(await catalog.get(e.carveId)).toEqual(e);
            expect(await catalog.remove(e.carveId, condition), JSON.stringify(condition)).toBe(false);
            expect(await catalog.get(e.carveId)).toEqual(e);
          }
          let current = e;
          for (const [i, condition] of c.holds.entries()) {
            const sha256 = String(i).repeat(64);
            const after = await catalog.update(e.carveId, condition, { sha256 });
            current = { ...e, sha256 };
            expect(after, JSON.stringify(condition)).toEqual(current);
          }
          expect(await catalog.get(e.carveId)).toEqual(current);
          if (c.holds[0]) expect(await catalog.remove(e.carveId, c.holds[0])).toBe(true);
        });
      }

      it("lets exactly one of racing conditional updates win, across instances", async () => {
        const other = await another();
        const e = testEntry();
        await catalog.create(e);
        const tokens = Array.from({ length: 20 }, (_, i) => `claim-${i}`);
        const results = await Promise.all(
          tokens.map((claim, i) =>
            (i % 2 ? other : catalog).update(
              e.carveId,
              { states: ["receiving"], claim: null },
              { state: "completing", claim, stateSince: at(i + 1) },
            ),
          ),
        );
        const winners = results.filter((r) => r !== null);
        expect(winners).toHaveLength(1);
        expect(await catalog.get(e.carveId)).toEqual(winners[0]);
      });

      it("takes over a stale claim once when takeovers race on stateSince", async () => {
        const e = testEntry({ state: "completing", claim: "dead", stateSince: at(3) });
        await catalog.create(e);
        const other = await another();
        const results = await Promise.all(
          Array.from({ length: 10 }, (_, i) =>
            (i % 2 ? other : catalog).update(
              e.carveId,
              { states: ["completing"], stateSince: at(3), stateSinceBefore: at(100) },
              { claim: `new-${i}`, stateSince: at(200 + i) },
            ),
          ),
        );
        expect(results.filter((r) => r !== null)).toHaveLength(1);
      });

      it("appends verifications, keeping the newest MAX_VERIFICATIONS_KEPT", async () => {
        const e = completeEntry();
        await catalog.create(e);
        const first = await catalog.update(e.carveId, {}, { addVerification: verification(0) });
        expect(first?.verifications).toEqual([verification(0)]);
        const full = completeEntry({
          verifications: Array.from({ length: MAX_VERIFICATIONS_KEPT }, (_, i) => verification(i)),
        });
        await catalog.create(full);
        let last: CatalogEntry | null = null;
        for (let i = MAX_VERIFICATIONS_KEPT; i < MAX_VERIFICATIONS_KEPT + 3; i++) {
          last = await catalog.update(full.carveId, { states: ["complete"] }, { addVerification: verification(i) });
        }
        const expected = Array.from({ length: MAX_VERIFICATIONS_KEPT }, (_, i) => verification(i + 3));
        expect(last?.verifications).toEqual(expected);
        expect((await catalog.get(full.carveId))?.verifications).toEqual(expected);
      });

      it("adds a verification with other fields in one patch, and none when the condition fails", async () => {
        const e = completeEntry();
        await catalog.create(e);
        const hold = { by: "h", reason: "r", at: at(70) };
        expect(await catalog.update(e.carveId, {}, { hold, addVerification: verification(5) })).toEqual({
          ...e,
          hold,
          verifications: [verification(5)],
        });
        expect(await catalog.update(e.carveId, { unheld: true }, { addVerification: verification(6) })).toBeNull();
        expect((await catalog.get(e.carveId))?.verifications).toEqual([verification(5)]);
      });

      it("keeps concurrent verifications of one carve, none lost", async () => {
        const e = completeEntry();
        await catalog.create(e);
        const other = await another();
        await Promise.all(
          Array.from({ length: 10 }, (_, i) => (i % 2 ? other : catalog).update(e.carveId, {}, { addVerification: verification(i) })),
        );
        const kept = (await catalog.get(e.carveId))?.verifications ?? [];
        expect(kept.map((v) => v.claimedSha256).sort()).toEqual(Array.from({ length: 10 }, (_, i) => verification(i).claimedSha256).sort());
      });
    });

    describe("remove", () => {
      it("removes an entry and frees its carve id and session id", async () => {
        const e = completeEntry();
        await catalog.create(e);
        expect(await catalog.remove(e.carveId, { states: ["complete"], unheld: true })).toBe(true);
        expect(await catalog.get(e.carveId)).toBeNull();
        expect(await catalog.getBySession(e.sessionId)).toBeNull();
        expect(await catalog.remove(e.carveId, {})).toBe(false);
        expect((await catalog.create(testEntry({ sessionId: e.sessionId }))).created).toBe(true);
        expect((await catalog.create(testEntry({ carveId: e.carveId }))).created).toBe(true);
      });

      it("keeps a held entry when unheld is asked", async () => {
        const e = completeEntry({ hold: { by: "a", reason: "b", at: at(1) } });
        await catalog.create(e);
        expect(await catalog.remove(e.carveId, { unheld: true })).toBe(false);
        expect(await catalog.get(e.carveId)).toEqual(e);
      });

      it("returns false for a carve it does not hold", async () => {
        expect(await catalog.remove(randomUUID(), {})).toBe(false);
      });

      it("lets exactly one of racing removals succeed", async () => {
        const other = await another();
        const e = testEntry({ state: "deleting", claim: "d" });
        await catalog.create(e);
        const results = await Promise.all(
          Array.from({ length: 10 }, (_, i) => (i % 2 ? other : catalog).remove(e.carveId, { states: ["deleting"] })),
        );
        expect(results.filter(Boolean)).toHaveLength(1);
      });
    });

    describe("list", () => {
      const ids = (entries: CatalogEntry[]): string[] => entries.map((e) => e.carveId);

      it("lists visible entries only, newest first, ties by carve id ascending", async () => {
        const made: CatalogEntry[] = [];
        const states: EntryState[] = ["receiving", "completing", "complete", "importing", "deleting"];
        for (const [i, state] of states.entries()) {
          for (const suffix of ["b", "a", "c"]) {
            const e = testEntry({ carveId: `${i}-${suffix}-${randomUUID()}`, state, createdAt: at(i) });
            made.push(e);
            await catalog.create(e);
          }
        }
        const page = await catalog.list({ limit: 100 });
        const visible = made
          .filter((e) => e.state !== "importing" && e.state !== "deleting")
          .sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime() || (a.carveId < b.carveId ? -1 : 1));
        expect(ids(page.entries)).toEqual(ids(visible));
        expect(page.nextCursor).toBeNull();
        expect(page.entries).toEqual(visible);
      });

      it("filters by status: receiving includes completing", async () => {
        const r = testEntry({ state: "receiving", createdAt: at(3) });
        const c = testEntry({ state: "completing", createdAt: at(2) });
        const done = completeEntry({ createdAt: at(1) });
        for (const e of [r, c, done, testEntry({ state: "deleting" }), testEntry({ state: "importing" })]) await catalog.create(e);
        expect(ids((await catalog.list({ limit: 10, status: "receiving" })).entries)).toEqual([r.carveId, c.carveId]);
        expect(ids((await catalog.list({ limit: 10, status: "complete" })).entries)).toEqual([done.carveId]);
      });

      it("pages over equal timestamps without losing or repeating an entry", async () => {
        const made: CatalogEntry[] = [];
        for (let i = 0; i < 23; i++) {
          const e = testEntry({ createdAt: at(Math.floor(i / 5)), state: i % 4 === 0 ? "complete" : "receiving" });
          made.push(e);
          await catalog.create(e);
        }
        const expected = ids(made.sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime() || (a.carveId < b.carveId ? -1 : 1)));
        for (const limit of [1, 3, 5, 7, 23]) {
          const seen: string[] = [];
          let cursor: string | undefined;
          let pages = 0;
          do {
            const page = await catalog.list({ limit, ...(cursor ? { cursor } : {}) });
            expect(page.entries.length).toBeLessThanOrEqual(limit);
            seen.push(...ids(page.entries));
            cursor = page.nextCursor ?? undefined;
            pages++;
          } while (cursor && pages < 100);
          expect(seen, `limit ${limit}`).toEqual(expected);
          expect(pages).toBe(Math.ceil(expected.length / limit));
        }
      });

      it("gives no cursor on a last page that is exactly full", async () => {
        for (let i = 0; i < 6; i++) await catalog.create(testEntry({ createdAt: at(i) }));
        const first = await catalog.list({ limit: 3 });
        expect(first.nextCursor).not.toBeNull();
        const second = await catalog.list({ limit: 3, cursor: first.nextCursor as string });
        expect(second.entries).toHaveLength(3);
        expect(second.nextCursor).toBeNull();
      });

      it("keeps paging right when entries come and go between pages", async () => {
        const made: CatalogEntry[] = [];
        for (let i = 0; i < 6; i++) {
          const e = testEntry({ createdAt: at(10 - i) });
          made.push(e);
          await catalog.create(e);
        }
        const first = await catalog.list({ limit: 2 });
        expect(ids(first.entries)).toEqual(ids(made.slice(0, 2)));
        await catalog.create(testEntry({ createdAt: at(100) })); // newer than the cursor: not in later pages
        await catalog.remove(made[1]?.carveId as string, {}); // the cursor's own entry
        await catalog.remove(made[2]?.carveId as string, {});
        const rest = await catalog.list({ limit: 10, cursor: first.nextCursor as string });
        expect(ids(rest.entries)).toEqual(ids(made.slice(3)));
      });

      it("filters by node key prefix as a range of hex digits", async () => {
        const key = (head: string): string => head + "0".repeat(64 - head.length);
        const ab0 = testEntry({ nodeKeySha256: key("ab"), createdAt: at(1) });
        const abf = testEntry({ nodeKeySha256: "ab" + "f".repeat(62), createdAt: at(2) });
        const ac = testEntry({ nodeKeySha256: key("ac"), createdAt: at(3) });
        const aa = testEntry({ nodeKeySha256: "aa" + "f".repeat(62), createdAt: at(4) });
        const none = testEntry({ nodeKeySha256: null, createdAt: at(5) });
        const hidden = testEntry({ nodeKeySha256: key("ab"), state: "deleting", createdAt: at(6) });
        for (const e of [ab0, abf, ac, aa, none, hidden]) await catalog.create(e);
        const list = async (prefix: string): Promise<string[]> => ids((await catalog.list({ limit: 10, nodeSha256Prefix: prefix })).entries);
        expect(await list("ab")).toEqual([abf.carveId, ab0.carveId]);
        expect(await list("a")).toEqual([aa.carveId, ac.carveId, abf.carveId, ab0.carveId]);
        expect(await list("abf")).toEqual([abf.carveId]);
        expect(await list(key("ab"))).toEqual([ab0.carveId]);
        expect(await list("ad")).toEqual([]);
        expect(await list("f")).toEqual([]);
      });

      it("filters by creation time: since inclusive, until exclusive", async () => {
        const made: CatalogEntry[] = [];
        for (let i = 0; i < 5; i++) {
          const e = testEntry({ createdAt: at(i * 10) });
          made.push(e);
          await catalog.create(e);
        }
        const list = async (q: { since?: Date; until?: Date }): Promise<string[]> => ids((await catalog.list({ limit: 10, ...q })).entries);
        const id = (i: number): string => made[i]?.carveId as string;
        expect(await list({ since: at(20) })).toEqual([id(4), id(3), id(2)]);
        expect(await list({ until: at(20) })).toEqual([id(1), id(0)]);
        expect(await list({ since: at(10), until: at(30) })).toEqual([id(2), id(1)]);
        expect(await list({ since: new Date(at(20).getTime() + 1), until: at(40) })).toEqual([id(3)]);
        expect(await list({ since: at(30), until: at(30) })).toEqual([]);
      });

      it("pages through every filter at once", async () => {
        const node = nodeHash("node-filtered");
        const want: CatalogEntry[] = [];
        for (let i = 0; i < 30; i++) {
          const matching = i % 3 === 0;
          const e = matching
            ? completeEntry({ nodeKeySha256: node, createdAt: at(Math.floor(i / 6)) })
            : testEntry({ nodeKeySha256: i % 2 ? node : nodeHash("other"), createdAt: at(Math.floor(i / 6)) });
          if (matching && e.createdAt >= at(1) && e.createdAt < at(4)) want.push(e);
          await catalog.create(e);
        }
        want.sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime() || (a.carveId < b.carveId ? -1 : 1));
        const seen: string[] = [];
        let cursor: string | undefined;
        for (let pages = 0; pages < 20; pages++) {
          const page = await catalog.list({
            limit: 2,
            status: "complete",
            nodeSha256Prefix: node.slice(0, 6),
            since: at(1),
            until: at(4),
            ...(cursor ? { cursor } : {}),
          });
          seen.push(...ids(page.entries));
          if (!page.nextCursor) break;
          cursor = page.nextCursor;
        }
        expect(want.length).toBeGreaterThan(2);
        expect(seen).toEqual(ids(want));
      });

      it("raises INVALID_QUERY for a cursor it did not make", async () => {
        await catalog.create(testEntry());
        const b64 = (s: string): string => Buffer.from(s).toString("base64url");
        for (const cursor of ["!!!", "not-a-cursor", b64("{"), b64("[]"), b64('{"t":"1","id":"x"}'), b64('{"t":1e400,"id":"x"}'), b64('{"t":1}')]) {
          await expectCode(catalog.list({ limit: 10, cursor }), "INVALID_QUERY");
        }
      });
    });

    describe("sweep", () => {
      const criteria = { completedBefore: at(100), idleBefore: at(200), staleDeleteBefore: at(300) };
      const ids = (entries: CatalogEntry[]): string[] => entries.map((e) => e.carveId);

      it("finds complete, unheld entries completed before the limit, oldest completion first", async () => {
        const old2 = completeEntry({ completedAt: at(50), createdAt: at(1) });
        const old1 = completeEntry({ completedAt: at(10), createdAt: at(2) });
        const edge = completeEntry({ completedAt: at(100) });
        const held = completeEntry({ completedAt: at(5), hold: { by: "a", reason: "b", at: at(6) } });
        const receiving = testEntry({ createdAt: at(1) });
        for (const e of [old2, old1, edge, held, receiving]) await catalog.create(e);
        const sweep = await catalog.sweep(criteria, 10);
        expect(ids(sweep.retention)).toEqual([old1.carveId, old2.carveId]);
        expect(sweep.retention[0]).toEqual(old1);
      });

      it("finds receiving, unheld entries created before the idle limit, oldest first", async () => {
        const idle2 = testEntry({ createdAt: at(150) });
        const idle1 = testEntry({ createdAt: at(20) });
        const edge = testEntry({ createdAt: at(200) });
        const held = testEntry({ createdAt: at(1), hold: { by: "a", reason: "b", at: at(2) } });
        const completing = testEntry({ createdAt: at(1), state: "completing", stateSince: at(300), claim: "c" });
        for (const e of [idle2, idle1, edge, held, completing]) await catalog.create(e);
        const sweep = await catalog.sweep(criteria, 10);
        expect(ids(sweep.idle)).toEqual([idle1.carveId, idle2.carveId]);
        expect(sweep.stale).toEqual([]);
      });

      it("finds deleting, importing and completing entries older than the stale limit, oldest first", async () => {
        const del = testEntry({ state: "deleting", stateSince: at(250), claim: "d" });
        const imp = testEntry({ state: "importing", stateSince: at(100), origin: "import" });
        const comp = testEntry({ state: "completing", stateSince: at(200), claim: "c", hold: { by: "a", reason: "b", at: at(1) } });
        const fresh = testEntry({ state: "deleting", stateSince: at(300), claim: "d" });
        const receiving = testEntry({ state: "receiving", stateSince: at(1), createdAt: at(250) });
        for (const e of [del, imp, comp, fresh, receiving]) await catalog.create(e);
        const sweep = await catalog.sweep(criteria, 10);
        expect(ids(sweep.stale)).toEqual([imp.carveId, comp.carveId, del.carveId]);
        expect(sweep.retention).toEqual([]);
        expect(sweep.idle).toEqual([]);
      });

      it("returns at most `limit` entries of each kind", async () => {
        for (let i = 0; i < 5; i++) {
          await catalog.create(completeEntry({ completedAt: at(i) }));
          await catalog.create(testEntry({ createdAt: at(i) }));
          await catalog.create(testEntry({ state: "deleting", stateSince: at(i) }));
        }
        const sweep = await catalog.sweep(criteria, 3);
        expect(sweep.retention).toHaveLength(3);
        expect(sweep.idle).toHaveLength(3);
        expect(sweep.stale).toHaveLength(3);
        expect(sweep.retention.map((e) => e.completedAt)).toEqual([at(0), at(1), at(2)]);
        expect(sweep.idle.map((e) => e.createdAt)).toEqual([at(0), at(1), at(2)]);
        expect(sweep.stale.map((e) => e.stateSince)).toEqual([at(0), at(1), at(2)]);
      });
    });

    describe("count", () => {
      it("counts visible entries by status, following every change", async () => {
        expect(await catalog.count()).toEqual({ receiving: 0, complete: 0 });
        const r = testEntry();
        const c = testEntry({ state: "completing", claim: "x" });
        const done = completeEntry();
        for (const e of [r, c, done, testEntry({ state: "deleting" }), testEntry({ state: "importing" })]) await catalog.create(e);
        await catalog.create(testEntry({ carveId: r.carveId })); // not created
        expect(await catalog.count()).toEqual({ receiving: 2, complete: 1 });
        await catalog.update(c.carveId, {}, { state: "complete", claim: null });
        expect(await catalog.count()).toEqual({ receiving: 1, complete: 2 });
        await catalog.update(done.carveId, {}, { state: "deleting" });
        expect(await catalog.count()).toEqual({ receiving: 1, complete: 1 });
        await catalog.update(r.carveId, { states: ["complete"] }, { state: "deleting" }); // condition fails
        await catalog.remove(r.carveId, {});
        expect(await catalog.count()).toEqual({ receiving: 0, complete: 1 });
        expect(await (await another()).count()).toEqual({ receiving: 0, complete: 1 });
      });
    });

    describe("receivingLoad", () => {
      it("sums the receiving entries, and counts those of one agent by certificate, or by address without one", async () => {
        const cert = (fingerprintSha256: string) => ({ subjectDn: `CN=${fingerprintSha256}`, fingerprintSha256, source: "proxy" as const });
        const agent = (address: string | null, fingerprint?: string) => ({ address, userAgent: "osquery/5.23.0", certificate: fingerprint ? cert(fingerprint) : null });
        const load = (a: ReturnType<typeof agent>, c: CarveCatalog = catalog) => c.receivingLoad(a);
        expect(await load(agent("10.0.0.1", "AA:01"))).toEqual({ carves: 0, fromAgent: 0, declaredBytes: 0 });
        const a1 = testEntry({ agent: agent("10.0.0.1", "AA:01"), carveSize: 1 });
        const rows = [
          a1,
          testEntry({ agent: agent("10.0.0.9", "AA:01"), carveSize: 2, state: "completing", claim: "x" }), // same certificate, another address
          testEntry({ agent: agent("10.0.0.1", "BB:02"), carveSize: 4 }), // same address, another certificate
          testEntry({ agent: agent("10.0.0.1"), carveSize: 8 }),
          testEntry({ agent: agent("10.0.0.2"), carveSize: 16 }),
          testEntry({ agent: agent(null), carveSize: 32 }),
          completeEntry({ agent: agent("10.0.0.1", "AA:01"), carveSize: 64 }),
          testEntry({ agent: agent("10.0.0.1", "AA:01"), carveSize: 128, state: "deleting" }),
          testEntry({ agent: agent("10.0.0.1"), carveSize: 256, state: "importing" }),
        ];
        for (const e of rows) await catalog.create(e);
        expect(await load(agent("10.0.0.5", "AA:01"))).toEqual({ carves: 6, fromAgent: 2, declaredBytes: 63 });
        expect((await load(agent("10.0.0.1", "BB:02"))).fromAgent).toBe(1);
        expect((await load(agent("10.0.0.1", "CC:03"))).fromAgent).toBe(0);
        expect((await load(agent("10.0.0.1"))).fromAgent).toBe(1);
        expect((await load(agent(null))).fromAgent).toBe(1);
        expect((await load(agent("10.0.0.3"))).fromAgent).toBe(0);
        await catalog.update(a1.carveId, {}, { state: "complete", completedAt: at(5) });
        expect(await load(agent("10.0.0.1", "AA:01"), await another())).toEqual({ carves: 5, fromAgent: 1, declaredBytes: 62 });
      });
    });

    describe("health and close", () => {
      it("reports its health", async () => {
        const h = await catalog.health();
        expect(h.ok).toBe(true);
        expect(h.backend.length).toBeGreaterThan(0);
      });

      it("fails every call once closed, while another instance carries on", async () => {
        const e = testEntry();
        await catalog.create(e);
        const other = await another();
        opened.splice(opened.indexOf(catalog), 1);
        await catalog.close();
        await expectCode(catalog.create(testEntry()), "STORAGE_UNAVAILABLE");
        await expectCode(catalog.get(e.carveId), "STORAGE_UNAVAILABLE");
        await expectCode(catalog.getBySession(e.sessionId), "STORAGE_UNAVAILABLE");
        await expectCode(catalog.list({ limit: 1 }), "STORAGE_UNAVAILABLE");
        await expectCode(catalog.update(e.carveId, {}, {}), "STORAGE_UNAVAILABLE");
        await expectCode(catalog.remove(e.carveId, {}), "STORAGE_UNAVAILABLE");
        await expectCode(catalog.sweep({ completedBefore: at(1), idleBefore: at(1), staleDeleteBefore: at(1) }, 1), "STORAGE_UNAVAILABLE");
        await expectCode(catalog.count(), "STORAGE_UNAVAILABLE");
        await expectCode(catalog.receivingLoad(e.agent), "STORAGE_UNAVAILABLE");
        expect(await other.get(e.carveId)).toEqual(e);
      });
    });
  });
}
