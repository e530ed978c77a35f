import { AppError, isAppError } from "../../errors.js";

/** The HTTP status of an S3 SDK error, when the request got an answer. */
export function s3Status(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode;
}

/** The S3 error code (AccessDenied, NoSuchBucket, ...) or the SDK's error name. */
export function s3Code(err: unknown): string | undefined {
  const e = err as { Code?: unknown; name?: unknown } | null;
  if (typeof e?.Code === "string") return e.Code;
  return typeof e?.name === "string" ? e.name : undefined;
}

export function isNotFound(err: unknown): boolean {
  const code = s3Code(err);
  return s3Status(err) === 404 || code === "NotFound" || code === "NoSuchKey";
}

/** AppErrors pass through; anything else is the backend failing (cause kept for the log, never sent). */
export function unavailable(err: unknown): AppError {
  if (isAppError(err)) return err;
  return new AppError("STORAGE_UNAVAILABLE", undefined, { cause: err });
}
