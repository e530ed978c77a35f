/**
 * The layering rules of .dependency-cruiser.cjs, which `npm run lint` enforces: the real depcruise binary passes
 * src/ as it is, and fails copies of src/ with one import added that makes a cycle or breaks an inward rule,
 * naming the rule and the import. A rule that does not bite would pass both.
 */
import { execFile } from "node:child_process";
import { appendFile, cp, mkdtemp, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";

const ROOT = path.resolve(import.meta.dirname, "../..");
const DEPCRUISE = path.join(ROOT, "node_modules/.bin/depcruise");
const run = promisify(execFile);
const copies: string[] = [];

interface Violation {
  rule: string;
  from: string;
  to: string;
}

/** Runs depcruise as `npm run lint` does, in `dir`; its violations as (rule, from, first step to). */
async function depcruise(dir: string): Promise<{ code: number; output: string; violations: Violation[] }> {
  let code = 0;
  let output: string;
  try {
    output = (await run(DEPCRUISE, ["src", "--config", ".dependency-cruiser.cjs"], { cwd: dir })).stdout;
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    code = e.code;
    output = e.stdout + e.stderr;
  }
  // "error <rule>: <from> → <to>" (a cycle continues "→ <next>" over the following lines).
  const flat = output.replace(/\s+/g, " ");
  const violations = [...flat.matchAll(/error ([\w-]+): (\S+) → (\S+)/g)].map(([, rule = "", from = "", to = ""]) => ({ rule, from, to }));
  return { code, output, violations };
}

/** A copy of src/ (with the real tsconfig and rules) where each given file gets the given import appended. */
async function copyWith(imports: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), "layering-"));
  copies.push(dir);
  await cp(path.join(ROOT, "src"), path.join(dir, "src"), { recursive: true });
  await cp(path.join(ROOT, "tsconfig.json"), path.join(dir, "tsconfig.json"));
  await cp(path.join(ROOT, ".dependency-cruiser.cjs"), path.join(dir, ".dependency-cruiser.cjs"));
  await symlink(path.join(ROOT, "node_modules"), path.join(dir, "node_modules"));
  for (const [file, specifier] of Object.entries(imports)) {
    await appendFile(path.join(dir, file), `\nimport "${specifier}";\n`);
  }
  return dir;
}

afterAll(async () => {
  for (const dir of copies) await rm(dir, { recursive: true, force: true });
});

describe("layering rules (npm run lint)", () => {
  it("pass on src/ as it is", async () => {
    const result = await depcruise(ROOT);
    expect(result.output).toMatch(/no dependency violations found/);
    expect(result.violations).toEqual([]);
    expect(result.code).toBe(0);
  });

  it("fail on an import cycle between modules, and between folders", async () => {
    const dir = await copyWith({
      "src/carves/base64.ts": "./geometry.js",
      "src/carves/geometry.ts": "./base64.js",
      // storage/filesystem imports carves/geometry.ts: carves/ importing storage/ tangles the two folders.
      "src/carves/tar-listing.ts": "../storage/model.js",
    });
    const result = await depcruise(dir);
    expect(result.code, result.output).not.toBe(0);
    const cycles = result.violations.filter((v) => v.rule === "no-circular");
    expect(cycles.map((v) => [v.from, v.to].sort().join(" "))).toContain("src/carves/base64.ts src/carves/geometry.ts");
    const folders = result.violations.filter((v) => v.rule === "no-circular-folders");
    expect(folders.map((v) => [v.from, v.to].sort().join(" "))).toContain("src/carves src/storage");
    // Only what was added: every module cycle found runs through the two files given a new import.
    for (const v of cycles) expect([v.from, v.to].some((f) => /src\/carves\/(base64|geometry)\.ts$/.test(f)), v.from).toBe(true);
  });

  it("fail on each inward rule broken, naming the rule and the import", async () => {
    const dir = await copyWith({
      "src/http/responder/carves.ts": "../../storage/filesystem/filesystem-blobs.js",
      "src/http/responder/audit.ts": "../../storage/listing.js",
      "src/http/app.ts": "../jobs/retention.js",
      "src/services/audit-events.ts": "../http/json-error.js",
      "src/services/custody.ts": "../storage/gridfs/gridfs-blobs.js",
      "src/storage/listing.ts": "../services/types.js",
      "src/cli/cleanup.ts": "../storage/sqlite/sqlite-catalog.js",
    });
    const result = await depcruise(dir);
    expect(result.code, result.output).not.toBe(0);
    const expected: Violation[] = [
      { rule: "http-only-inward", from: "src/http/responder/carves.ts", to: "src/storage/filesystem/filesystem-blobs.ts" },
      { rule: "implementations-only-via-factory", from: "src/http/responder/carves.ts", to: "src/storage/filesystem/filesystem-blobs.ts" },
      { rule: "http-only-inward", from: "src/http/responder/audit.ts", to: "src/storage/listing.ts" },
      { rule: "http-no-outer-layers", from: "src/http/app.ts", to: "src/jobs/retention.ts" },
      { rule: "services-not-http", from: "src/services/audit-events.ts", to: "src/http/json-error.ts" },
      { rule: "services-not-implementations", from: "src/services/custody.ts", to: "src/storage/gridfs/gridfs-blobs.ts" },
      { rule: "implementations-only-via-factory", from: "src/services/custody.ts", to: "src/storage/gridfs/gridfs-blobs.ts" },
      { rule: "storage-not-outer-layers", from: "src/storage/listing.ts", to: "src/services/types.ts" },
      { rule: "implementations-only-via-factory", from: "src/cli/cleanup.ts", to: "src/storage/sqlite/sqlite-catalog.ts" },
    ];
    for (const v of expected) expect(result.violations, result.output).toContainEqual(v);
    // Nothing else breaks a dependency rule: the factory's own imports of the backends are allowed.
    const dependencyRules = result.violations.filter((v) => !v.rule.startsWith("no-circular"));
    expect(dependencyRules).toHaveLength(expected.length);
  });
});
