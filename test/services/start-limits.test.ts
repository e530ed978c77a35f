/**
 * The limits a start is checked against (free-storage reserve, carves being received in all and per agent), on
 * the embedded deployment: the catalog's upper bounds clear a start without asking the blob store about every
 * carve being received, and a start they do not clear gets the exact answer (active carves only, bytes still
 * to come), refusals included.
 */
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AppError } from "../../src/errors.js";
import { CarveServices } from "../../src/services/deployment.js";
import type { CarveLimits, StartCommand } from "../../src/services/ingest.js";
import { openFilesystemStorage } from "../../src/storage/factory.js";
import type { Storage } from "../../src/storage/contracts.js";

const logger = pino({ level: "silent" });
const FREE = 10_000_000;

let dir: string;
let services: CarveServices;
let progressCalls = 0;
/** The services' clock runs this far ahead of the wall clock (the blob store's): stepped, never slept through. */
let offsetMs = 0;

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "start-limits-"));
  const storage = await openFilesystemStorage({ dataDir: dir, logger });
  // The real blob store, with a known amount of free space and its progress reads counted.
  const blobs = storage.blobs;
  const counted: Storage = {
    ...storage,
    blobs: Object.assign(Object.create(blobs) as typeof blobs, {
      freeBytes: () => Promise.resolve(FREE),
      progress: (...args: Parameters<typeof blobs.progress>) => {
        progressCalls++;
        return blobs.progress(...args);
      },
    }),
  };
  offsetMs = 0;
  services = new CarveServices(counted, { logger, now: () => new Date(Date.now() + offsetMs) });
  progressCalls = 0;
});

afterEach(async () => {
  await services.close();
  await rm(dir, { recursive: true, force: true });
});

const agent = (address: string) => ({ address, userAgent: "osquery/5.23.0", certificate: null });
const command = (address: string, carveSize = 1000): StartCommand => ({
  blockCount: Math.ceil(carveSize / 1000),
  blockSize: 1000,
  carveSize,
  carveId: randomUUID(),
  requestId: randomUUID(),
  nodeKey: `node-${address}`,
  agent: agent(address),
});
const limits = (over: Partial<CarveLimits> = {}): CarveLimits => ({
  maxBlockSize: 1 << 20,
  maxCarveSize: 1 << 30,
  minFreeBytes: 1_000_000,
  maxReceiving: 100,
  maxReceivingPerAgent: 3,
  activeWithinMs: 3_600_000,
  firstBlockWithinMs: 600_000,
  ...over,
});

/** `n` carves being received from `address`, each with its first block stored (active). */
async function receiving(address: string, n: number, carveSize = 3000): Promise<void> {
  const unlimited = services.ingest({ limits: { maxBlockSize: 1 << 20, maxCarveSize: 1 << 30 } });
  for (let i = 0; i < n; i++) {
    const { session } = await unlimited.start(command(address, carveSize));
    await unlimited.storeBlock(session, 0, Buffer.alloc(1000, 1));
  }
}

async function refusal(p: Promise<unknown>): Promise<string | null> {
  return p.then(
    () => null,
    (err: unknown) => (err instanceof AppError ? err.code : String(err)),
  );
}

describe("start limits", () => {
  it("clears a start on the catalog's bounds alone, reading no carve's progress", async () => {
    await receiving("10.0.0.1", 3);
    await receiving("10.0.0.2", 2);
    progressCalls = 0;
    const ingest = services.ingest({ limits: limits() });
    await ingest.start(command("10.0.0.2"));
    await ingest.start(command("10.0.0.3"));
    expect(progressCalls).toBe(0);
  });

  it("refuses an agent at its cap, and all agents at the global cap, after the exact check", async () => {
    await receiving("10.0.0.1", 3);
    await receiving("10.0.0.2", 1);
    progressCalls = 0;
    expect(await refusal(services.ingest({ limits: limits() }).start(command("10.0.0.1")))).toBe("TOO_MANY_CARVES_FOR_AGENT");
    expect(progressCalls).toBeGreaterThan(0);
    expect(await refusal(services.ingest({ limits: limits({ maxReceiving: 4 }) }).start(command("10.0.0.9")))).toBe("TOO_MANY_CARVES");
  });

  it("lets a start through when the carves that reach a bound are no longer active", async () => {
    await receiving("10.0.0.1", 3);
    const minute = limits({ activeWithinMs: 60_000 });
    expect(await refusal(services.ingest({ limits: minute }).start(command("10.0.0.1")))).toBe("TOO_MANY_CARVES_FOR_AGENT");
    offsetMs += 61_000; // a minute and a second without a block
    progressCalls = 0;
    const { created } = await services.ingest({ limits: minute }).start(command("10.0.0.1"));
    expect(created).toBe(true);
    expect(progressCalls).toBeGreaterThan(0);
  });

  it("reserves only the bytes still to come: declared sizes alone would refuse what the exact check accepts", async () => {
    // 4 carves declaring 1 MB each with 1,000 bytes received: 3,996,000 bytes still to come.
    await receiving("10.0.0.1", 2, 1_000_000);
    await receiving("10.0.0.2", 2, 1_000_000);
    const ingest = services.ingest({ limits: limits({ minFreeBytes: 5_000_000, maxReceivingPerAgent: 10 }) });
    progressCalls = 0;
    // 10,000,000 free - 4,000,000 declared - 1,002,000 < 5,000,000, but - 3,996,000 to come - 1,002,000 is not.
    await ingest.start(command("10.0.0.3", 1_002_000));
    expect(progressCalls).toBeGreaterThan(0);
    // That start declared 1,002,000 more, none of it received: now even the exact reserve is too small.
    expect(await refusal(ingest.start(command("10.0.0.3", 1_000_000)))).toBe("INSUFFICIENT_STORAGE");
    expect((await ingest.start(command("10.0.0.4", 1_000))).created).toBe(true);
  });
});
