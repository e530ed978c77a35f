/**
 * The docs cannot drift from the service: every command block of README.md and docs/*.md fenced as
 * "```sh runnable" runs here against the real built service (dist/src/main.js, filesystem storage, the Vault
 * double), one bash session per file (set -euo pipefail, blocks in order), in a scratch directory. The README's
 * Development section documents the marker, the substitutions and the variables a block can use.
 */
import { execFile } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cliMain } from "../../scripts/emulator/index.js";
import { ROOT, spawnService, type ChildService } from "../support/service.js";
import { startVaultDouble, type VaultDouble } from "../support/vault-double.js";

const run = promisify(execFile);

/** Every runnable block of a markdown file, with the line its fence opens on. */
export function runnableBlocks(markdown: string): Array<{ line: number; code: string }> {
  const out: Array<{ line: number; code: string }> = [];
  const lines = markdown.split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (lines[i]?.trim() !== "```sh runnable") continue;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && lines[i]?.trim() !== "```"; i++) body.push(lines[i] ?? "");
    if (i >= lines.length) throw new Error(`unterminated runnable block at line ${start + 1}`);
    out.push({ line: start + 1, code: body.join("\n") });
  }
  return out;
}

const FILES = ["README.md", ...readdirSync(path.join(ROOT, "docs")).filter((f) => f.endsWith(".md")).map((f) => `docs/${f}`)];
const withBlocks = FILES.map((file) => ({ file, blocks: runnableBlocks(readFileSync(path.join(ROOT, file), "utf8")) })).filter(
  (f) => f.blocks.length > 0,
);

let vault: VaultDouble;
let svc: ChildService & { port: number };
let dataDir: string;
let scratch: string;
let carveId: string;
const READER = "hvs.CAESIdocsReaderToken0123456789abcdef";
const ADMIN = "hvs.CAESIdocsAdminToken0123456789abcdef0";

beforeAll(async () => {
  vault = await startVaultDouble();
  vault.addToken(READER, { policies: ["osquery-carve-download"], displayName: "userpass-responder" });
  vault.addToken(ADMIN, { policies: ["osquery-carve-admin", "osquery-carve-download"], displayName: "userpass-admin" });
  dataDir = await mkdtemp(path.join(tmpdir(), "runnable-docs-data-"));
  scratch = await mkdtemp(path.join(tmpdir(), "runnable-docs-work-"));
  // carvectl on PATH, as `npm link` (or a global install of the package) puts it.
  await mkdir(path.join(scratch, ".bin"));
  await symlink(path.join(ROOT, "dist/src/cli/carvectl.js"), path.join(scratch, ".bin/carvectl"));
  svc = await spawnService({ CARVE_DATA_DIR: dataDir, VAULT_ADDR: vault.url, LOG_LEVEL: "warn" });
  let out = "";
  const code = await cliMain(["--url", svc.url, "--file", "/etc/hosts", "--block-size", "8192", "--json"], {
    stdout: (t) => (out += t),
    stderr: () => undefined,
  });
  expect(code).toBe(0);
  carveId = (JSON.parse(out) as { carveId: string }).carveId;
}, 60_000);

afterAll(async () => {
  svc.proc.kill("SIGTERM");
  await svc.exited;
  await vault.close();
  await rm(dataDir, { recursive: true, force: true });
  await rm(scratch, { recursive: true, force: true });
});

/** The substitutions the README documents: the service's address, and npm run in the repository. */
function localize(code: string): string {
  const hostPort = `127.0.0.1:${svc.port}`;
  return code
    .replaceAll("https://carves.example.com:8443", `http://${hostPort}`)
    .replace(/\b(localhost|127\.0\.0\.1):8000\b/g, hostPort)
    .replace(/\bnpm run /g, `npm --prefix ${JSON.stringify(ROOT)} run `);
}

describe("runnable documentation", () => {
  it("is there: README.md and docs/responder-api.md have runnable blocks", () => {
    expect(withBlocks.map((f) => f.file)).toEqual(expect.arrayContaining(["README.md", "docs/responder-api.md"]));
  });

  it.each(withBlocks)("every runnable block of $file succeeds against a real service", async ({ file, blocks }) => {
    const script = [
      "set -euo pipefail",
      ...blocks.map((b) => `echo "=== ${file}:${b.line}" >&2\n${localize(b.code)}`),
    ].join("\n");
    try {
      await run("bash", ["-c", script], {
        cwd: scratch,
        timeout: 120_000,
        env: {
          PATH: `${path.join(scratch, ".bin")}:${process.env.PATH ?? ""}:/usr/sbin:/sbin`,
          HOME: process.env.HOME ?? scratch,
          VAULT_TOKEN: READER,
          ADMIN_TOKEN: ADMIN,
          CARVE_ID: carveId,
        },
      });
    } catch (err) {
      const e = err as { code?: number; stdout?: string; stderr?: string };
      const failedAt = (e.stderr ?? "").split("\n").filter((l) => l.startsWith("=== ")).at(-1) ?? "(before the first block)";
      throw new Error(`${failedAt.slice(4)}: exit ${e.code}\n--- stdout\n${e.stdout ?? ""}\n--- stderr\n${e.stderr ?? ""}`);
    }
  }, 180_000);
});
