import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { CarveApiClient, type FetchLike } from "../../client/api-client.js";
import * as cmd from "./commands.js";
import { CliError, EXIT, explain, parseSize, printable, type CliIo, type ExitCode } from "./common.js";
import { getArchive } from "./download.js";
import { nodeFetch, type TlsFiles } from "./node-fetch.js";

const DEFAULT_ADDR = "http://127.0.0.1:8000";

export const USAGE = `carvectl: osquery carves for incident responders (the osquery-carve-server responder API)

Usage: carvectl [global options] <command> [arguments and options]

Commands:
  list [--status receiving|complete] [--node PREFIX] [--since T] [--until T] [--limit N] [--cursor C] [--all]
  show ID                        one carve's metadata
  files ID                       the files inside the archive (index, type, size, path, SHA-256)
  get ID [-o FILE] [--force]     download the archive; resumes FILE.part; verifies its SHA-256
  extract ID --dest DIR [MEMBER...] [--max-file-size SIZE] [--max-total-size SIZE]
                                 extract (all, or the members named) into DIR, never outside it
  cat ID MEMBER | cat ID --index N
                                 one file's content to stdout, its SHA-256 verified
  verify ID --sha256 HOST_SHA256 compare with the host's carves.sha256 (recorded in the audit trail)
  hold ID --reason TEXT          place a legal hold (admin)
  release ID                     lift the legal hold (admin)
  audit [--carve ID] [--action A] [--since T] [--until T] [--limit N] [--cursor C]   the audit trail (admin)

Global options:
  --addr URL        the service (default: $CARVE_ADDR, else ${DEFAULT_ADDR})
  --ca-cert FILE    CA of the server's certificate ($CARVE_CACERT)
  --client-cert FILE, --client-key FILE   client certificate for a mutual-TLS front ($CARVE_CLIENT_CERT, $CARVE_CLIENT_KEY)
  --json            JSON output even on a terminal (the default when stdout is not one)

The Vault token is read from $VAULT_TOKEN, else ~/.vault-token (what \`vault login\` writes).

Exit codes: 0 ok, 1 failed, 2 usage, 3 token missing/refused/lacking the right, 4 no such carve or member,
  5 not possible now (receiving, held, not a tar, not a file), 6 SHA-256 mismatch, 7 output file exists,
  8 extract refused members, 9 service/Vault/storage unavailable or download broke off, 130 interrupted
`;

const OPTIONS = {
  addr: { type: "string" },
  "ca-cert": { type: "string" },
  "client-cert": { type: "string" },
  "client-key": { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean" },
  status: { type: "string" },
  node: { type: "string" },
  since: { type: "string" },
  until: { type: "string" },
  limit: { type: "string" },
  cursor: { type: "string" },
  all: { type: "boolean" },
  output: { type: "string", short: "o" },
  force: { type: "boolean" },
  dest: { type: "string" },
  "max-file-size": { type: "string" },
  "max-total-size": { type: "string" },
  index: { type: "string" },
  sha256: { type: "string" },
  reason: { type: "string" },
  carve: { type: "string" },
  action: { type: "string" },
} as const;

type Option = keyof typeof OPTIONS;
const GLOBAL: Option[] = ["addr", "ca-cert", "client-cert", "client-key", "json", "help", "version"];
/** Per command: its options, and how many positional arguments it takes [min, max]. */
const COMMANDS: Record<string, { options: Option[]; args: [number, number]; usage: string }> = {
  list: { options: ["status", "node", "since", "until", "limit", "cursor", "all"], args: [0, 0], usage: "list [filters]" },
  show: { options: [], args: [1, 1], usage: "show ID" },
  files: { options: [], args: [1, 1], usage: "files ID" },
  get: { options: ["output", "force"], args: [1, 1], usage: "get ID [-o FILE] [--force]" },
  extract: { options: ["dest", "max-file-size", "max-total-size"], args: [1, Infinity], usage: "extract ID --dest DIR [MEMBER...]" },
  cat: { options: ["index"], args: [1, 2], usage: "cat ID MEMBER (or --index N)" },
  verify: { options: ["sha256"], args: [1, 1], usage: "verify ID --sha256 HOST_SHA256" },
  hold: { options: ["reason"], args: [1, 1], usage: 'hold ID --reason "why"' },
  release: { options: [], args: [1, 1], usage: "release ID" },
  audit: { options: ["carve", "action", "since", "until", "limit", "cursor"], args: [0, 0], usage: "audit [filters]" },
};

export const DEFAULT_MAX_FILE_SIZE = 4 * 1024 ** 3;
export const DEFAULT_MAX_TOTAL_SIZE = 16 * 1024 ** 3;

function version(): string {
  for (let dir = import.meta.dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const file = path.join(dir, "package.json");
    if (!existsSync(file)) continue;
    const pkg = JSON.parse(readFileSync(file, "utf8")) as { name?: string; version?: string };
    if (pkg.name === "osquery-carve-server") return pkg.version ?? "?";
  }
  return "?";
}

function readPem(file: string, flag: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new CliError(EXIT.USAGE, `cannot read ${flag} ${file}: ${(err as Error).message}`);
  }
}

/** The Vault token as Vault's own CLI finds it: VAULT_TOKEN, else ~/.vault-token. */
export function findToken(io: CliIo): string {
  const fromEnv = io.env.VAULT_TOKEN?.trim();
  if (fromEnv) return fromEnv;
  const file = path.join(io.home, ".vault-token");
  try {
    const t = readFileSync(file, "utf8").trim();
    if (t !== "") return t;
  } catch {
    // no file: same advice as an empty one
  }
  throw new CliError(EXIT.AUTH, "no Vault token: run `vault login` (it writes ~/.vault-token), or set VAULT_TOKEN");
}

function statusOf(text: string | undefined): "receiving" | "complete" | undefined {
  if (text === undefined || text === "receiving" || text === "complete") return text;
  throw new CliError(EXIT.USAGE, "--status is receiving or complete");
}

function integer(text: string | undefined, flag: string): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d{1,9}$/.test(text)) throw new CliError(EXIT.USAGE, `--${flag} ${JSON.stringify(text)}: give a whole number`);
  return Number(text);
}

/** Runs carvectl with these arguments; resolves to the exit code (errors are reported on io.stderr). */
export async function main(argv: string[], io: CliIo): Promise<ExitCode> {
  let address = DEFAULT_ADDR;
  try {
    let parsed;
    try {
      parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
    } catch (err) {
      throw new CliError(EXIT.USAGE, `${(err as Error).message.split("\n")[0] ?? "bad arguments"}: see carvectl --help`);
    }
    const { values, positionals } = parsed;
    if (values.version) {
      io.stdout.write(`carvectl ${version()}\n`);
      return EXIT.OK;
    }
    const [command, ...args] = positionals;
    if (values.help || command === undefined || command === "help") {
      (command === undefined && !values.help ? io.stderr : io.stdout).write(USAGE);
      return command === undefined && !values.help ? EXIT.USAGE : EXIT.OK;
    }
    const spec = COMMANDS[command];
    if (!spec) throw new CliError(EXIT.USAGE, `unknown command ${JSON.stringify(printable(command))}: see carvectl --help`);
    for (const name of Object.keys(values) as Option[]) {
      if (!GLOBAL.includes(name) && !spec.options.includes(name)) throw new CliError(EXIT.USAGE, `--${name} is not an option of ${command}: carvectl ${spec.usage}`);
    }
    if (args.length < spec.args[0] || args.length > spec.args[1]) throw new CliError(EXIT.USAGE, `usage: carvectl ${spec.usage}`);

    address = (values.addr ?? io.env.CARVE_ADDR ?? DEFAULT_ADDR).replace(/\/+$/, "");
    if (!/^https?:\/\/[^/]/.test(address)) throw new CliError(EXIT.USAGE, `CARVE_ADDR / --addr ${JSON.stringify(address)}: give http(s)://host:port`);
    const tlsFlags = { ca: values["ca-cert"] ?? io.env.CARVE_CACERT, cert: values["client-cert"] ?? io.env.CARVE_CLIENT_CERT, key: values["client-key"] ?? io.env.CARVE_CLIENT_KEY };
    if ((tlsFlags.cert === undefined) !== (tlsFlags.key === undefined)) throw new CliError(EXIT.USAGE, "--client-cert and --client-key go together");
    let fetcher: FetchLike | undefined;
    if (tlsFlags.ca || tlsFlags.cert) {
      if (!address.startsWith("https://")) throw new CliError(EXIT.USAGE, "--ca-cert and --client-cert need an https:// address");
      const tls: TlsFiles = {};
      if (tlsFlags.ca) tls.ca = readPem(tlsFlags.ca, "--ca-cert");
      if (tlsFlags.cert && tlsFlags.key) {
        tls.cert = readPem(tlsFlags.cert, "--client-cert");
        tls.key = readPem(tlsFlags.key, "--client-key");
      }
      fetcher = nodeFetch(tls);
    }
    const client = new CarveApiClient({ address, token: findToken(io), userAgent: `carvectl/${version()}`, ...(fetcher ? { fetch: fetcher } : {}) });
    const ctx: cmd.Context = { client, io, human: !values.json && io.stdout.isTTY === true };
    const id = args[0] as string;
    switch (command) {
      case "list": {
        const status = statusOf(values.status);
        const limit = integer(values.limit, "limit");
        const params = { ...(status ? { status } : {}), ...(values.node ? { node: values.node } : {}), ...(values.since ? { since: values.since } : {}), ...(values.until ? { until: values.until } : {}), ...(limit !== undefined ? { limit } : {}), ...(values.cursor ? { cursor: values.cursor } : {}) };
        return await cmd.list(ctx, params, values.all === true);
      }
      case "show":
        return await cmd.show(ctx, id);
      case "files":
        return await cmd.files(ctx, id);
      case "get":
        return await getArchive(client, io, { carveId: id, output: values.output, force: values.force === true, json: values.json === true });
      case "extract": {
        if (!values.dest) throw new CliError(EXIT.USAGE, `extract needs --dest DIR: carvectl ${spec.usage}`);
        const limits = {
          maxFileSize: values["max-file-size"] ? parseSize(values["max-file-size"], "--max-file-size") : DEFAULT_MAX_FILE_SIZE,
          maxTotalSize: values["max-total-size"] ? parseSize(values["max-total-size"], "--max-total-size") : DEFAULT_MAX_TOTAL_SIZE,
        };
        return await cmd.extract(ctx, id, values.dest, args.slice(1), limits);
      }
      case "cat": {
        const index = integer(values.index, "index");
        if ((index === undefined) === (args[1] === undefined)) throw new CliError(EXIT.USAGE, `usage: carvectl ${spec.usage}`);
        return await cmd.cat(ctx, id, args[1], index);
      }
      case "verify":
        if (!values.sha256) throw new CliError(EXIT.USAGE, `usage: carvectl ${spec.usage}`);
        return await cmd.verify(ctx, id, values.sha256);
      case "hold":
        if (!values.reason?.trim()) throw new CliError(EXIT.USAGE, `a hold needs a reason: carvectl ${spec.usage}`);
        return await cmd.hold(ctx, id, values.reason);
      case "release":
        return await cmd.hold(ctx, id, null);
      default: {
        const limit = integer(values.limit, "limit");
        const params = { ...(values.carve ? { carve_id: values.carve } : {}), ...(values.action ? { action: values.action } : {}), ...(values.since ? { since: values.since } : {}), ...(values.until ? { until: values.until } : {}), ...(limit !== undefined ? { limit } : {}), ...(values.cursor ? { cursor: values.cursor } : {}) };
        return await cmd.audit(ctx, params);
      }
    }
  } catch (err) {
    const e = explain(err, address);
    io.stderr.write(`carvectl: ${e.message.replace(/\s*\n\s*/g, " ")}\n`);
    return e.exitCode;
  }
}
