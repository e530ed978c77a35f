import { GetObjectLockConfigurationCommand, PutObjectLegalHoldCommand, type S3Client } from "@aws-sdk/client-s3";
import { s3Code, s3Status, unavailable } from "./s3-errors.js";

/**
 * What setting an object's legal hold did: "set" (the object's legal hold is now as asked), "not-s3" (the blobs
 * are not on S3), "not-enabled" (the bucket has no Object Lock, so holds live in the catalog only), "no-object"
 * (the carve is not published yet: call again after its completion).
 */
export type LegalHoldOutcome = "set" | "not-s3" | "not-enabled" | "no-object";

/** Whether the bucket has Object Lock, asked once per store. */
export class ObjectLockState {
  private enabled: Promise<boolean> | null = null;

  constructor(
    private readonly client: S3Client,
    private readonly bucket: string,
  ) {}

  isEnabled(): Promise<boolean> {
    this.enabled ??= this.client.send(new GetObjectLockConfigurationCommand({ Bucket: this.bucket })).then(
      (out) => out.ObjectLockConfiguration?.ObjectLockEnabled === "Enabled",
      (err: unknown) => {
        // AWS answers 404 ObjectLockConfigurationNotFoundError for a bucket without Object Lock.
        if (s3Status(err) === 404 || /ObjectLockConfiguration/i.test(s3Code(err) ?? "")) return false;
        this.enabled = null;
        throw err;
      },
    );
    return this.enabled;
  }
}

/**
 * Sets or lifts the legal hold of one object version (found by the store) when the bucket has Object Lock.
 * @throws AppError STORAGE_UNAVAILABLE when S3 fails.
 */
export async function applyLegalHold(
  client: S3Client,
  bucket: string,
  lock: ObjectLockState,
  find: () => Promise<{ key: string; versionId: string | undefined } | null>,
  on: boolean,
): Promise<LegalHoldOutcome> {
  try {
    if (!(await lock.isEnabled())) return "not-enabled";
    const found = await find();
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
