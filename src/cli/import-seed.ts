/**
 * Brings the carves stored by the seed Go server (CptOfEvilMinions/osquerey-file-carve-server) into this
 * service's store: `npm run import-seed -- --dir /tmp` (its disk store) and/or `npm run import-seed --
 * --gridfs mongodb://... --database osquery-file-carve` (its GridFS bucket). Uses this service's
 * configuration for the destination, like `npm run cleanup`.
 *
 * The seed's layouts (read from its source, pkg/upload/fileUpload.go and mongoUpload.go):
 *  - disk: `<Storage.File.location>/<carve_id>.tar`, the decoded blocks appended in arrival order (also
 *    for zstd carves: the name says .tar whatever the content);
 *  - GridFS: the default bucket `fs` of Storage.Mongo.database, one file per carve named `<carve_id>`,
 *    written only when the upload finished (an interrupted one leaves chunks without a files document,
 *    which is not imported).
 * Each carve goes through the store's importCarve (SHA-256 and compression computed on the way, nothing
 * kept on failure) under its own carve id, so responders find it by the GUID osquery reported. A carve id
 * already in the store is skipped, so a second run imports only what is new. Every import is audited.
 *
 * Prints one line per carve (id, outcome, bytes, sha256) and a summary. Exit codes: 0 done, 1 some
 * carves failed, 2 invalid configuration or arguments, 3 a store (ours or the seed's) could not be opened.
 */
import { randomUUID } from "node:crypto";
import { createReadStream } from "node:fs";
import { readdir, stat } from "node:fs/promises";
import path from "node:path";
import { parseArgs } from "node:util";
import { ConfigError, loadConfig } from "../config/load.js";
import { describeError, isAppError, safeErrorFields } from "../errors.js";
import { createLogger, type Logger } from "../logger.js";
import { openServices, type CarveServices } from "../services/deployment.js";
import { buildAuditEvent, NO_CLIENT, systemActor } from "../services/audit-events.js";

/** osquery's carve GUIDs are UUIDs; in a shared directory such as /tmp nothing else is taken for a carve. */
const CARVE_FILE = /^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\.tar$/;

export interface SeedCarve {
  carveId: string;
  /** Where it was found, for the record and the output. */
  origin: string;
  storedAt: Date | null;
  chunks: () => AsyncIterable<Buffer>;
}

export interface ImportOutcome {
  carveId: string;
  result: "imported" | "skipped" | "failed";
  bytes: number;
  sha256: string | null;
  reason: string | null;
}

/** The seed's disk store: `<dir>/<carve_id>.tar`. */
export async function* seedDiskCarves(dir: string): AsyncGenerator<SeedCarve> {
  const names = (await readdir(dir)).sort();
  for (const name of names) {
    const m = CARVE_FILE.exec(name);
    if (!m?.[1]) continue;
    const file = path.join(dir, name);
    const info = await stat(file);
    if (!info.isFile()) continue;
    yield {
      carveId: m[1].toLowerCase(),
      origin: file,
      storedAt: info.mtime,
      chunks: () => createReadStream(file, { highWaterMark: 1024 * 1024 }),
    };
  }
}

/** The seed's GridFS bucket (default `fs`): files named `<carve_id>`, read chunk by chunk in order. */
export async function* seedGridFsCarves(uri: string, database: string, bucket: string): AsyncGenerator<SeedCarve> {
  const { MongoClient } = await import("mongodb");
  const client = new MongoClient(uri, { serverSelectionTimeoutMS: 5_000, appName: "osquery-carve-import-seed" });
  await client.connect();
  try {
    const db = client.db(database);
    const files = db.collection<{ _id: unknown; filename?: unknown; length?: unknown; uploadDate?: unknown }>(`${bucket}.files`);
    const chunks = db.collection<{ files_id: unknown; n: number; data: { buffer: Uint8Array } }>(`${bucket}.chunks`);
    for await (const doc of files.find({}, { sort: { uploadDate: 1 } })) {
      const name = typeof doc.filename === "string" ? doc.filename : "";
      const m = CARVE_FILE.exec(`${name}.tar`);
      if (!m?.[1]) continue;
      yield {
        carveId: m[1].toLowerCase(),
        origin: `${database}.${bucket} ${name}`,
        storedAt: doc.uploadDate instanceof Date ? doc.uploadDate : null,
        chunks: async function* () {
          // A few chunks per batch: memory stays bounded whatever the carve's size.
          const cursor = chunks.find({ files_id: doc._id }, { sort: { n: 1 }, batchSize: 8 });
          let expected = 0;
          for await (const chunk of cursor) {
            if (chunk.n !== expected) throw new Error(`chunk ${expected} of ${name} is missing`);
            expected++;
            yield Buffer.from(chunk.data.buffer);
          }
        },
      };
    }
  } finally {
    await client.close();
  }
}

/** Imports every carve of `source` through the import service, one at a time. */
export async function importSeedCarves(
  services: Pick<CarveServices, "reads" | "imports" | "audit">,
  source: AsyncIterable<SeedCarve>,
  options: { maxBytes: number; logger: Logger; dryRun?: boolean; out?: (o: ImportOutcome) => void },
): Promise<ImportOutcome[]> {
  const outcomes: ImportOutcome[] = [];
  const report = (o: ImportOutcome): void => {
    outcomes.push(o);
    options.out?.(o);
  };
  for await (const carve of source) {
    try {
      const existing = await services.reads.get(carve.carveId).catch((err: unknown) => {
        if (isAppError(err) && err.code === "CARVE_NOT_FOUND") return null;
        throw err;
      });
      if (existing) {
        report({ carveId: carve.carveId, result: "skipped", bytes: existing.carveSize, sha256: existing.sha256, reason: "already in the store" });
        continue;
      }
      if (options.dryRun) {
        report({ carveId: carve.carveId, result: "skipped", bytes: 0, sha256: null, reason: "dry run" });
        continue;
      }
      const stored = carve.storedAt ? `, stored there ${carve.storedAt.toISOString()}` : "";
      const record = await services.imports.importArchive(
        {
          carveId: carve.carveId,
          sessionId: randomUUID(),
          source: {
            host: null,
            originalPath: carve.origin,
            description: `imported from the seed Go server's store (${carve.origin}${stored}); the seed did not record the agent, the carve's size or its hash`,
            importedBy: { displayName: "import-seed", entityId: null },
          },
          agent: { address: null, userAgent: "import-seed", certificate: null },
        },
        carve.chunks(),
        { maxBytes: options.maxBytes },
      );
      await services.audit.record(
        buildAuditEvent(
          {
            action: "carve.import",
            result: "allowed",
            actor: systemActor("import-seed"),
            client: NO_CLIENT,
            requestId: null,
            carveId: record.carveId,
            detail: { source: "seed", originalPath: carve.origin.slice(0, 300), size: record.carveSize, sha256: record.sha256 },
          },
          new Date(),
        ),
      );
      report({ carveId: carve.carveId, result: "imported", bytes: record.carveSize, sha256: record.sha256, reason: null });
    } catch (err) {
      const reason = isAppError(err) ? `${err.code}: ${err.message}` : (safeErrorFields(err).message ?? "unknown error");
      options.logger.warn({ carveId: carve.carveId, origin: carve.origin, reason }, "seed carve not imported");
      report({ carveId: carve.carveId, result: "failed", bytes: 0, sha256: null, reason });
    }
  }
  return outcomes;
}

const USAGE =
  "usage: import-seed [--dir <seed Storage.File.location>] [--gridfs <mongodb:// uri> --database <name> [--bucket fs]] [--dry-run]\n" +
  "  destination: this service's configuration (conf/carve-server.yml and CARVE_* environment)";

export async function main(argv: string[], out: (line: string) => void = (l) => process.stdout.write(`${l}\n`)): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: argv,
      options: {
        dir: { type: "string" },
        gridfs: { type: "string" },
        database: { type: "string" },
        bucket: { type: "string", default: "fs" },
        "dry-run": { type: "boolean", default: false },
        help: { type: "boolean" },
      },
    });
  } catch (err) {
    process.stderr.write(`import-seed: ${err instanceof Error ? err.message : String(err)}\n${USAGE}\n`);
    return 2;
  }
  if (args.values.help) {
    out(USAGE);
    return 0;
  }
  const { dir, gridfs, database, bucket } = args.values;
  if (dir === undefined && gridfs === undefined) {
    process.stderr.write(`import-seed: give --dir and/or --gridfs\n${USAGE}\n`);
    return 2;
  }
  if (gridfs !== undefined && (database === undefined || database === "")) {
    process.stderr.write(`import-seed: --gridfs needs --database (the seed's Storage.Mongo.database)\n`);
    return 2;
  }
  let config;
  const warnings: string[] = [];
  try {
    config = loadConfig({ onWarning: (w) => warnings.push(w) });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`import-seed: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  // Same log format as the service (JSON lines, level names, ISO times), on stderr: stdout is the report.
  const logger = createLogger(config.logging.level, process.stderr).child({ component: "import-seed" });
  for (const w of warnings) logger.warn(w);
  let services;
  try {
    services = await openServices(config, logger);
  } catch (err) {
    process.stderr.write(`import-seed: cannot open storage: ${describeError(err)}\n`);
    return 3;
  }
  const all: ImportOutcome[] = [];
  const print = (o: ImportOutcome): void =>
    out(`${o.carveId}\t${o.result}\t${o.bytes}\t${o.sha256 ?? "-"}${o.reason ? `\t${o.reason}` : ""}`);
  const opts = { maxBytes: config.agent.maxCarveSize, logger, dryRun: args.values["dry-run"], out: print };
  try {
    if (dir !== undefined) all.push(...(await importSeedCarves(services, seedDiskCarves(dir), opts)));
    if (gridfs !== undefined && database !== undefined) {
      all.push(...(await importSeedCarves(services, seedGridFsCarves(gridfs, database, bucket), opts)));
    }
  } catch (err) {
    process.stderr.write(`import-seed: cannot read the seed's store: ${describeError(err)}\n`);
    await services.close();
    return 3;
  }
  await services.close();
  const count = (r: ImportOutcome["result"]): number => all.filter((o) => o.result === r).length;
  out(`import-seed: ${count("imported")} imported, ${count("skipped")} skipped, ${count("failed")} failed`);
  return count("failed") > 0 ? 1 : 0;
}

const invokedDirectly = process.argv[1] !== undefined && import.meta.url === new URL(`file://${process.argv[1]}`).href;
if (invokedDirectly) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`import-seed: ${String(err)}\n`);
      process.exit(3);
    },
  );
}
