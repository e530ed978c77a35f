/**
 * The start-up check of the MongoDB-compatible server: FerretDB is refused (it loses concurrent conditional
 * updates, so exactly-once completion cannot hold), MongoDB passes, with warnings for an old release or a
 * server that is not a replica set. The decision is a pure function of the buildInfo / hello replies, tested
 * here with the reply shapes FerretDB's own source builds (handler msg_buildinfo.go, common/ismaster.go, v1.x);
 * the real wire server of the test run (mongo-java-server, which does not claim to be FerretDB) must pass it
 * through the GridFS store's real open path.
 */
import { randomBytes } from "node:crypto";
import { MongoClient } from "mongodb";
import { describe, expect, inject, it } from "vitest";
import { createLogger } from "../../src/logger.js";
import { openGridfsStore } from "../support/deployment.js";
import { assessMongoServer, checkMongoServer } from "../../src/storage/mongo-server-check.js";
import { LogCapture } from "../support/service.js";

/** FerretDB v1.24's buildInfo reply: MongoDB's fields, then "our extensions". */
const FERRETDB_BUILD_INFO = {
  version: "7.0.42",
  gitVersion: "1b4c9b2f0f3cbd1d7e9a1b2c3d4e5f6a7b8c9d0e",
  modules: [],
  sysInfo: "deprecated",
  versionArray: [7, 0, 42, 0],
  bits: 64,
  debug: false,
  maxBsonObjectSize: 16777216,
  buildEnvironment: { go: "go1.22.5" },
  ferretdbVersion: "v1.24.2",
  ferretdbFeatures: { aggregationStages: ["$count", "$group", "$match"] },
  ok: 1,
};

/** FerretDB v1's hello / isMaster reply: nothing FerretDB-specific, no setName unless --repl-set-name. */
const FERRETDB_HELLO = {
  ismaster: true,
  maxBsonObjectSize: 16777216,
  maxMessageSizeBytes: 48000000,
  maxWriteBatchSize: 100000,
  localTime: new Date(),
  connectionId: 42,
  minWireVersion: 0,
  maxWireVersion: 21,
  readOnly: false,
  ok: 1,
};

const MONGODB7_BUILD_INFO = { version: "7.0.14", gitVersion: "ce59cfc6a3c5e5c067dca0d30697edd68d4f5188", versionArray: [7, 0, 14, 0], ok: 1 };
const REPLICA_SET_HELLO = { isWritablePrimary: true, setName: "rs0", hosts: ["mongo-1:27017"], maxWireVersion: 21, ok: 1 };

describe("assessMongoServer", () => {
  it("refuses FerretDB by its buildInfo extensions, saying why", () => {
    const a = assessMongoServer(FERRETDB_BUILD_INFO, FERRETDB_HELLO);
    expect(a.refusal).toMatch(/FerretDB v1\.24\.2/);
    expect(a.refusal).toMatch(/loses concurrent conditional updates/);
    expect(a.refusal).toMatch(/exactly-once completion cannot hold/);
    expect(a.refusal).toMatch(/MongoDB 6 or later/);
    expect(a.description).toBe("FerretDB v1.24.2");
  });

  it("refuses FerretDB when only its features key is there, or when hello names it, even as a replica set", () => {
    const onlyFeatures: Record<string, unknown> = { ...FERRETDB_BUILD_INFO };
    delete onlyFeatures.ferretdbVersion;
    expect(assessMongoServer(onlyFeatures, FERRETDB_HELLO).refusal).toMatch(/FerretDB unknown version/);
    expect(assessMongoServer(null, { ...FERRETDB_HELLO, setName: "rs0", ferretdbVersion: "v1.24.2" }).refusal).toMatch(
      /FerretDB v1\.24\.2/,
    );
  });

  it("accepts MongoDB 6+ in a replica set without a word", () => {
    expect(assessMongoServer(MONGODB7_BUILD_INFO, REPLICA_SET_HELLO)).toEqual({
      refusal: null,
      warnings: [],
      description: "MongoDB 7.0.14, replica set rs0",
    });
    expect(assessMongoServer({ version: "6.0.3", ok: 1 }, REPLICA_SET_HELLO).warnings).toEqual([]);
  });

  it("accepts an older release or a standalone server with a warning each", () => {
    const a = assessMongoServer({ version: "5.0.0", versionArray: [5, 0, 0], ok: 1 }, { ismaster: true, ok: 1 });
    expect(a.refusal).toBeNull();
    expect(a.warnings).toHaveLength(2);
    expect(a.warnings[0]).toMatch(/MongoDB 5\.0\.0 is not a supported release/);
    expect(a.warnings[1]).toMatch(/not a replica set.*w=majority/);
    expect(assessMongoServer(null, null).warnings[0]).toMatch(/MongoDB unknown is not a supported release/);
  });
});

describe("against the real wire server of this run", () => {
  it("mongo-java-server passes the check, and the GridFS store opens through it", async () => {
    const uri = inject("mongoUri");
    const logs = new LogCapture();
    const logger = createLogger("info", logs);
    const client = new MongoClient(uri);
    try {
      await client.connect();
      const a = await checkMongoServer(client.db("admin"), logger);
      expect(a.refusal).toBeNull();
      expect(a.description).toMatch(/^MongoDB \d+\.\d+/);
    } finally {
      await client.close();
    }
    const store = await openGridfsStore(uri, `check_${randomBytes(4).toString("hex")}`, { logger });
    try {
      expect((await store.health()).ok).toBe(true);
    } finally {
      await store.close();
    }
    // It announces MongoDB 5.0 and is no replica set: both said at start, neither stops it.
    const warnings = logs.entries().filter((e) => e.level === "warn");
    expect(warnings.map((w) => w.msg)).toEqual(
      expect.arrayContaining([expect.stringMatching(/not a supported release/), expect.stringMatching(/not a replica set/)]),
    );
  });
});
