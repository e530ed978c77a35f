import type { Db } from "mongodb";
import type { Logger } from "../logger.js";

/**
 * Which MongoDB-compatible servers the GridFS store can trust, decided from the server's own replies to
 * `buildInfo` and `hello` at start-up.
 *
 * Exactly-once completion and the per-block counters rest on conditional updates that are atomic under
 * concurrency (`findOneAndUpdate` with a condition, claimed by exactly one caller). FerretDB v1 loses them:
 * 64 concurrent conditional updates of one document left a counter at 5, 10 concurrent claims had 4 winners
 * (tried with v1.24.2 on SQLite; /work/shared/docs/vault-and-friends.md in the project notes). On such a
 * server carves would be completed twice or never, so the service refuses to start on it.
 */
export interface MongoServerAssessment {
  /** Why the service must not run on this server; null when it may. */
  refusal: string | null;
  /** Things an operator should know (old version, no replica set). */
  warnings: string[];
  /** What the server says it is, for the start-up log. */
  description: string;
}

/** The lowest MongoDB release the store is written and documented for. */
export const MIN_MONGODB_MAJOR = 6;

type Reply = Record<string, unknown> | null | undefined;

/** Keys FerretDB adds to its replies ("our extensions": ferretdbVersion, ferretdbFeatures, ...). */
function ferretDbVersion(reply: Reply): string | null {
  if (!reply) return null;
  for (const [key, value] of Object.entries(reply)) {
    if (!key.toLowerCase().startsWith("ferretdb")) continue;
    if (typeof value === "string") return value;
    if (typeof value === "object" && value !== null && typeof (value as { version?: unknown }).version === "string") {
      return (value as { version: string }).version;
    }
    return "unknown version";
  }
  return null;
}

function majorVersion(buildInfo: Reply): number | null {
  const arr = buildInfo?.versionArray;
  if (Array.isArray(arr) && typeof arr[0] === "number") return arr[0];
  const v = buildInfo?.version;
  if (typeof v === "string") {
    const m = /^(\d+)\./.exec(v);
    if (m?.[1] !== undefined) return Number(m[1]);
  }
  return null;
}

/**
 * Decides from the replies alone (pure, so every documented reply shape can be tested).
 * @param buildInfo the `buildInfo` reply, or null when the command failed
 * @param hello the `hello` (or legacy `isMaster`) reply, or null when both failed
 */
export function assessMongoServer(buildInfo: Reply, hello: Reply): MongoServerAssessment {
  const version = typeof buildInfo?.version === "string" ? buildInfo.version : "unknown";
  const ferret = ferretDbVersion(buildInfo) ?? ferretDbVersion(hello);
  if (ferret !== null) {
    return {
      refusal:
        `the MongoDB server is FerretDB ${ferret} (claiming MongoDB ${version}): it loses concurrent conditional ` +
        "updates, so a carve could be completed twice or never (exactly-once completion cannot hold). " +
        "Use MongoDB 6 or later (a replica set, write concern majority); see README.md, Storage: the GridFS backend",
      warnings: [],
      description: `FerretDB ${ferret}`,
    };
  }
  const warnings: string[] = [];
  const major = majorVersion(buildInfo);
  if (major === null || major < MIN_MONGODB_MAJOR) {
    warnings.push(`MongoDB ${version} is not a supported release (MongoDB ${MIN_MONGODB_MAJOR} or later is)`);
  }
  const setName = hello?.setName;
  if (typeof setName !== "string" || setName === "") {
    warnings.push(
      "MongoDB is not a replica set: a crash of its one node can lose acknowledged blocks; " +
        "a replica set with w=majority is recommended",
    );
  }
  return {
    refusal: null,
    warnings,
    description: `MongoDB ${version}${typeof setName === "string" && setName !== "" ? `, replica set ${setName}` : ""}`,
  };
}

async function command(db: Db, cmd: Record<string, number>): Promise<Record<string, unknown> | null> {
  try {
    return await db.command(cmd);
  } catch {
    return null;
  }
}

/**
 * Asks the connected server what it is and refuses the ones the store cannot be correct on.
 * @throws Error (reported before the service listens) when the server must not be used.
 */
export async function checkMongoServer(admin: Db, logger: Logger): Promise<MongoServerAssessment> {
  const buildInfo = await command(admin, { buildInfo: 1 });
  // `hello` came with MongoDB 4.4 (5.0 for some servers); `isMaster` is the name older servers know.
  const hello = (await command(admin, { hello: 1 })) ?? (await command(admin, { isMaster: 1 }));
  const assessment = assessMongoServer(buildInfo, hello);
  if (assessment.refusal !== null) throw new Error(`refusing to use this MongoDB server: ${assessment.refusal}`);
  for (const warning of assessment.warnings) logger.warn({ mongo: assessment.description }, warning);
  return assessment;
}
