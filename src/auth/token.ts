import type { IncomingHttpHeaders } from "node:http";

function single(value: string | string[] | undefined): string | undefined {
  // Node joins repeated unknown headers with ", "; a list of tokens is not a token.
  if (Array.isArray(value)) return value.length === 1 ? value[0] : ",";
  return value;
}

/**
 * The Vault token a responder sent, the way Vault itself reads it: `X-Vault-Token`, or
 * `Authorization: Bearer <token>` when X-Vault-Token is absent or empty. Returns "" when there is none;
 * the caller must refuse "" without contacting Vault (node-vault would replace it with its own token).
 */
export function tokenFromHeaders(headers: IncomingHttpHeaders): string {
  const direct = (single(headers["x-vault-token"]) ?? "").trim();
  if (direct !== "") return direct;
  const authorization = (single(headers.authorization) ?? "").trim();
  const match = /^Bearer\s+(\S+)$/i.exec(authorization);
  return match?.[1] ?? "";
}
