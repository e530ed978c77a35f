/**
 * What the conformance suite cannot see of the S3 blob store, against a real SeaweedFS with S3 authentication:
 * the start-up check (credentials, bucket, write access), multipart uploads with several parts, crash and
 * failure windows of a completion (no leaked parts, no lost staging), ranged reads, imports' metadata, S3
 * itself going away mid-completion, and Object Lock legal holds.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import {
  CopyObjectCommand,
  GetObjectLegalHoldCommand,
  HeadObjectCommand,
  ListObjectVersionsCommand,
  PutObjectCommand,
} from "@aws-sdk/client-s3";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { configSchema } from "../../../src/config/schema.js";
import { AppError, type ErrorCode } from "../../../src/errors.js";
import type { BlobStore } from "../../../src/storage/contracts.js";
import { FilesystemBlobs } from "../../../src/storage/filesystem/filesystem-blobs.js";
import type { Session } from "../../../src/storage/model.js";
import { MIN_PART_SIZE } from "../../../src/storage/s3/multipart.js";
import { openS3Blobs } from "../../../src/storage/s3/open-s3.js";
import { S3BlobStore, setObjectLegalHold } from "../../../src/storage/s3/s3-blobs.js";
import { startSeaweedFs, type SeaweedFs } from "../../support/seaweedfs.js";
import { s3Harness, type S3Harness } from "./harness.js";

const MIB = 1024 * 1024;
const silent = pino({ level: "silent" });

let server: SeaweedFs;
beforeAll(async () => {
  server = await startSeaweedFs();
}, 30 * 60_000);
afterAll(async () => {
  await server?.destroy();
});

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
  return Buffer.concat(chunks);
}

async function expectCode(promise: Promise<unknown>, code: ErrorCode): Promise<AppError> {
  const err = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err, `expected ${code}`).toBeInstanceOf(AppError);
  expect((err as AppError).code).toBe(code);
  return err as AppError;
}

interface Upload {
  session: Session;
  bytes: Buffer;
  blocks: Buffer[];
}

function makeUpload(size: number, blockSize: number): Upload {
  const bytes = randomBytes(size);
  const blocks: Buffer[] = [];
  for (let off = 0; off < size; off += blockSize) blocks.push(bytes.subarray(off, Math.min(off + blockSize, size)));
  return {
    bytes,
    blocks,
    session: {
      carveId: randomUUID(),
      sessionId: randomBytes(16).toString("hex"),
      requestId: randomUUID(),
      nodeKeySha256: null,
      blockCount: blocks.length,
      blockSize,
      carveSize: size,
      agent: { address: "127.0.0.1", userAgent: "osquery/5.23.0", certificate: null },
      createdAt: new Date(),
    },
  };
}

async function stage(blobs: BlobStore, u: Upload): Promise<void> {
  await blobs.begin(u.session);
  // Out of order, as agents at several replicas would send them.
  const order = u.blocks.map((_, i) => i).reverse();
  for (const id of order) await blobs.putBlock(u.session, id, u.blocks[id] as Buffer);
}

const refOf = (u: Upload) => ({
  carveId: u.session.carveId,
  sessionId: u.session.sessionId,
  compression: "none" as const,
  size: u.bytes.length,
});

describe("start-up check (openS3Blobs)", () => {
  const config = (overrides: Record<string, unknown> = {}) =>
    configSchema.parse({
      storage: {
        blobs: "s3",
        s3: {
          endpoint: server.endpoint,
          region: server.region,
          bucket: server.bucket,
          forcePathStyle: true,
          ...overrides,
        },
      },
    }).storage.s3;
  const staging = async (): Promise<BlobStore> =>
    FilesystemBlobs.create({ dataDir: await mkdtemp(path.join(tmpdir(), "carve-open-s3-")), logger: silent });
  afterEach(() => {
    vi.unstubAllEnvs();
  });

  it("opens with the credentials of the standard AWS chain (environment) and takes no probe object along", async () => {
    vi.stubEnv("AWS_ACCESS_KEY_ID", server.accessKeyId);
    vi.stubEnv("AWS_SECRET_ACCESS_KEY", server.secretAccessKey);
    const local = await staging();
    const blobs = await openS3Blobs(config({ prefix: "open-ok/" }), local, silent);
    try {
      expect((await blobs.health()).ok).toBe(true);
      const h = await s3Harness(server);
      expect(await h.objectKeys()).toEqual([]);
      await h.destroy();
    } finally {
      await blobs.close();
    }
  });

  it("refuses wrong credentials, a missing bucket and a read-only identity, saying why", async () => {
    const local = await staging();
    try {
      vi.stubEnv("AWS_ACCESS_KEY_ID", server.accessKeyId);
      vi.stubEnv("AWS_SECRET_ACCESS_KEY", "not-the-secret");
      await expect(openS3Blobs(config(), local)).rejects.toThrow(/access denied; check the credentials/);
      vi.stubEnv("AWS_ACCESS_KEY_ID", "nobody");
      await expect(openS3Blobs(config(), local)).rejects.toThrow(/access denied/);
      vi.stubEnv("AWS_ACCESS_KEY_ID", server.accessKeyId);
      vi.stubEnv("AWS_SECRET_ACCESS_KEY", server.secretAccessKey);
      await expect(openS3Blobs(config({ bucket: "no-such-bucket-here" }), local)).rejects.toThrow(/no such bucket/);
      vi.stubEnv("AWS_ACCESS_KEY_ID", server.readOnly.accessKeyId);
      vi.stubEnv("AWS_SECRET_ACCESS_KEY", server.readOnly.secretAccessKey);
      await expect(openS3Blobs(config(), local)).rejects.toThrow(/writing a probe object failed.*access denied/);
    } finally {
      await local.close();
    }
  });

  it("refuses an endpoint nobody listens on", async () => {
    vi.stubEnv("AWS_ACCESS_KEY_ID", server.accessKeyId);
    vi.stubEnv("AWS_SECRET_ACCESS_KEY", server.secretAccessKey);
    const local = await staging();
    try {
      await expect(openS3Blobs(config({ endpoint: "http://127.0.0.1:1" }), local)).rejects.toThrow(
        /HeadBucket failed.*unreachable/,
      );
    } finally {
      await local.close();
    }
  });
});

describe("S3 blob store", () => {
  let h: S3Harness;
  let blobs: S3BlobStore;
  afterEach(async () => {
    await blobs?.close().catch(() => undefined);
    await h?.destroy();
  });

  it("completes a carve as one multipart upload of several parts, with its facts as metadata, and drops the staging", async () => {
    h = await s3Harness(server);
    blobs = await h.open({ partSize: MIN_PART_SIZE });
    const u = makeUpload(17 * MIB + 123, 512 * 1024);
    await stage(blobs, u);
    const facts = await blobs.complete(u.session);
    expect(facts).toEqual({ sha256: sha256(u.bytes), compression: "none", size: u.bytes.length });
    const key = `${h.prefix}${u.session.carveId}.tar`;
    const head = await server.client().send(new HeadObjectCommand({ Bucket: server.bucket, Key: key }));
    // A multipart object's ETag ends in -<parts>: 17 MiB in 5 MiB parts is 4 parts.
    expect(head.ETag).toMatch(/-4"?$/);
    expect(head.ContentLength).toBe(u.bytes.length);
    expect(head.Metadata).toMatchObject({
      sha256: facts.sha256,
      compression: "none",
      "session-id": u.session.sessionId,
      "carve-id": u.session.carveId,
    });
    expect(await h.leftovers()).toEqual([key]);
    expect(sha256(await readAll((await blobs.read(refOf(u))).stream))).toBe(facts.sha256);
  });

  it("streams ranged GETs, across part boundaries, and refuses a range past the end", async () => {
    h = await s3Harness(server);
    blobs = await h.open({ partSize: MIN_PART_SIZE });
    const u = makeUpload(11 * MIB + 7, MIB);
    await stage(blobs, u);
    await blobs.complete(u.session);
    for (const [start, end] of [
      [0, 0],
      [MIN_PART_SIZE - 3, MIN_PART_SIZE + 2],
      [123, 10 * MIB],
      [u.bytes.length - 1, u.bytes.length - 1],
    ] as const) {
      const got = await readAll((await blobs.read(refOf(u), { start, end })).stream);
      expect(got.length).toBe(end - start + 1);
      expect(sha256(got)).toBe(sha256(u.bytes.subarray(start, end + 1)));
    }
    await expectCode(
      blobs.read(refOf(u), { start: u.bytes.length + 10, end: u.bytes.length + 20 }),
      "RANGE_NOT_SATISFIABLE",
    );
    await expectCode(blobs.read({ ...refOf(u), sessionId: "another-session" }), "CARVE_NOT_FOUND");
    await expectCode(blobs.read({ ...refOf(u), carveId: randomUUID() }), "CARVE_NOT_FOUND");
  });

  it("finishes a completion that died after the upload and before the staging was dropped, without uploading again", async () => {
    h = await s3Harness(server);
    const u = makeUpload(6 * MIB + 1, MIB);
    const first = await h.open();
    await stage(first, u);
    // The staging delete is the step after the confirmed upload: make it fail once, as a crash there would.
    const staging = (first as unknown as { staging: BlobStore }).staging;
    const realDelete = staging.delete.bind(staging);
    staging.delete = () => Promise.reject(new Error("process died here"));
    await expect(first.complete(u.session)).rejects.toThrow(/process died here/);
    staging.delete = realDelete;
    await first.close();
    const key = `${h.prefix}${u.session.carveId}.tar`;
    const before = await server.client().send(new HeadObjectCommand({ Bucket: server.bucket, Key: key }));
    expect((await h.leftovers()).filter((k) => k.startsWith("staging:"))).not.toEqual([]);
    // Mark the object: an upload of it again would drop the mark.
    await server.client().send(
      new CopyObjectCommand({
        Bucket: server.bucket,
        Key: key,
        CopySource: `${server.bucket}/${key}`,
        MetadataDirective: "REPLACE",
        Metadata: { ...before.Metadata, mark: "first-upload" },
      }),
    );

    blobs = await h.open();
    const facts = await blobs.complete(u.session);
    expect(facts).toEqual({ sha256: sha256(u.bytes), compression: "none", size: u.bytes.length });
    const after = await server.client().send(new HeadObjectCommand({ Bucket: server.bucket, Key: key }));
    expect(after.Metadata?.mark).toBe("first-upload");
    expect(await h.leftovers()).toEqual([key]);
    expect(await blobs.complete(u.session)).toEqual(facts);
  });

  it("leaves no multipart upload behind when a completion is abandoned mid-upload, and completes on the next try", async () => {
    h = await s3Harness(server);
    blobs = await h.open({ partSize: MIN_PART_SIZE });
    const u = makeUpload(16 * MIB, MIB);
    await stage(blobs, u);
    let beats = 0;
    let sawUpload = false;
    const losing = async (): Promise<void> => {
      beats += 1;
      if (beats === 4) {
        sawUpload = (await h.multipartUploads()).length === 1;
        throw new AppError("STORAGE_UNAVAILABLE", "completion claim lost");
      }
    };
    await expectCode(blobs.complete(u.session, losing), "STORAGE_UNAVAILABLE");
    expect(sawUpload).toBe(true);
    expect(await h.multipartUploads()).toEqual([]);
    expect(await h.objectKeys()).toEqual([]);
    // Every block is still stored: the carve reads as waiting for completion, not as idle or gone.
    expect(await blobs.progress(u.session, 10)).toMatchObject({
      blocksReceived: u.blocks.length,
      bytesReceived: u.bytes.length,
      missing: [],
    });
    expect((await blobs.complete(u.session)).sha256).toBe(sha256(u.bytes));
    expect(await h.multipartUploads()).toEqual([]);
  });

  it("completes after S3 went away mid-completion and came back", async () => {
    h = await s3Harness(server);
    blobs = await h.open({ partSize: MIN_PART_SIZE });
    const u = makeUpload(21 * MIB, MIB);
    await stage(blobs, u);
    let stopped = false;
    const err = await blobs
      .complete(u.session, async () => {
        if (!stopped) {
          stopped = true;
          await server.stop();
        }
      })
      .then(
        () => null,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(AppError);
    expect((await blobs.health()).ok).toBe(false);
    await server.start();
    expect((await blobs.health()).ok).toBe(true);
    const facts = await blobs.complete(u.session);
    expect(facts.sha256).toBe(sha256(u.bytes));
    expect(sha256(await readAll((await blobs.read(refOf(u))).stream))).toBe(facts.sha256);
    expect(await h.multipartUploads()).toEqual([]);
    expect(await h.leftovers()).toEqual([`${h.prefix}${u.session.carveId}.tar`]);
  });

  it("imports with the SHA-256 in the metadata, whether it was expected or learned at the end", async () => {
    h = await s3Harness(server);
    blobs = await h.open({ partSize: MIN_PART_SIZE });
    const bytes = randomBytes(12 * MIB + 5);
    async function* chunks(): AsyncGenerator<Buffer> {
      for (let off = 0; off < bytes.length; off += 300_000)
        yield await Promise.resolve(bytes.subarray(off, off + 300_000));
    }
    for (const expected of [undefined, sha256(bytes)]) {
      const target = { carveId: randomUUID(), sessionId: randomBytes(16).toString("hex") };
      const facts = await blobs.importArchive(target, chunks(), {
        maxBytes: 64 * MIB,
        ...(expected ? { expectedSha256: expected } : {}),
      });
      expect(facts).toEqual({ sha256: sha256(bytes), compression: "none", size: bytes.length });
      const head = await server
        .client()
        .send(new HeadObjectCommand({ Bucket: server.bucket, Key: `${h.prefix}${target.carveId}.tar` }));
      expect(head.Metadata).toMatchObject({ sha256: facts.sha256, "session-id": target.sessionId });
      const got = await readAll((await blobs.read({ ...target, compression: "none", size: bytes.length })).stream);
      expect(sha256(got)).toBe(facts.sha256);
    }
    expect(await h.multipartUploads()).toEqual([]);
  });

  it("does not take an object another session wrote under the carve's key for its own", async () => {
    h = await s3Harness(server);
    blobs = await h.open();
    const u = makeUpload(3000, 1024);
    const key = `${h.prefix}${u.session.carveId}.tar`;
    await server.client().send(
      new PutObjectCommand({
        Bucket: server.bucket,
        Key: key,
        Body: u.bytes,
        Metadata: { sha256: sha256(u.bytes), "session-id": "someone-else" },
      }),
    );
    await expectCode(blobs.putBlock(u.session, 0, u.blocks[0] as Buffer), "UNKNOWN_SESSION");
    expect(await blobs.delete(u.session)).toBe(0);
    expect(await h.objectKeys()).toEqual([key]);
  });
});

describe("legal holds (setObjectLegalHold)", () => {
  it("says not-enabled on a bucket without Object Lock and not-s3 for other blob stores", async () => {
    const h = await s3Harness(server);
    const blobs = await h.open();
    try {
      const u = makeUpload(2048, 1024);
      await stage(blobs, u);
      await blobs.complete(u.session);
      expect(await setObjectLegalHold(blobs, u.session, true)).toBe("not-enabled");
      const local = await FilesystemBlobs.create({ dataDir: `${h.dataDir}-other`, logger: silent });
      expect(await setObjectLegalHold(local, u.session, true)).toBe("not-s3");
      await local.close();
    } finally {
      await blobs.close();
      await h.destroy();
    }
  });
});

describe("legal holds on a bucket with Object Lock", () => {
  it("sets and lifts the object's legal hold; a held object cannot be deleted, a lifted one is, every version of it", async () => {
    const bucket = `locked-${randomBytes(4).toString("hex")}`;
    await server.createBucket(bucket, { objectLock: true });
    const locked: SeaweedFs = { ...server, bucket };
    const h = await s3Harness(locked);
    const blobs = await h.open();
    try {
      const u = makeUpload(6000, 1024);
      expect(await setObjectLegalHold(blobs, u.session, true)).toBe("no-object");
      await stage(blobs, u);
      await blobs.complete(u.session);
      expect(await setObjectLegalHold(blobs, u.session, true)).toBe("set");
      const key = `${h.prefix}${u.session.carveId}.tar`;
      const hold = await server.client().send(new GetObjectLegalHoldCommand({ Bucket: bucket, Key: key }));
      expect(hold.LegalHold?.Status).toBe("ON");
      await expectCode(blobs.delete(u.session), "STORAGE_UNAVAILABLE");
      expect(sha256(await readAll((await blobs.read(refOf(u))).stream))).toBe(sha256(u.bytes));
      expect(await setObjectLegalHold(blobs, u.session, false)).toBe("set");
      expect(await blobs.delete(u.session)).toBe(u.bytes.length);
      // An import whose SHA-256 is learned at the end rewrites its metadata: two versions, both deleted.
      const imported = { carveId: randomUUID(), sessionId: randomBytes(16).toString("hex") };
      const bytes = randomBytes(70_000);
      await blobs.importArchive(
        imported,
        (async function* () {
          yield await Promise.resolve(bytes);
        })(),
        { maxBytes: 1e6 },
      );
      const before = await server.client().send(new ListObjectVersionsCommand({ Bucket: bucket, Prefix: h.prefix }));
      expect(before.Versions?.length).toBe(2);
      expect(await blobs.delete(imported)).toBe(2 * bytes.length);
      const versions = await server.client().send(new ListObjectVersionsCommand({ Bucket: bucket, Prefix: h.prefix }));
      expect([...(versions.Versions ?? []), ...(versions.DeleteMarkers ?? [])]).toEqual([]);
    } finally {
      await blobs.close();
      await h.destroy();
    }
  });
});
