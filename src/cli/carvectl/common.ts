import { ApiError, TransportError } from "../../client/api-client.js";

/** carvectl's exit codes (docs/responder-api.md lists them; `carvectl --help` too). */
export const EXIT = {
  OK: 0,
  /** Anything not covered below: a reply carvectl did not expect, a local I/O error. */
  FAILED: 1,
  /** Wrong command line. */
  USAGE: 2,
  /** No token, or Vault refused it (401), or it lacks the right (403). */
  AUTH: 3,
  /** No such carve or member. */
  NOT_FOUND: 4,
  /** The carve cannot do that (now): still receiving, on hold, not a tar, not a regular file. */
  CONFLICT: 5,
  /** A SHA-256 does not match: a download that is not what was stored, or verify found a difference. */
  INTEGRITY: 6,
  /** The output file exists (--force replaces it). */
  EXISTS: 7,
  /** extract refused members that would have written outside DIR, or were over a cap. */
  UNSAFE_MEMBERS: 8,
  /** The service, Vault or storage is unreachable or unavailable; a download broke off (run it again). */
  UNAVAILABLE: 9,
  /** Interrupted (Ctrl-C); a download keeps its .part file and resumes. */
  INTERRUPTED: 130,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/** A failure carvectl explains in one line: what happened, then what to do. */
export class CliError extends Error {
  constructor(
    readonly exitCode: ExitCode,
    message: string,
  ) {
    super(message);
    this.name = "CliError";
  }
}

/** Where carvectl reads and writes: the process's streams in the binary, buffers in tests. */
export interface CliIo {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
  env: Record<string, string | undefined>;
  /** Home directory, for ~/.vault-token. */
  home: string;
  /** Aborted on Ctrl-C. */
  signal: AbortSignal;
}

const HINTS: Record<string, (e: ApiError) => [ExitCode, string]> = {
  TOKEN_MISSING: () => [EXIT.AUTH, "no Vault token reached the service: run `vault login`, or set VAULT_TOKEN"],
  TOKEN_INVALID: () => [EXIT.AUTH, "Vault does not accept the token (expired, revoked, another namespace): run `vault login` again"],
  ACCESS_DENIED: () => [
    EXIT.AUTH,
    "the Vault token lacks the right for this (list, show, files, get, extract, cat, verify: osquery-carve-download; hold, release, audit: osquery-carve-admin): ask your Vault administrator",
  ],
  CARVE_NOT_FOUND: () => [EXIT.NOT_FOUND, "no such carve (or it was deleted): `carvectl list` shows the carves"],
  MEMBER_NOT_FOUND: (e) => [EXIT.NOT_FOUND, `${e.message}: \`carvectl files ID\` lists the members`],
  CARVE_NOT_COMPLETE: (e) => [EXIT.CONFLICT, `${e.message}: wait for the agent to finish (\`carvectl show ID\` shows progress)`],
  CARVE_ON_HOLD: (e) => [EXIT.CONFLICT, `${e.message}: release the hold first`],
  HOLD_EXISTS: (e) => [EXIT.CONFLICT, `${e.message}`],
  ARCHIVE_NOT_TAR: (e) => [EXIT.CONFLICT, `${e.message}: \`carvectl get ID\` still downloads the archive as stored`],
  MEMBER_NOT_A_FILE: (e) => [EXIT.CONFLICT, `${e.message}: only regular files have content`],
  HOST_SHA256_UNAVAILABLE: (e) => [EXIT.CONFLICT, e.message],
  INVALID_SHA256: (e) => [EXIT.USAGE, `${e.message}: pass the host's carves.sha256 (64 hex digits)`],
  INVALID_QUERY: (e) => [EXIT.USAGE, e.message],
  VAULT_UNAVAILABLE: (e) => [EXIT.UNAVAILABLE, `${e.message}`],
  VAULT_NOT_CONFIGURED: (e) => [EXIT.UNAVAILABLE, `${e.message}: the service's operator must set VAULT_ADDR`],
  STORAGE_UNAVAILABLE: (e) => [EXIT.UNAVAILABLE, `${e.message}`],
  SHUTTING_DOWN: (e) => [EXIT.UNAVAILABLE, `${e.message}: try again in a moment`],
  NOT_FOUND: (e) => [EXIT.FAILED, `${e.message}: is CARVE_ADDR the responder API of osquery-carve-server?`],
};

/** What carvectl says about a failure, and its exit code. */
export function explain(err: unknown, address: string): CliError {
  if (err instanceof CliError) return err;
  if (err instanceof ApiError) {
    const hint = HINTS[err.code];
    const [code, text] = hint ? hint(err) : [err.status >= 500 ? EXIT.UNAVAILABLE : EXIT.FAILED, err.message];
    return new CliError(code, err.requestId ? `${text} (request ${err.requestId})` : text);
  }
  if (err instanceof TransportError) {
    const tls = /certificate|self.signed|SSL|TLS|EPROTO|handshake/i.test(err.message);
    const hint = tls
      ? "check the server certificate's CA (--ca-cert) and, if the front asks for one, your client certificate (--client-cert, --client-key)"
      : `check CARVE_ADDR (now ${address}) and that the service is up`;
    return new CliError(EXIT.UNAVAILABLE, `${err.message}: ${hint}`);
  }
  if ((err as { name?: unknown }).name === "AbortError") return new CliError(EXIT.INTERRUPTED, "interrupted");
  const e = err as NodeJS.ErrnoException;
  if (typeof e.code === "string" && typeof e.path === "string") return new CliError(EXIT.FAILED, `${e.path}: ${e.message}`);
  return new CliError(EXIT.FAILED, `unexpected failure: ${(err as Error).message ?? String(err)}`);
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];
/** 1536 -> "1.5 KiB". */
export function humanBytes(n: number): string {
  let v = n;
  let u = 0;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${UNITS[u]}`;
}

/** Parses "10MiB", "1.5GiB", "4096" into bytes. */
export function parseSize(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|K|M|G|T)?$/i.exec(text.trim());
  if (!m) throw new CliError(EXIT.USAGE, `${flag} ${JSON.stringify(text)}: give a size such as 64MiB, 2GiB or 4096`);
  const unit = (m[2] ?? "B").toUpperCase().replace(/IB$/, "").replace(/^B$/, "");
  const power = ["", "K", "M", "G", "T"].indexOf(unit);
  return Math.floor(Number(m[1]) * 1024 ** power);
}

/** Rows as aligned columns (the terminal form of list, files, audit). */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join("  ")
      .trimEnd();
  return `${[line(headers), ...rows.map(line)].join("\n")}\n`;
}

/**
 * Terminal-safe text: control characters of a name from an archive must not drive the terminal, nor
 * bidirectional marks make "\u202eexe.txt" read as "txt.exe".
 */
export function printable(text: string): string {
  // eslint-disable-next-line no-control-regex -- exactly what is replaced
  return text.replace(/[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, "?");
}
