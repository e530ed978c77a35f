import type { Document, Filter, IndexDescription, Sort } from "mongodb";
import type { EntryCondition, EntryState } from "../contracts.js";
import type { Cursor } from "../listing.js";
import type { AgentInfo, ExpiryCriteria, ListQuery } from "../model.js";
import type { CarveDoc } from "./carve-doc.js";

/*
 * Every query the MongoDB catalog sends, built here and nowhere else, next to the indexes that serve them:
 * test/storage/contracts/mongo.test.ts derives each query's filter and sort from these builders and checks
 * that an index in CATALOG_INDEXES bounds its scan (and gives its order where it must), so a new query
 * without an index fails a test rather than a fleet. (mongo-java-server, the test server, uses only unique
 * indexes, so only that static check can show it; the comments say what a real MongoDB plans.)
 */

export const VISIBLE: readonly EntryState[] = ["receiving", "completing", "complete"];
/** "completing" reads as receiving. */
export const RECEIVING: readonly EntryState[] = ["receiving", "completing"];
export const STALE: readonly EntryState[] = ["completing", "deleting", "importing"];

export const NODE_INDEX = "node_createdAt";

export const CATALOG_INDEXES: IndexDescription[] = [
  // getBySession, and the guarantee of one entry per session id across processes.
  { key: { sessionId: 1 }, name: "sessionId_unique", unique: true },
  // list without a node: the states asked for ($in of 1..3 points) are scanned newest first and merged
  // (SORT_MERGE), so a page reads about `limit` keys whatever the catalog holds; since/until/cursor bound
  // createdAt. Also the idle sweep (state = receiving, createdAt ascending: the same index backwards) and count.
  { key: { state: 1, createdAt: -1, _id: 1 }, name: "state_createdAt" },
  // list by node: the prefix is a range on the hash (8+ hex digits name one node), so only that node's
  // entries are read, then sorted in memory (top-k by limit). Hinted, so the plan cache cannot stick to
  // state_createdAt after a query for a node with many carves.
  { key: { nodeKeySha256: 1, createdAt: -1, _id: 1 }, name: NODE_INDEX },
  // retention: complete, unheld, oldest completion first; held carves are skipped by the bounds, not read.
  { key: { state: 1, hold: 1, completedAt: 1 }, name: "state_hold_completedAt" },
  // stale claims and unfinished deletes or imports: three states, each a range of stateSince.
  { key: { state: 1, stateSince: 1 }, name: "state_stateSince" },
];

export interface QueryShape {
  filter: Filter<CarveDoc>;
  sort?: Sort & Record<string, 1 | -1>;
  hint?: string;
}

export const NEWEST_FIRST = { createdAt: -1, _id: 1 } as const;

/** Hex digits of a node key hash prefix, lower case. The upper bound: no hex digit sorts after "g". */
function nodeRange(prefix: string): { $gte: string; $lt: string } {
  return { $gte: prefix, $lt: `${prefix}g` };
}

function statesOf(status: ListQuery["status"]): readonly EntryState[] {
  return status === "complete" ? ["complete"] : status === "receiving" ? RECEIVING : VISIBLE;
}

/** `query.nodeSha256Prefix` must already be validated lower-case hex. */
export function listShape(query: Omit<ListQuery, "limit" | "cursor">, after: Cursor | null): QueryShape {
  const filter: Filter<CarveDoc> = { state: { $in: [...statesOf(query.status)] } };
  const prefix = query.nodeSha256Prefix;
  if (prefix) filter.nodeKeySha256 = nodeRange(prefix);
  const created: { $gte?: Date; $lt?: Date; $lte?: Date } = {};
  if (query.since) created.$gte = query.since;
  if (query.until) created.$lt = query.until;
  if (after) {
    // (createdAt, _id) after the cursor: the $lte bounds the index scan, the $or only trims the tie.
    const t = new Date(after.t);
    created.$lte = t;
    filter.$or = [{ createdAt: { $lt: t } }, { _id: { $gt: after.id } }];
  }
  if (Object.keys(created).length > 0) filter.createdAt = created;
  return { filter, sort: NEWEST_FIRST, ...(prefix ? { hint: NODE_INDEX } : {}) };
}

export function sweepShapes(criteria: ExpiryCriteria): { retention: QueryShape; idle: QueryShape; stale: QueryShape } {
  return {
    retention: {
      filter: { state: "complete", hold: null, completedAt: { $lt: criteria.completedBefore } },
      sort: { completedAt: 1 },
    },
    idle: {
      filter: { state: "receiving", hold: null, createdAt: { $lt: criteria.idleBefore } },
      sort: { createdAt: 1 },
    },
    stale: {
      filter: { state: { $in: [...STALE] }, stateSince: { $lt: criteria.staleDeleteBefore } },
      sort: { stateSince: 1 },
    },
  };
}

export function countShapes(): { receiving: QueryShape; complete: QueryShape } {
  return { receiving: { filter: { state: { $in: [...RECEIVING] } } }, complete: { filter: { state: "complete" } } };
}

/**
 * receivingLoad: one aggregation over the receiving entries (state_createdAt bounds it to them, as for count),
 * counting those from the agent as src/storage/contracts.ts defines it.
 */
export function receivingLoadPipeline(agent: AgentInfo): { shape: QueryShape; pipeline: Document[] } {
  const fingerprint = agent.certificate?.fingerprintSha256 ?? null;
  const fromAgent =
    fingerprint !== null
      ? { $eq: ["$agent.certificate.fingerprintSha256", fingerprint] }
      : { $and: [{ $eq: [{ $ifNull: ["$agent.certificate", null] }, null] }, { $eq: [{ $ifNull: ["$agent.address", null] }, agent.address] }] };
  const shape: QueryShape = { filter: { state: { $in: [...RECEIVING] } } };
  const group = { _id: null, carves: { $sum: 1 }, declaredBytes: { $sum: "$carveSize" }, fromAgent: { $sum: { $cond: [fromAgent, 1, 0] } } };
  return { shape, pipeline: [{ $match: shape.filter }, { $group: group }] };
}

export function sessionShape(sessionId: string): QueryShape {
  return { filter: { sessionId } };
}

/** The filter of a conditional update or removal: the entry by _id, and every condition given. */
export function conditionShape(carveId: string, condition: EntryCondition): QueryShape {
  const filter: Filter<CarveDoc> = { _id: carveId };
  if (condition.states) filter.state = { $in: [...condition.states] };
  if (condition.sessionId !== undefined) filter.sessionId = condition.sessionId;
  if (condition.claim !== undefined) filter.claim = condition.claim;
  const since: { $lt?: Date; $eq?: Date } = {};
  if (condition.stateSinceBefore) since.$lt = condition.stateSinceBefore;
  if (condition.stateSince) since.$eq = condition.stateSince;
  if (Object.keys(since).length > 0) filter.stateSince = since;
  if (condition.unheld) filter.hold = null;
  if (condition.completedBefore) filter.completedAt = { $lt: condition.completedBefore };
  return { filter };
}

/** Every shape the catalog can send (each list filter combination once), for the index check. */
export function allCatalogShapes(): Array<{ name: string; shape: QueryShape }> {
  const t = new Date("2026-01-01T00:00:00Z");
  const out: Array<{ name: string; shape: QueryShape }> = [];
  for (const status of [undefined, "receiving", "complete"] as const) {
    for (const node of [false, true]) {
      for (const since of [false, true]) {
        for (const until of [false, true]) {
          for (const cursor of [false, true]) {
            const query: Omit<ListQuery, "limit"> = {
              ...(status ? { status } : {}),
              ...(node ? { nodeSha256Prefix: "0123abcd" } : {}),
              ...(since ? { since: t } : {}),
              ...(until ? { until: t } : {}),
            };
            const name = `list status=${status ?? "any"} node=${node} since=${since} until=${until} cursor=${cursor}`;
            out.push({ name, shape: listShape(query, cursor ? { t: t.getTime(), id: "x" } : null) });
          }
        }
      }
    }
  }
  const sweep = sweepShapes({ completedBefore: t, idleBefore: t, staleDeleteBefore: t });
  out.push({ name: "sweep retention", shape: sweep.retention });
  out.push({ name: "sweep idle", shape: sweep.idle });
  out.push({ name: "sweep stale", shape: sweep.stale });
  const counts = countShapes();
  out.push({ name: "count receiving", shape: counts.receiving });
  out.push({ name: "count complete", shape: counts.complete });
  out.push({ name: "receiving load", shape: receivingLoadPipeline({ address: "10.0.0.1", userAgent: null, certificate: null }).shape });
  out.push({ name: "get", shape: { filter: { _id: "c" } } });
  out.push({ name: "getBySession", shape: sessionShape("s") });
  out.push({
    name: "conditional update/remove",
    shape: conditionShape("c", { states: ["complete"], unheld: true, completedBefore: t, claim: null }),
  });
  return out;
}
