import { randomBytes } from "node:crypto";
import {
  DeleteObjectCommand,
  HeadBucketCommand,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from "@aws-sdk/client-s3";
import type { Config } from "../../config/schema.js";
import type { Logger } from "../../logger.js";
import type { BlobStore, Storage } from "../contracts.js";
import { s3Code, s3Status } from "./s3-errors.js";
import { S3BlobStore } from "./s3-blobs.js";

export type S3Config = Config["storage"]["s3"];

/** Client settings of every S3 blob store (the tests build theirs with these too). */
export const S3_CLIENT_DEFAULTS = {
  // The SDK's default CRC32 checksums on every upload are not implemented alike by every S3-compatible server;
  // integrity is kept anyway: SigV4 signs each part's SHA-256 and the archive's SHA-256 is checked.
  requestChecksumCalculation: "WHEN_REQUIRED",
  responseChecksumValidation: "WHEN_REQUIRED",
  // Downloads hold a connection each while they stream; the default pool of 50 would queue the 51st.
  requestHandler: { connectionTimeout: 10_000, httpAgent: { maxSockets: 512 }, httpsAgent: { maxSockets: 512 } },
} as const satisfies S3ClientConfig;

/**
 * Builds the S3 blob store from `storage.s3` around the deployment's local blobs (`staging`), after checking
 * that the bucket answers and is writable. Credentials come from the standard AWS chain (environment, shared
 * config and credentials files, SSO, web identity, container and instance roles). On failure the client is
 * released and the error says what to fix; the caller still owns `staging` and closes it.
 * @throws Error with the reason, to be reported before the service listens.
 */
export async function openS3Blobs(
  config: S3Config,
  staging: BlobStore,
  logger?: Logger,
  options: { ownsStaging?: boolean } = {},
): Promise<S3BlobStore> {
  const bucket = config.bucket;
  if (!bucket) throw new Error("storage.s3.bucket is required for CARVE_BLOBS=s3 (CARVE_S3_BUCKET)");
  const client = new S3Client({
    ...S3_CLIENT_DEFAULTS,
    ...(config.endpoint ? { endpoint: config.endpoint } : {}),
    ...(config.region ? { region: config.region } : {}),
    forcePathStyle: config.forcePathStyle,
  });
  try {
    await checkBucket(client, bucket, config.prefix, config.endpoint ?? "AWS S3");
  } catch (err) {
    client.destroy();
    throw err;
  }
  const sse =
    config.sse === "none"
      ? undefined
      : { mode: config.sse, ...(config.sseKmsKeyId ? { kmsKeyId: config.sseKmsKeyId } : {}) };
  logger?.info(
    { bucket, prefix: config.prefix, endpoint: config.endpoint ?? null, sse: config.sse },
    "S3 blob store ready",
  );
  return new S3BlobStore({
    client,
    bucket,
    prefix: config.prefix,
    staging,
    sse,
    partSize: config.partSize,
    ownsStaging: options.ownsStaging ?? true,
    endpoint: config.endpoint ?? "aws",
    ...(logger ? { logger } : {}),
  });
}

/**
 * The start-up check: the bucket answers (HeadBucket) and takes an object (a small probe, put then deleted), so
 * wrong credentials, a missing bucket or a read-only policy stop the service at start, not the first completion.
 * @throws Error naming the bucket, the endpoint and the likely cause.
 */
export async function checkBucket(client: S3Client, bucket: string, prefix: string, where: string): Promise<void> {
  const fail = (step: string, err: unknown): Error => {
    const status = s3Status(err);
    const code = s3Code(err) ?? "error";
    let hint = "";
    if (status === 403 || /AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|Forbidden/i.test(code)) {
      hint =
        ": access denied; check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE) and the bucket policy";
    } else if (status === 404 || /NoSuchBucket|NotFound/i.test(code)) {
      hint = ": no such bucket (create it first)";
    } else if (/Region is missing/i.test(err instanceof Error ? err.message : "")) {
      hint = ": no region; set storage.s3.region (CARVE_S3_REGION) or AWS_REGION";
    } else if (/credential/i.test(err instanceof Error ? err.message : "") || /CredentialsProviderError/.test(code)) {
      hint = ": no credentials found in the AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, a role)";
    } else if (status === undefined) {
      hint = `: unreachable (${err instanceof Error ? err.message : String(err)})`;
    }
    return new Error(`S3 bucket ${bucket} at ${where}: ${step} failed (${code}${status ? ` ${status}` : ""})${hint}`, {
      cause: err,
    });
  };
  try {
    await client.send(new HeadBucketCommand({ Bucket: bucket }));
  } catch (err) {
    throw fail("HeadBucket", err);
  }
  const key = `${prefix}.carve-server-probe-${randomBytes(8).toString("hex")}`;
  let versionId: string | undefined;
  try {
    const out = await client.send(
      new PutObjectCommand({ Bucket: bucket, Key: key, Body: "probe", ContentType: "text/plain" }),
    );
    versionId = out.VersionId;
  } catch (err) {
    throw fail("writing a probe object", err);
  }
  try {
    // With the version, a versioned bucket really drops the probe instead of keeping it behind a delete marker.
    await client.send(
      new DeleteObjectCommand({ Bucket: bucket, Key: key, ...(versionId ? { VersionId: versionId } : {}) }),
    );
  } catch (err) {
    throw fail(`deleting the probe object ${key}`, err);
  }
}

/**
 * A deployment (src/storage/factory.ts) with its completed archives on S3: its own blob store becomes the staging,
 * the catalog and audit log stay. Closing it lets S3 work in flight finish, then closes the deployment (which
 * closes the staging) in its own order. On failure the deployment is closed and the error thrown.
 */
export async function withS3Archives(storage: Storage, config: S3Config, logger?: Logger): Promise<Storage> {
  let blobs: S3BlobStore;
  try {
    blobs = await openS3Blobs(config, storage.blobs, logger, { ownsStaging: false });
  } catch (err) {
    await storage.close().catch(() => undefined);
    throw err;
  }
  return {
    ...storage,
    blobs,
    close: async () => {
      await blobs.close();
      await storage.close();
    },
  };
}
