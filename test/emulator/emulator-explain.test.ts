/**
 * The README's "misbehave" example: a run whose carve fails (here because --corrupt asks the server to
 * refuse a block, which it does) must say why, not just exit 1.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cliMain } from "../../scripts/emulator/index.js";
import { startTestService, type TestService } from "../support/service.js";

let svc: TestService;
let dir: string;
let file: string;

beforeAll(async () => {
  svc = await startTestService();
  dir = await mkdtemp(path.join(tmpdir(), "emulator-explain-"));
  file = path.join(dir, "payload.bin");
  await writeFile(file, randomBytes(40_000));
});

afterAll(async () => {
  await svc.dispose();
  await rm(dir, { recursive: true, force: true });
});

async function emulate(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const code = await cliMain(["--url", svc.url, "--file", file, "--block-size", "8192", "--retry-delays", "10,10", ...args], {
    stdout: (t) => (stdout += t),
    stderr: (t) => (stderr += t),
  });
  return { code, stdout, stderr };
}

describe("a failed emulated carve says why", () => {
  it("--corrupt on a 5.22+ agent: the refused block, the abort, and that the refusal was asked for", async () => {
    const r = await emulate("--corrupt", "2");
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/status:\s+DATA POST FAILED/);
    expect(r.stderr).toMatch(/why: block 2 was refused: 409 \(non-JSON reply\) refused: BLOCK_CONFLICT/);
    expect(r.stderr).toMatch(/retries a refused block twice and then aborts/);
    expect(r.stderr).toMatch(/asked for \(--corrupt: different bytes for a block the server already stored\)/);
  });

  it("a start the server does not accept: the reply that said no", async () => {
    const r = await emulate("--start-endpoint", "/start_upload");
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/status:\s+START FAILED/);
    expect(r.stderr).toMatch(/why: the server did not open a session \(404 .*NOT_FOUND/);
  });

  it("a successful run adds nothing to stderr", async () => {
    const r = await emulate("--duplicate", "1", "--order", "reverse");
    expect(r.code).toBe(0);
    expect(r.stderr).toBe("");
  });
});
