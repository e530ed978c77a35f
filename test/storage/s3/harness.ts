/**
 * An S3 blob store over a real SeaweedFS (test/support/seaweedfs.ts) with filesystem staging (or another staging
 * store given), each harness under its own key prefix and data directory so tests sharing one server never see
 * each other's objects.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import {
  DeleteObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  AbortMultipartUploadCommand,
} from "@aws-sdk/client-s3";
import { pino } from "pino";
import type { BlobStore } from "../../../src/storage/contracts.js";
import { FilesystemBlobs } from "../../../src/storage/filesystem/filesystem-blobs.js";
import { MIN_PART_SIZE } from "../../../src/storage/s3/multipart.js";
import { S3_CLIENT_DEFAULTS } from "../../../src/storage/s3/open-s3.js";
import { S3BlobStore } from "../../../src/storage/s3/s3-blobs.js";
import type { SeaweedFs } from "../../support/seaweedfs.js";

export interface S3Harness {
  prefix: string;
  dataDir: string;
  open(options?: { partSize?: number }): Promise<S3BlobStore>;
  /** Object keys under the prefix, unfinished multipart uploads ("upload:<key>") and staging files. */
  leftovers(): Promise<string[]>;
  objectKeys(): Promise<string[]>;
  multipartUploads(): Promise<string[]>;
  destroy(): Promise<void>;
}

/** A staging store other than the filesystem's: how to open it and what it still holds. */
export interface StagingFactory {
  open(): Promise<BlobStore>;
  leftovers(): Promise<string[]>;
  destroy(): Promise<void>;
}

export async function s3Harness(server: SeaweedFs, stagingFactory?: StagingFactory): Promise<S3Harness> {
  const prefix = `t-${randomBytes(6).toString("hex")}/`;
  const dataDir = await mkdtemp(path.join(tmpdir(), "carve-s3-staging-"));
  const admin = server.client();
  const objectKeys = async (): Promise<string[]> => {
    const out: string[] = [];
    let token: string | undefined;
    do {
      const page = await admin.send(
        new ListObjectsV2Command({
          Bucket: server.bucket,
          Prefix: prefix,
          ...(token ? { ContinuationToken: token } : {}),
        }),
      );
      out.push(...(page.Contents ?? []).map((o) => o.Key ?? ""));
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return out.sort();
  };
  const multipartUploads = async (): Promise<string[]> => {
    const page = await admin.send(new ListMultipartUploadsCommand({ Bucket: server.bucket, Prefix: prefix }));
    return (page.Uploads ?? []).map((u) => `upload:${u.Key ?? ""}:${u.UploadId ?? ""}`);
  };
  return {
    prefix,
    dataDir,
    open: async (options = {}) =>
      new S3BlobStore({
        client: server.client(S3_CLIENT_DEFAULTS),
        bucket: server.bucket,
        prefix,
        staging: stagingFactory
          ? await stagingFactory.open()
          : await FilesystemBlobs.create({ dataDir, logger: pino({ level: "silent" }) }),
        partSize: options.partSize ?? MIN_PART_SIZE,
        endpoint: server.endpoint,
      }),
    objectKeys,
    multipartUploads,
    leftovers: async () => {
      const out = [...(await objectKeys()), ...(await multipartUploads())];
      if (stagingFactory) out.push(...(await stagingFactory.leftovers()).map((k) => `staging:${k}`));
      for (const sub of ["carves", "sessions", "tmp"]) {
        for (const name of await readdir(path.join(dataDir, sub)).catch(() => [])) out.push(`staging:${sub}/${name}`);
      }
      return out;
    },
    destroy: async () => {
      for (const key of await objectKeys())
        await admin.send(new DeleteObjectCommand({ Bucket: server.bucket, Key: key }));
      const page = await admin.send(new ListMultipartUploadsCommand({ Bucket: server.bucket, Prefix: prefix }));
      for (const u of page.Uploads ?? []) {
        await admin.send(new AbortMultipartUploadCommand({ Bucket: server.bucket, Key: u.Key, UploadId: u.UploadId }));
      }
      admin.destroy();
      await rm(dataDir, { recursive: true, force: true });
      await stagingFactory?.destroy();
    },
  };
}
