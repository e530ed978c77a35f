import { GetObjectLockConfigurationCommand, PutObjectLegalHoldCommand } from "@aws-sdk/client-s3";
import type { BlobStore } from "../contracts.js";
import { s3Code, s3Status, unavailable } from "./s3-errors.js";
import { S3BlobStore } from "./s3-blobs.js";

/**
 * What setObjectLegalHold did: "set" (the object's legal hold is now as asked), "not-s3" (the blobs are not
 * on S3), "not-enabled" (the bucket has no Object Lock, so holds live in the catalog only), "no-object" (the carve
 * is not published yet: call again after its completion).
 */
export type LegalHoldOutcome = "set" | "not-s3" | "not-enabled" | "no-object";

const lockEnabled = new WeakMap<S3BlobStore, boolean>();

/**
 * Optional second lock on a held carve: when the bucket was created with S3 Object Lock, a legal hold in the
 * catalog can also be put on the object, so that nobody with bucket credentials (or a lifecycle rule) can delete
 * it either until it is lifted (`on: false`). The catalog's hold stays the one the service obeys; this adds
 * nothing when Object Lock is off, and the call is then harmless. Delete lifts nothing by itself: lift the
 * object's hold before deleting a carve whose catalog hold was lifted.
 * @throws AppError STORAGE_UNAVAILABLE when S3 fails.
 */
export async function setObjectLegalHold(
  blobs: BlobStore,
  target: { carveId: string; sessionId: string },
  on: boolean,
): Promise<LegalHoldOutcome> {
  if (!(blobs instanceof S3BlobStore)) return "not-s3";
  const { client, bucket } = blobs.s3;
  try {
    let enabled = lockEnabled.get(blobs);
    if (enabled === undefined) {
      try {
        const out = await client.send(new GetObjectLockConfigurationCommand({ Bucket: bucket }));
        enabled = out.ObjectLockConfiguration?.ObjectLockEnabled === "Enabled";
      } catch (err) {
        // AWS answers 404 ObjectLockConfigurationNotFoundError for a bucket without Object Lock.
        if (s3Status(err) !== 404 && !/ObjectLockConfiguration/i.test(s3Code(err) ?? "")) throw err;
        enabled = false;
      }
      lockEnabled.set(blobs, enabled);
    }
    if (!enabled) return "not-enabled";
    const found = await blobs.findArchive(target.carveId, target.sessionId);
    if (!found) return "no-object";
    await client.send(
      new PutObjectLegalHoldCommand({
        Bucket: bucket,
        Key: found.key,
        ...(found.versionId ? { VersionId: found.versionId } : {}),
        LegalHold: { Status: on ? "ON" : "OFF" },
      }),
    );
    return "set";
  } catch (err) {
    throw unavailable(err);
  }
}
