/**
 * osquery carve agent emulator: builds a carve archive the way osquery does and uploads it with
 * osquery's exact wire protocol (see /work/shared/docs/osquery-carver-protocol.md).
 *
 *   npm run emulate -- --url https://host:port --file /etc/hosts [options]
 *
 * Target
 *   --url URL                 http:// or https://host:port (required)
 *   --start-endpoint P        --carver_start_endpoint (default "" = "/")
 *   --continue-endpoint P     --carver_continue_endpoint (default "" = "/")
 *   --node-api-key KEY        --tls_node_api: prefix every endpoint with /KEY
 *   --cacert F --cert F --key F   server CA bundle, client certificate and key (PEM)
 *   --servername NAME         TLS SNI / certificate name to expect
 *   --insecure                do not verify the server certificate
 *   --timeout-ms N            per-request timeout (default 16000, osquery's hard-coded 16 s)
 *   --retry-delays A,B        ms between attempts for 5.22+ (default 1000,4000)
 * Agent
 *   --agent-version V         default 5.23.0 (>= 5.22 retries/aborts, older skips failed blocks;
 *                             >= 5.23 sends Authorization: NodeKey; < 5.5 uses legacy names)
 *   --node-key K              node_key in the start body (default "")
 *   --carve-id ID --request-id ID   default: random UUIDs
 *   --block-size N            --carver_block_size (default 8192)
 * Archive
 *   --file F                  file to carve (repeatable; missing files and directories are skipped)
 *   --archive F               upload this existing file as-is instead of building one
 *   --keep-archive F          also copy the built archive to F
 *   --compression             --carver_compression (zstd)
 *   --legacy-names            member names are base names (agents before 5.5)
 *   --pax-times / --no-pax-times   pax atime/ctime/mtime records (default: agent version >= 5.22)
 * Misbehaviour (block ids; repeatable or comma separated)
 *   --duplicate IDS  --skip IDS  --corrupt IDS  --bad-base64 IDS  --wrong-length IDS
 *   --order reverse|shuffle|3,1,0,2
 * Output
 *   --json                    one JSON object on stdout (add --requests for every request record)
 *   --verbose                 one line per request on stderr
 *
 * Exit code: 0 when the carve status is SUCCESS, 1 otherwise (including usage errors).
 */
import { randomUUID } from "node:crypto";
import { copyFile, mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

import { runCarve } from "./agent.js";
import type { CarveInjectOptions, CarveResult, CarveTlsOptions, RunCarveOptions } from "./agent.js";
import { compareVersions } from "./agent.js";
import { buildCarveArchive } from "./archive.js";
import type { CarveArchive } from "./archive.js";

export interface CliIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

const defaultIo: CliIo = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
};

class UsageError extends Error {}

function intList(values: string[] | undefined, flag: string): number[] {
  const out: number[] = [];
  for (const v of values ?? []) {
    for (const part of v.split(",")) {
      if (part.trim() === "") continue;
      const n = Number(part);
      if (!Number.isInteger(n) || n < 0) throw new UsageError(`${flag}: not a block id: ${part}`);
      out.push(n);
    }
  }
  return out;
}

function positiveInt(value: string | undefined, flag: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new UsageError(`${flag}: expected a positive integer, got ${value}`);
  return n;
}

/** Runs the CLI with `argv` (without node and script). Resolves with the exit code. */
/** Faults the emulator injects on purpose: the server is meant to refuse them. */
const INJECTED: Record<string, string> = {
  corrupt: "--corrupt: different bytes for a block the server already stored",
  badBase64: "--bad-base64: a block whose data is not base64",
  wrongLength: "--wrong-length: a block one byte short",
};

/** One paragraph saying why a carve did not succeed, so a failing run is never silent. */
export function explainFailure(result: CarveResult, agentVersion: string): string {
  const failed = result.requests.find((r) => !r.ok);
  if (result.status === "START FAILED" || failed === undefined || failed.kind === "start") {
    const reply = failed ? `${failed.statusCode ?? "no reply"} ${failed.error ?? ""} ${failed.body.slice(0, 200)}`.trim() : "no session_id";
    return `why: the server did not open a session (${reply}); the agent gives up on the carve, as osquery does.`;
  }
  const what = INJECTED[failed.variant];
  const reply = `${failed.statusCode ?? "no reply"}${failed.error ? ` (${failed.error})` : ""} ${failed.body.slice(0, 200)}`.trim();
  const lines = [
    `why: block ${failed.blockId} was refused: ${reply}.`,
    // Only 5.22+ agents fail a carve on a refused block (older ones skip it and report success).
    `An osquery ${agentVersion} agent retries a refused block twice and then aborts the whole carve (status ${result.status}).`,
  ];
  if (what !== undefined) {
    lines.push(
      `That refusal was asked for (${what}): the server keeps the first bytes it stored and says no to the rest. ` +
        "Leave the option out, or use --duplicate / --skip / --order, which a carve survives.",
    );
  }
  return lines.join("\n");
}

export async function main(argv: string[], io: CliIo = defaultIo): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        url: { type: "string" },
        file: { type: "string", multiple: true },
        archive: { type: "string" },
        "keep-archive": { type: "string" },
        "block-size": { type: "string" },
        compression: { type: "boolean" },
        "start-endpoint": { type: "string" },
        "continue-endpoint": { type: "string" },
        "node-api-key": { type: "string" },
        "agent-version": { type: "string" },
        "node-key": { type: "string" },
        "carve-id": { type: "string" },
        "request-id": { type: "string" },
        "legacy-names": { type: "boolean" },
        "pax-times": { type: "boolean" },
        "no-pax-times": { type: "boolean" },
        cacert: { type: "string" },
        cert: { type: "string" },
        key: { type: "string" },
        servername: { type: "string" },
        insecure: { type: "boolean" },
        "timeout-ms": { type: "string" },
        "retry-delays": { type: "string" },
        duplicate: { type: "string", multiple: true },
        skip: { type: "string", multiple: true },
        corrupt: { type: "string", multiple: true },
        "bad-base64": { type: "string", multiple: true },
        "wrong-length": { type: "string", multiple: true },
        order: { type: "string" },
        json: { type: "boolean" },
        requests: { type: "boolean" },
        verbose: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (err) {
    io.stderr(`error: ${(err as Error).message}\n`);
    return 1;
  }
  if (values.help) {
    io.stdout(
      "usage: emulate --url https://host:port --file F [--file F ...] [--block-size N] [--compression]\n" +
        "  [--start-endpoint P] [--continue-endpoint P] [--node-api-key K] [--agent-version V] [--node-key K]\n" +
        "  [--carve-id ID] [--request-id ID] [--legacy-names] [--pax-times|--no-pax-times]\n" +
        "  [--cacert F --cert F --key F] [--servername N] [--insecure] [--timeout-ms N] [--retry-delays A,B]\n" +
        "  [--duplicate IDS] [--skip IDS] [--corrupt IDS] [--bad-base64 IDS] [--wrong-length IDS]\n" +
        "  [--order reverse|shuffle|IDS] [--archive F] [--keep-archive F] [--json [--requests]] [--verbose]\n",
    );
    return 0;
  }

  let tmpDir: string | undefined;
  try {
    if (values.url === undefined) throw new UsageError("--url is required");
    if (values.archive === undefined && (values.file ?? []).length === 0) {
      throw new UsageError("at least one --file (or --archive) is required");
    }
    const agentVersion = values["agent-version"] ?? "5.23.0";
    const blockSize = positiveInt(values["block-size"], "--block-size", 8192);
    const timeoutMs = positiveInt(values["timeout-ms"], "--timeout-ms", 16000);
    const retryDelaysMs =
      values["retry-delays"] === undefined ? undefined : intList([values["retry-delays"]], "--retry-delays");
    const carveId = values["carve-id"] ?? randomUUID();

    const inject: CarveInjectOptions = {};
    const dup = intList(values.duplicate, "--duplicate");
    const skip = intList(values.skip, "--skip");
    const corrupt = intList(values.corrupt, "--corrupt");
    const badBase64 = intList(values["bad-base64"], "--bad-base64");
    const wrongLength = intList(values["wrong-length"], "--wrong-length");
    if (dup.length) inject.duplicate = dup;
    if (skip.length) inject.skip = skip;
    if (corrupt.length) inject.corrupt = corrupt;
    if (badBase64.length) inject.badBase64 = badBase64;
    if (wrongLength.length) inject.wrongLength = wrongLength;
    if (values.order !== undefined) {
      inject.order =
        values.order === "reverse" || values.order === "shuffle" ? values.order : intList([values.order], "--order");
    }

    const tls: CarveTlsOptions = {};
    if (values.cacert !== undefined) tls.ca = await readFile(values.cacert);
    if (values.cert !== undefined) tls.cert = await readFile(values.cert);
    if (values.key !== undefined) tls.key = await readFile(values.key);
    if (values.servername !== undefined) tls.servername = values.servername;
    if (values.insecure) tls.rejectUnauthorized = false;

    let archive: CarveArchive | undefined;
    let archivePath: string;
    if (values.archive !== undefined) {
      archivePath = values.archive;
    } else {
      tmpDir = await mkdtemp(path.join(os.tmpdir(), "osquery-emulator-"));
      const compression = values.compression ?? false;
      archivePath = path.join(tmpDir, `carve_${carveId}.tar${compression ? ".zst" : ""}`);
      archive = await buildCarveArchive({
        paths: values.file ?? [],
        carveId,
        outFile: archivePath,
        style: values["legacy-names"] || compareVersions(agentVersion, "5.5.0") < 0 ? "legacy" : "modern",
        paxTimes: values["no-pax-times"]
          ? false
          : (values["pax-times"] ?? compareVersions(agentVersion, "5.22.0") >= 0),
        compression,
      });
      if (values["keep-archive"] !== undefined) await copyFile(archivePath, values["keep-archive"]);
    }

    const opts: RunCarveOptions = {
      baseUrl: values.url,
      archivePath,
      blockSize,
      carveId,
      agentVersion,
      timeoutMs,
      tls,
      inject,
    };
    if (values["start-endpoint"] !== undefined) opts.startEndpoint = values["start-endpoint"];
    if (values["continue-endpoint"] !== undefined) opts.continueEndpoint = values["continue-endpoint"];
    if (values["node-api-key"] !== undefined) opts.nodeApiKey = values["node-api-key"];
    if (values["node-key"] !== undefined) opts.nodeKey = values["node-key"];
    if (values["request-id"] !== undefined) opts.requestId = values["request-id"];
    if (retryDelaysMs !== undefined) opts.retryDelaysMs = retryDelaysMs;
    if (values.verbose) {
      opts.onRequest = (r) => {
        const id = r.kind === "start" ? "start" : `block ${r.blockId}`;
        io.stderr(
          `${id} attempt ${r.attempt}${r.silentResend ? " (resend)" : ""} ${r.variant}: ` +
            `${r.statusCode ?? "-"} ${r.ok ? "ok" : `FAILED (${r.error ?? "?"})`} ${r.latencyMs.toFixed(1)} ms ` +
            `${r.body.slice(0, 120)}\n`,
        );
      };
    }

    const result = await runCarve(opts);
    const failed = result.requests.filter((r) => !r.ok).length;
    if (values.json) {
      const { requests, ...rest } = result;
      io.stdout(
        `${JSON.stringify({
          ...rest,
          requestCount: requests.length,
          failedRequests: failed,
          ...(archive ? { tarSize: archive.tarSize, members: archive.members } : {}),
          ...(values.requests ? { requests } : {}),
        })}\n`,
      );
    } else {
      const lines = [
        `carve_id:   ${result.carveId}`,
        `request_id: ${result.requestId}`,
        `session_id: ${result.sessionId ?? "(none)"}`,
        `sha256:     ${result.sha256}`,
        `size:       ${result.carveSize} bytes${archive && archive.tarSize !== archive.size ? ` (tar ${archive.tarSize} bytes, zstd)` : ""}`,
        `blocks:     ${result.blockCount} x ${result.blockSize} bytes`,
        ...(archive ? [`members:    ${archive.members.length}`] : []),
        `requests:   ${result.requests.length} (${failed} failed)`,
        `status:     ${result.status}`,
      ];
      io.stdout(`${lines.join("\n")}\n`);
    }
    if (result.status !== "SUCCESS") io.stderr(`${explainFailure(result, agentVersion)}\n`);
    return result.status === "SUCCESS" ? 0 : 1;
  } catch (err) {
    io.stderr(`error: ${(err as Error).message}\n`);
    return 1;
  } finally {
    if (tmpDir !== undefined) await rm(tmpDir, { recursive: true, force: true });
  }
}

const entry = process.argv[1];
if (entry !== undefined && import.meta.url === pathToFileURL(path.resolve(entry)).href) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`error: ${String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
