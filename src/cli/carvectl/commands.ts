import { createHash } from "node:crypto";
import path from "node:path";
import type { AuditParams, CarveApiClient, CarveSummary, ListCarvesParams, TarMemberView } from "../../client/api-client.js";
import { CliError, EXIT, humanBytes, printable, table, type CliIo, type ExitCode } from "./common.js";
import { extractTar, type ExtractLimits } from "./extract.js";

/** What every command gets: the client, the streams, and whether to print for a person or for a program. */
export interface Context {
  client: CarveApiClient;
  io: CliIo;
  /** A table or sentences (a terminal, no --json) rather than JSON. */
  human: boolean;
}

const json = (ctx: Context, value: unknown): void => {
  ctx.io.stdout.write(`${JSON.stringify(value, null, ctx.io.stdout.isTTY ? 2 : undefined)}\n`);
};

const when = (iso: string | null): string => (iso === null ? "-" : iso.replace("T", " ").replace(/\.\d+Z$/, "Z"));

export async function list(ctx: Context, params: ListCarvesParams, all: boolean): Promise<ExitCode> {
  let carves: CarveSummary[];
  let nextCursor: string | null = null;
  if (all) {
    carves = [];
    for await (const c of ctx.client.allCarves(params)) carves.push(c);
  } else {
    const page = await ctx.client.listCarves(params);
    carves = page.carves;
    nextCursor = page.nextCursor;
  }
  if (!ctx.human) {
    json(ctx, { carves, nextCursor });
    return EXIT.OK;
  }
  const rows = carves.map((c) => [
    c.carveId,
    c.status,
    humanBytes(c.carveSize),
    `${c.blocksReceived}/${c.blockCount}`,
    c.compression ?? "-",
    when(c.createdAt),
    c.hold ? "held" : "-",
    c.origin === "import" ? "import" : (c.agent.certificate?.subjectDn ?? c.agent.address ?? "-"),
  ]);
  ctx.io.stdout.write(table(["CARVE ID", "STATUS", "SIZE", "BLOCKS", "ZSTD", "CREATED", "HOLD", "FROM"], rows.map((r) => r.map(printable))));
  if (nextCursor !== null) ctx.io.stdout.write(`more: carvectl list --cursor ${nextCursor} (or --all)\n`);
  return EXIT.OK;
}

export async function show(ctx: Context, carveId: string): Promise<ExitCode> {
  const c = await ctx.client.getCarve(carveId);
  if (!ctx.human) {
    json(ctx, c);
    return EXIT.OK;
  }
  const lines: Array<[string, string]> = [
    ["carve", c.carveId],
    ["status", c.status + (c.status === "complete" ? "" : ` (${c.blocksReceived} of ${c.blockCount} blocks, ${c.blocksMissing} missing)`)],
    ["size", `${humanBytes(c.carveSize)} (${c.carveSize} bytes)`],
    ["sha256", c.sha256 ?? "-"],
    ["compression", c.compression ?? "-"],
    ["origin", c.origin],
    ["node", c.node.nodeKeySha256Prefix ?? "-"],
    ["agent", [c.agent.address, c.agent.userAgent, c.agent.certificate?.subjectDn].filter(Boolean).join(", ") || "-"],
    ["created", when(c.createdAt)],
    ["completed", when(c.completedAt)],
    ["hold", c.hold ? `${c.hold.reason} (by ${c.hold.by}, ${when(c.hold.at)})` : "-"],
    ["expires", when(c.expiresAt)],
    ["verified", c.lastVerification ? `${c.lastVerification.match ? "match" : "MISMATCH"} (by ${c.lastVerification.by ?? "?"}, ${when(c.lastVerification.at)})` : "-"],
  ];
  if (c.imported) lines.push(["imported from", [c.imported.host, c.imported.originalPath].filter(Boolean).join(":") || "-"]);
  if (c.missingBlockIds.length > 0) lines.push(["missing blocks", c.missingBlockIds.join(" ")]);
  if (c.archive) lines.push(["archive", `${c.archive.fileName}: carvectl get ${c.carveId}`]);
  const width = Math.max(...lines.map(([k]) => k.length));
  ctx.io.stdout.write(lines.map(([k, v]) => `${k.padEnd(width)}  ${printable(v)}`).join("\n") + "\n");
  return EXIT.OK;
}

export async function files(ctx: Context, carveId: string): Promise<ExitCode> {
  const listing = await ctx.client.listFiles(carveId);
  if (!ctx.human) {
    json(ctx, listing);
    return EXIT.OK;
  }
  const rows = listing.members.map((m, i) => [
    String(i),
    m.type,
    m.type === "file" ? humanBytes(m.size) : "-",
    m.mode,
    when(m.mtime),
    (m.path ?? m.name) + (m.linkTarget !== null ? ` -> ${m.linkTarget}` : ""),
    m.sha256 ?? "-",
  ]);
  ctx.io.stdout.write(table(["#", "TYPE", "SIZE", "MODE", "MTIME", "PATH", "SHA256"], rows.map((r) => r.map(printable))));
  if (listing.truncated) ctx.io.stdout.write(`(listing stopped at a bound: ${listing.truncatedReason ?? "?"})\n`);
  return EXIT.OK;
}

/** The member a `cat` or an --index names: its exact name, its host path, or its index. */
export function findMember(members: TarMemberView[], name: string | undefined, index: number | undefined): number {
  if (index !== undefined) {
    if (index >= members.length) throw new CliError(EXIT.NOT_FOUND, `no member #${index}: the archive lists ${members.length} (carvectl files ID)`);
    return index;
  }
  const hits = members.flatMap((m, i) => (m.name === name || m.path === name ? [i] : []));
  if (hits.length === 0) throw new CliError(EXIT.NOT_FOUND, `no member named ${JSON.stringify(name)}: carvectl files ID lists names and paths`);
  if (hits.length > 1) throw new CliError(EXIT.USAGE, `${hits.length} members are named ${JSON.stringify(name)} (#${hits.join(", #")}): pick one with --index N`);
  return hits[0] as number;
}

export async function cat(ctx: Context, carveId: string, member: string | undefined, index: number | undefined): Promise<ExitCode> {
  const listing = await ctx.client.listFiles(carveId);
  const n = findMember(listing.members, member, index);
  const file = await ctx.client.openFile(carveId, n, { signal: ctx.io.signal });
  const hash = createHash("sha256");
  let bytes = 0;
  try {
    for await (const chunk of file.body) {
      hash.update(chunk);
      bytes += chunk.length;
      if (!ctx.io.stdout.write(chunk)) await new Promise((resolve) => ctx.io.stdout.once("drain", resolve));
    }
  } catch (err) {
    if (ctx.io.signal.aborted) throw new CliError(EXIT.INTERRUPTED, "interrupted");
    throw new CliError(EXIT.UNAVAILABLE, `the file broke off after ${bytes} bytes: run the command again (${(err as Error).message})`);
  }
  const actual = hash.digest("hex");
  if (actual !== file.sha256 || (file.length !== null && bytes !== file.length)) {
    throw new CliError(EXIT.INTEGRITY, `the ${bytes} bytes written have SHA-256 ${actual}, the file has ${file.sha256}: discard them`);
  }
  return EXIT.OK;
}

export async function verify(ctx: Context, carveId: string, sha256: string): Promise<ExitCode> {
  const r = await ctx.client.verify(carveId, sha256);
  if (!ctx.human) json(ctx, r);
  else if (r.match) ctx.io.stdout.write(`match: the stored archive has the host's SHA-256 ${r.storedSha256} (recorded)\n`);
  if (!r.match) {
    if (ctx.human) ctx.io.stdout.write(`MISMATCH: stored ${r.storedSha256}, host ${r.claimedSha256} (recorded)\n`);
    return EXIT.INTEGRITY;
  }
  return EXIT.OK;
}

export async function hold(ctx: Context, carveId: string, reason: string | null): Promise<ExitCode> {
  const r = reason === null ? await ctx.client.releaseHold(carveId) : await ctx.client.placeHold(carveId, reason);
  if (!ctx.human) json(ctx, r);
  else ctx.io.stdout.write(r.hold ? `held: ${printable(r.hold.reason)} (by ${printable(r.hold.by)})\n` : `released: ${r.carveId} is not held\n`);
  return EXIT.OK;
}

export async function audit(ctx: Context, params: AuditParams): Promise<ExitCode> {
  const page = await ctx.client.audit(params);
  if (!ctx.human) {
    json(ctx, page);
    return EXIT.OK;
  }
  const rows = page.events.map((e) => [
    when(e.at),
    e.action,
    e.result,
    e.actor.displayName ?? e.actor.entityId ?? "-",
    e.carveId ?? "-",
    String(e.detail.status ?? "-"),
    e.client.address ?? "-",
  ]);
  ctx.io.stdout.write(table(["AT", "ACTION", "RESULT", "ACTOR", "CARVE", "STATUS", "CLIENT"], rows.map((r) => r.map(printable))));
  if (page.nextCursor !== null) ctx.io.stdout.write(`more: carvectl audit --cursor ${page.nextCursor}\n`);
  return EXIT.OK;
}

export async function extract(ctx: Context, carveId: string, dest: string, members: string[], limits: ExtractLimits): Promise<ExitCode> {
  const carve = await ctx.client.getCarve(carveId);
  if (carve.status !== "complete" || carve.sha256 === null) {
    throw new CliError(EXIT.CONFLICT, `carve ${carve.carveId} is ${carve.status}: nothing to extract yet`);
  }
  const download = await ctx.client.openArchive(carveId, { signal: ctx.io.signal });
  let result;
  try {
    result = await extractTar(download.body, carve.compression, dest, members, limits);
  } catch (err) {
    if (err instanceof CliError) throw err;
    if (ctx.io.signal.aborted) throw new CliError(EXIT.INTERRUPTED, "interrupted: what was extracted so far stays in DIR");
    const name = (err as { name?: unknown }).name;
    if (name === "TarFormatError" || name === "ZstdFormatError") throw new CliError(EXIT.CONFLICT, `the archive is not a readable tar: ${(err as Error).message}`);
    if (name === "TypeError") throw new CliError(EXIT.UNAVAILABLE, `the archive broke off: run the command again (${(err as Error).message})`);
    throw err;
  }
  for (const r of result.refused) ctx.io.stderr.write(`carvectl: refused ${printable(JSON.stringify(r.member))}: ${printable(r.reason)}\n`);
  if (result.stoppedAt) ctx.io.stderr.write(`carvectl: stopped reading at ${result.stoppedAt}: raise --max-total-size to read further\n`);
  for (const m of result.unmatched) ctx.io.stderr.write(`carvectl: no member matches ${printable(JSON.stringify(m))}: carvectl files ${carveId} lists them\n`);
  const verified = result.sha256 === null ? null : result.sha256 === carve.sha256;
  if (!ctx.human) json(ctx, { carveId, dest: path.resolve(dest), ...result, verified });
  else {
    for (const e of result.extracted) ctx.io.stdout.write(`${e.type === "directory" ? "d" : e.type === "file" ? "f" : "l"} ${printable(e.path)}\n`);
    ctx.io.stdout.write(`extracted ${result.extracted.length} of ${result.extracted.length + result.refused.length} members into ${printable(path.resolve(dest))}\n`);
  }
  if (verified === false) {
    ctx.io.stderr.write(`carvectl: the archive received has SHA-256 ${result.sha256 ?? "?"}, the carve ${carve.sha256}: discard what was extracted\n`);
    return EXIT.INTEGRITY;
  }
  if (result.refused.length > 0 || result.stoppedAt) return EXIT.UNSAFE_MEMBERS;
  if (result.unmatched.length > 0) return EXIT.NOT_FOUND;
  return EXIT.OK;
}
