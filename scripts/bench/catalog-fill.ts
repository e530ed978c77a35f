/**
 * Fills a deployment with carves through the service's own code, for the catalog scale benchmark
 * (scripts/bench/catalog-scale.ts): CarveServices over the real storage (src/storage/factory.ts), agent carves
 * started and stored by IngestService.start / storeBlock exactly as the agent routes call them, imports through
 * ImportService, holds, verifications and deletions through CustodyService, audit events through AuditRecorder.
 * No file or row is written by hand.
 *
 * The mix (the plan is deterministic for a seed; archive bytes and ids are not): one-block agent carves of 256 B - 4 KiB (osquery's default block is
 * 8 KiB; one in ten zstd), 2% imports, 0.5% (at most 500) carves still being received (2 of 4 blocks stored),
 * holds on 0.5% (a fifth of them lifted again), verifications on 1%, 1% extra carves deleted again, and about
 * 0.55 audit events per carve (downloads, reads, listings, denials, custody). Node keys follow a Zipf-like law
 * over `nodes` hosts (exponent 0.7: with 100,000 carves and 5,000 nodes the busiest has ~2,300 carves, the
 * median one ~10), so the listing's node filter meets realistic selectivity. Creation times are spread over
 * `spanDays` up to a minute ago (the service's clock is injected); the carves still being received are all in
 * the last five hours, so the measured service neither abandons them nor lets them exceed its capacity caps.
 */
import { createHash, randomUUID } from "node:crypto";
import { Readable } from "node:stream";
import { pino } from "pino";

import { AuditRecorder, NO_CLIENT, type AuditInput } from "../../src/services/audit-events.js";
import { CarveServices } from "../../src/services/deployment.js";
import { nodeKeyDigest, type IngestService } from "../../src/services/ingest.js";
import { openFilesystemStorage, openMongoStorage } from "../../src/storage/factory.js";
import type { AgentInfo } from "../../src/storage/model.js";

export type FillTarget =
  | { kind: "filesystem"; dataDir: string }
  | { kind: "gridfs"; uri: string; database: string; bucket: string };

export interface FillOptions {
  target: FillTarget;
  /** Visible carves at the end (deleted ones come on top). */
  carves: number;
  nodes: number;
  spanDays: number;
  /** Carves in flight at once (the catalog is synchronous; blob I/O overlaps). */
  concurrency: number;
  seed: number;
  log: (line: string) => void;
}

export interface NodeProbe {
  /** Full SHA-256 of the node key (hex) and how many visible carves carry it. */
  sha256: string;
  carves: number;
}

export interface FillResult {
  target: FillTarget["kind"];
  carves: number;
  counts: { complete: number; receiving: number };
  agentCarves: number;
  imports: number;
  receiving: number;
  holds: number;
  holdsReleased: number;
  verifications: number;
  deleted: number;
  auditEvents: number;
  nodes: number;
  busiestNode: NodeProbe;
  medianNode: NodeProbe;
  seconds: number;
  /** Node keys and agent addresses, so the measured starts look like the same fleet. */
  fleet: Array<{ nodeKey: string; address: string }>;
}

/** Small deterministic PRNG (mulberry32): the same seed gives the same store shape. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Picks node k with weight 1 / (k + 1)^0.7. */
function zipfPicker(nodes: number, random: () => number): () => number {
  const cumulative = new Float64Array(nodes);
  let sum = 0;
  for (let k = 0; k < nodes; k++) cumulative[k] = sum += 1 / Math.pow(k + 1, 0.7);
  return () => {
    const x = random() * sum;
    let lo = 0;
    let hi = nodes - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((cumulative[mid] ?? 0) < x) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
}

type Kind = "agent" | "import" | "receiving" | "deleted";

const BLOCK_SIZE = 8192;
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
const RESPONDERS = ["alice", "bob", "carol", "dave"];

function bytesOf(random: () => number, size: number, zstd: boolean): Buffer {
  const data = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i += 4) data.writeUInt32LE((random() * 2 ** 32) >>> 0, Math.min(i, size - 4));
  if (zstd) ZSTD_MAGIC.copy(data, 0);
  return data;
}

export async function fillStore(o: FillOptions): Promise<FillResult> {
  const silent = pino({ level: "silent" });
  const random = prng(o.seed);
  const pickNode = zipfPicker(o.nodes, random);
  const fleet = Array.from({ length: o.nodes }, (_, k) => ({
    nodeKey: `${randomUUID()}-${k}`,
    address: `10.${(k >> 16) & 255}.${(k >> 8) & 255}.${k & 255}`,
  }));
  const agentOf = (k: number): AgentInfo => ({
    address: fleet[k]?.address ?? null,
    userAgent: "osquery/5.12.1",
    certificate: {
      subjectDn: `CN=host-${k}.example.com,O=Example`,
      fingerprintSha256: createHash("sha256").update(`host-${k}`).digest("hex").toUpperCase().replace(/(..)(?!$)/g, "$1:"),
      source: "proxy",
    },
  });

  // The plan: which carve is what, in creation order; the carves being received are among the last ones.
  const receiving = Math.min(500, Math.round(o.carves * 0.005));
  const deletedExtra = Math.round(o.carves * 0.01);
  const total = o.carves + deletedExtra;
  const recentCount = Math.min(total, receiving * 3);
  const kinds: Kind[] = [];
  for (let i = 0; i < total; i++) {
    const recent = i >= total - recentCount;
    kinds.push(recent && (i - (total - recentCount)) % 3 === 0 ? "receiving" : "agent");
  }
  // Deletions and imports spread over the older part (Fisher-Yates on the indexes of agent carves).
  const older = kinds.flatMap((k, i) => (k === "agent" && i < total - recentCount ? [i] : []));
  for (let i = older.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [older[i], older[j]] = [older[j] as number, older[i] as number];
  }
  const imports = Math.round(o.carves * 0.02);
  older.slice(0, deletedExtra).forEach((i) => (kinds[i] = "deleted"));
  older.slice(deletedExtra, deletedExtra + imports).forEach((i) => (kinds[i] = "import"));
  // Drawn up front: carves in flight at once must not change which node or which extras a carve gets.
  const nodeOf = Uint32Array.from({ length: total }, () => pickNode());
  const rollOf = Float64Array.from({ length: total }, () => random());

  const end = Date.now() - 60_000;
  const recentFrom = end - 5 * 3600_000;
  const start = Math.min(recentFrom - 3600_000, end - o.spanDays * 86_400_000);
  const timeOf = (i: number): number => {
    const r = total - recentCount;
    return i < r ? start + ((recentFrom - start) * i) / Math.max(1, r) : recentFrom + ((end - recentFrom) * (i - r)) / Math.max(1, recentCount);
  };
  let clock = start;
  const now = (): Date => new Date(clock);

  const storage =
    o.target.kind === "filesystem"
      ? await openFilesystemStorage({ dataDir: o.target.dataDir, logger: silent, now })
      : await openMongoStorage({ uri: o.target.uri, database: o.target.database, bucket: o.target.bucket, logger: silent, now });
  const services = new CarveServices(storage, { logger: silent, now });
  const ingest: IngestService = services.ingest({ limits: { maxBlockSize: 8 * 1024 * 1024, maxCarveSize: 8 * 1024 ** 3 } });
  const audit = new AuditRecorder(services.audit, silent, now, 0);
  const stats = { agent: 0, import: 0, receiving: 0, deleted: 0, holds: 0, released: 0, verifications: 0, audit: 0 };
  const perNode = new Uint32Array(o.nodes);
  const record = async (input: Omit<AuditInput, "client" | "requestId"> & { client?: AuditInput["client"] }): Promise<void> => {
    await audit.record({ client: NO_CLIENT, requestId: randomUUID(), ...input });
    stats.audit++;
  };
  const responder = (r: number) => ({ displayName: RESPONDERS[Math.floor(r * RESPONDERS.length)] ?? "alice", entityId: null, tokenFingerprint: null });
  const viaConsole = { address: "192.0.2.10", certificate: null };

  const one = async (i: number): Promise<void> => {
    clock = Math.max(clock, timeOf(i));
    const kind = kinds[i] as Kind;
    const r = rollOf[i] ?? 0;
    if (kind === "import") {
      const size = 256 + Math.floor(random() * 3840);
      const carveId = randomUUID();
      await services.imports.importArchive(
        {
          carveId,
          sessionId: randomUUID(),
          agent: { address: viaConsole.address, userAgent: "curl/8.5.0", certificate: null },
          source: { host: `host-${Math.floor(r * o.nodes)}`, originalPath: "/var/tmp/evidence.tar", description: "collected out of band", importedBy: { displayName: "carol", entityId: null } },
        },
        Readable.from([bytesOf(random, size, false)]),
        { maxBytes: 1024 ** 3 },
      );
      stats.import++;
      await record({ action: "carve.import", result: "allowed", actor: responder(r), client: viaConsole, carveId, detail: { method: "POST", status: 201, size } });
      return;
    }
    const k = nodeOf[i] ?? 0;
    const many = kind === "receiving";
    const carveSize = many ? 3 * BLOCK_SIZE + 1000 : 256 + Math.floor(random() * 3840);
    const { session } = await ingest.start({
      blockCount: many ? 4 : 1,
      blockSize: BLOCK_SIZE,
      carveSize,
      carveId: randomUUID(),
      requestId: randomUUID(),
      nodeKey: fleet[k]?.nodeKey ?? "",
      agent: agentOf(k),
    });
    const zstd = random() < 0.1;
    if (many) {
      await ingest.storeBlock(session, 0, bytesOf(random, BLOCK_SIZE, zstd));
      await ingest.storeBlock(session, 1, bytesOf(random, BLOCK_SIZE, false));
      stats.receiving++;
      perNode[k] = (perNode[k] ?? 0) + 1;
      return;
    }
    await ingest.storeBlock(session, 0, bytesOf(random, carveSize, zstd));
    const carveId = session.carveId;
    if (kind === "deleted") {
      await services.custody.delete(carveId);
      stats.deleted++;
      await record({ action: "carve.delete", result: "allowed", actor: responder(r), client: viaConsole, carveId, detail: { method: "DELETE", status: 200, bytesFreed: carveSize } });
      return;
    }
    stats.agent++;
    perNode[k] = (perNode[k] ?? 0) + 1;
    if (r < 0.3) await record({ action: "carve.download", result: "allowed", actor: responder(r), client: viaConsole, carveId, detail: { method: "GET", status: 200, bytesSent: carveSize, completed: true } });
    else if (r < 0.4) await record({ action: "carve.read", result: "allowed", actor: responder(r), client: viaConsole, carveId, detail: { method: "GET", status: 200 } });
    else if (r < 0.41) await record({ action: "carve.download", result: "denied", actor: responder(r), client: viaConsole, carveId, detail: { method: "GET", status: 403, code: "ACCESS_DENIED" } });
    if (i % 10 === 0) await record({ action: "carve.list", result: "allowed", actor: responder(r), client: viaConsole, carveId: null, detail: { method: "GET", status: 200 } });
    if (r > 0.995) {
      await services.custody.placeHold(carveId, { by: responder(r).displayName, reason: `case ${i % 97}`, at: now() });
      stats.holds++;
      await record({ action: "carve.hold", result: "allowed", actor: responder(r), client: viaConsole, carveId, detail: { method: "PUT", status: 200 } });
      if (r > 0.999) {
        await services.custody.releaseHold(carveId);
        stats.released++;
        await record({ action: "carve.release", result: "allowed", actor: responder(r), client: viaConsole, carveId, detail: { method: "DELETE", status: 200 } });
      }
    } else if (r > 0.985) {
      await services.custody.recordVerification(carveId, { claimedSha256: "0".repeat(64), match: false, by: responder(r).displayName, at: now() });
      stats.verifications++;
      await record({ action: "carve.verify", result: "allowed", actor: responder(r), client: viaConsole, carveId, detail: { method: "POST", status: 200, match: false } });
    }
  };

  const t0 = performance.now();
  let next = 0;
  let done = 0;
  let lastLog = t0;
  const worker = async (): Promise<void> => {
    while (next < total) {
      await one(next++);
      done++;
      const t = performance.now();
      if (t - lastLog > 15_000) {
        lastLog = t;
        const rate = done / ((t - t0) / 1000);
        o.log(`fill: ${done}/${total} carves, ${rate.toFixed(0)}/s, ~${((total - done) / rate / 60).toFixed(1)} min left`);
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: o.concurrency }, () => worker()));
    const counts = await storage.catalog.count();
    const ranked = [...perNode.keys()].filter((k) => (perNode[k] ?? 0) > 0).sort((a, b) => (perNode[b] ?? 0) - (perNode[a] ?? 0));
    const probe = (k: number | undefined): NodeProbe => ({ sha256: nodeKeyDigest(fleet[k ?? 0]?.nodeKey ?? "x") ?? "", carves: perNode[k ?? 0] ?? 0 });
    return {
      target: o.target.kind,
      carves: counts.complete + counts.receiving,
      counts,
      agentCarves: stats.agent,
      imports: stats.import,
      receiving: stats.receiving,
      holds: stats.holds,
      holdsReleased: stats.released,
      verifications: stats.verifications,
      deleted: stats.deleted,
      auditEvents: stats.audit,
      nodes: ranked.length,
      busiestNode: probe(ranked[0]),
      medianNode: probe(ranked[Math.floor(ranked.length / 2)]),
      seconds: (performance.now() - t0) / 1000,
      fleet,
    };
  } finally {
    await services.close();
  }
}
