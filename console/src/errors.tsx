import { ApiError } from "../../src/client/api-client.js";

/** What went wrong, in one line: the server's refusal (status, code, its message) or why it was not reached. */
export function describeError(err: unknown): string {
  if (err instanceof ApiError) {
    const id = err.requestId ? ` (request ${err.requestId})` : "";
    return `Refused by the server: ${err.status} ${err.code}: ${err.message}${id}`;
  }
  if (err instanceof Error && err.name === "AbortError") return "Cancelled.";
  return `Could not complete the request: ${err instanceof Error ? err.message : String(err)}`;
}

export const isForbidden = (err: unknown): boolean => err instanceof ApiError && err.status === 403;

export function ErrorNote({ error }: { error: unknown }) {
  if (error === null || error === undefined) return null;
  return (
    <p class="error" role="alert" data-error-code={error instanceof ApiError ? error.code : "TRANSPORT"}>
      {describeError(error)}
    </p>
  );
}
