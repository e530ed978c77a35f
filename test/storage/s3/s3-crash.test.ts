/**
 * A real SIGKILL (src/util/crash-point.ts) in the two windows only the S3 blob store has: parts sent but no
 * object yet, and the object confirmed but the staging not yet dropped. A new process then completes the carve
 * byte-exact, uploads nothing twice and leaves neither parts nor staging behind. Needs dist/ (scripts/build.sh).
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { CopyObjectCommand, HeadObjectCommand } from "@aws-sdk/client-s3";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { Session } from "../../../src/storage/model.js";
import { startSeaweedFs, type SeaweedFs } from "../../support/seaweedfs.js";
import { runWithBlobs } from "./child.js";
import { s3Harness, type S3Harness } from "./harness.js";

const MIB = 1024 * 1024;
let server: SeaweedFs;
let h: S3Harness;
beforeAll(async () => {
  server = await startSeaweedFs();
}, 30 * 60_000);
afterAll(async () => {
  await server?.destroy();
});
afterEach(async () => {
  await h?.destroy();
});

const sha256 = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

function sessionFor(bytes: Buffer, blockSize: number): Session {
  return {
    carveId: randomUUID(),
    sessionId: randomBytes(16).toString("hex"),
    requestId: randomUUID(),
    nodeKeySha256: null,
    blockCount: Math.ceil(bytes.length / blockSize),
    blockSize,
    carveSize: bytes.length,
    agent: { address: "127.0.0.1", userAgent: "osquery/5.23.0", certificate: null },
    createdAt: new Date(),
  };
}

/** Child body: stage every block of input.file, then complete (where the crash point fires). */
const STAGE_AND_COMPLETE = `
  const { readFile } = await import("node:fs/promises");
  const bytes = await readFile(input.file);
  const session = { ...input.session, createdAt: new Date(input.session.createdAt) };
  await blobs.begin(session);
  for (let id = 0; id < session.blockCount; id++) {
    await blobs.putBlock(session, id, bytes.subarray(id * session.blockSize, (id + 1) * session.blockSize));
  }
  const facts = await blobs.complete(session);
  console.log(JSON.stringify(facts));
`;

const COMPLETE = `
  const session = { ...input.session, createdAt: new Date(input.session.createdAt) };
  console.log(JSON.stringify(await blobs.complete(session)));
`;

describe("S3 completion killed by SIGKILL", () => {
  it("after the object is confirmed and before the staging is dropped: the next process only cleans up", async () => {
    h = await s3Harness(server);
    const bytes = randomBytes(7 * MIB + 3);
    const session = sessionFor(bytes, MIB);
    const file = path.join(h.dataDir, "..", `${session.carveId}.input`);
    await writeFile(file, bytes);
    const killed = await runWithBlobs(server, h, STAGE_AND_COMPLETE, {
      input: { file, session },
      env: { CARVE_CRASH_AT: "object.after-upload" },
    });
    expect(killed.signal, killed.stderr).toBe("SIGKILL");
    expect(killed.stderr).toContain("crash-point: SIGKILL at object.after-upload");
    const key = `${h.prefix}${session.carveId}.tar`;
    const leftovers = await h.leftovers();
    expect(leftovers).toContain(key);
    expect(leftovers.some((k) => k.startsWith("staging:"))).toBe(true);
    const before = await server.client().send(new HeadObjectCommand({ Bucket: server.bucket, Key: key }));
    // Mark the object: uploading it again would drop the mark.
    await server.client().send(
      new CopyObjectCommand({
        Bucket: server.bucket,
        Key: key,
        CopySource: `${server.bucket}/${key}`,
        MetadataDirective: "REPLACE",
        Metadata: { ...before.Metadata, mark: "first-upload" },
      }),
    );

    const again = await runWithBlobs(server, h, COMPLETE, { input: { session } });
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout)).toEqual({ sha256: sha256(bytes), compression: "none", size: bytes.length });
    const after = await server.client().send(new HeadObjectCommand({ Bucket: server.bucket, Key: key }));
    expect(after.Metadata?.mark).toBe("first-upload");
    expect(await h.leftovers()).toEqual([key]);
    await rm(file);
  });

  it("with parts sent and no object yet: the next process aborts the dead upload and completes byte-exact", async () => {
    h = await s3Harness(server);
    const bytes = randomBytes(18 * MIB + 5);
    const session = sessionFor(bytes, 2 * MIB);
    const file = path.join(h.dataDir, "..", `${session.carveId}.input`);
    await writeFile(file, bytes);
    const killed = await runWithBlobs(server, h, STAGE_AND_COMPLETE, {
      input: { file, session },
      env: { CARVE_CRASH_AT: "object.mid-upload:2" },
    });
    expect(killed.signal, killed.stderr).toBe("SIGKILL");
    expect(await h.objectKeys()).toEqual([]);
    expect(await h.multipartUploads()).toHaveLength(1);

    const again = await runWithBlobs(server, h, COMPLETE, { input: { session } });
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ sha256: sha256(bytes), size: bytes.length });
    expect(await h.multipartUploads()).toEqual([]);
    expect(await h.leftovers()).toEqual([`${h.prefix}${session.carveId}.tar`]);
    await rm(file);
  });
});
