/**
 * Contract fuzzing: schemathesis (PyPI; .ci/run installs it into .tmp/schemathesis) generates requests for
 * every operation of docs/openapi.json, valid and invalid, and sends them to a real listening service with
 * the Vault double deciding: with a token that holds every right, with an unknown token, and with none. It
 * fails on any 5xx and on any reply that does not conform to the document (status, media type, headers,
 * body). The document's example carve id exists (uploaded by the emulated agent) so that successes are
 * reached too. Bounded: a fixed number of examples per operation, one worker, a fixed seed.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildCarveArchive } from "../../scripts/emulator/index.js";
import { EXAMPLE_CARVE_ID } from "../../src/http/api-contract.js";
import { uploadCarve } from "../support/carve-upload.js";
import { positiveCountFromEnv } from "../support/fuzz-runs.js";
import { OPENAPI_PATH } from "../support/openapi-check.js";
import { ROOT, startTestService, type TestService } from "../support/service.js";
import { startVaultDouble, type VaultDouble } from "../support/vault-double.js";

const run = promisify(execFile);
const SCHEMATHESIS = process.env.CARVE_SCHEMATHESIS ?? path.join(ROOT, ".tmp/schemathesis/bin/schemathesis");
/**
 * Examples per operation: 25 with the valid token (where the service does the most), 10 without one (every
 * reply is a 401, and its shape is what is checked). About two minutes on 2 cores in all.
 */
const MAX_EXAMPLES = positiveCountFromEnv("CARVE_FUZZ_EXAMPLES", 25);
const MAX_EXAMPLES_UNAUTHENTICATED = Math.ceil(MAX_EXAMPLES / 2.5);
const CHECKS = [
  "not_a_server_error",
  "status_code_conformance",
  "content_type_conformance",
  "response_headers_conformance",
  "response_schema_conformance",
  "negative_data_rejection",
  "missing_required_header",
  "ignored_auth",
].join(",");

let vault: VaultDouble;
let svc: TestService;
let work: string;
const ALL_RIGHTS = "hvs.CAESIfuzzAllRights0123456789abcdefgh";

beforeAll(async () => {
  vault = await startVaultDouble();
  vault.addToken(ALL_RIGHTS, {
    policies: ["osquery-carve-download", "osquery-carve-admin", "osquery-carve-import"],
    displayName: "userpass-fuzzer",
  });
  // warn: thousands of requests; the 5xx, if any, are what schemathesis reports.
  svc = await startTestService({ VAULT_ADDR: vault.url, LOG_LEVEL: "warn" });
  work = await mkdtemp(path.join(tmpdir(), "contract-fuzz-"));
  await mkdir(path.join(work, "etc"));
  await writeFile(path.join(work, "etc/hosts"), "127.0.0.1 localhost\n");
  const built = await buildCarveArchive({ paths: [path.join(work, "etc/hosts")], carveId: EXAMPLE_CARVE_ID, outFile: path.join(work, "example.tar") });
  await uploadCarve(svc.url, await readFile(built.path), { dir: work, carveId: EXAMPLE_CARVE_ID });
}, 60_000);

afterAll(async () => {
  await svc.dispose();
  await vault.close();
  await rm(work, { recursive: true, force: true });
});

async function schemathesis(label: string, extra: string[], examples = MAX_EXAMPLES): Promise<void> {
  const args = [
    "run",
    OPENAPI_PATH,
    "--url",
    svc.url,
    "--checks",
    CHECKS,
    "--max-examples",
    String(examples),
    "--seed",
    "17",
    "--workers",
    "1",
    "--phases",
    "examples,coverage,fuzzing",
    "--request-timeout",
    "30",
    "--generation-database",
    "none",
    "--suppress-health-check",
    "all",
    "--no-color",
    ...extra,
    ...(process.env.CARVE_FUZZ_ARGS ? process.env.CARVE_FUZZ_ARGS.split(" ") : []),
  ];
  try {
    await run(SCHEMATHESIS, args, { cwd: work, timeout: 240_000, maxBuffer: 64 << 20, env: { ...process.env, SCHEMATHESIS_HOOKS: "" } });
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    throw new Error(`schemathesis (${label}) exited ${e.code}:\n${(e.stdout ?? "").slice(-20_000)}\n${(e.stderr ?? "").slice(-4000)}`);
  }
}

describe("contract fuzzing with schemathesis", () => {
  it("is installed (bash .ci/run installs it into .tmp/schemathesis)", () => {
    expect(existsSync(SCHEMATHESIS), `${SCHEMATHESIS} missing: python3 -m venv .tmp/schemathesis && .tmp/schemathesis/bin/pip install schemathesis`).toBe(true);
  });

  // deleteCarve runs on its own, last: the example carve it deletes is what the other operations read.
  it("every operation but deleteCarve, with a token holding every right: no 5xx, every reply conforms", async () => {
    await schemathesis("valid token", ["--header", `X-Vault-Token: ${ALL_RIGHTS}`, "--exclude-operation-id", "deleteCarve"]);
  }, 300_000);

  it("every operation with an unknown token and with none", async () => {
    await schemathesis("unknown token", ["--header", "X-Vault-Token: hvs.CAESIunknownTokenForFuzzing0000000"], MAX_EXAMPLES_UNAUTHENTICATED);
    await schemathesis("no token", [], MAX_EXAMPLES_UNAUTHENTICATED);
  }, 300_000);

  it("deleteCarve with a token holding every right", async () => {
    await schemathesis("valid token, delete", ["--header", `X-Vault-Token: ${ALL_RIGHTS}`, "--include-operation-id", "deleteCarve"]);
  }, 300_000);
});
