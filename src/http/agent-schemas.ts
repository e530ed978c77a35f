import { z } from "zod";
import { SAFE_ID } from "../carves/geometry.js";

const safeId = z.string().max(128).regex(SAFE_ID, "must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}");
const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

/** osquery's start request (keys as the agent sends them; unknown keys are ignored for forward compatibility). */
export const startBodySchema = z.object({
  block_count: count.min(1),
  block_size: count.min(1),
  carve_size: count.min(1),
  carve_id: safeId,
  // "" from carves with no distributed query behind them (and the seed server's test client).
  request_id: z.union([z.literal(""), safeId]),
  node_key: z.string().max(4096).optional(),
});

export const blockBodySchema = z.object({
  block_id: count,
  session_id: safeId,
  request_id: z.string().max(256),
  /** A string after JSON.parse; the body's own bytes when body.ts fastBlockBody read it (decoded in place). */
  data: z.union([z.string(), z.instanceof(Buffer)]),
});

export type StartBody = z.infer<typeof startBodySchema>;
export type BlockBody = z.infer<typeof blockBodySchema>;

/** One-line explanation of the first validation problem; names fields, never echoes values. */
export function describeIssues(error: z.ZodError): string {
  const first = error.issues[0];
  if (!first) return "invalid";
  const where = first.path.length > 0 ? first.path.join(".") : "body";
  const more = error.issues.length > 1 ? ` (+${error.issues.length - 1} more)` : "";
  return `${where}: ${first.message}${more}`;
}
