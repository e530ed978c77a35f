/**
 * scripts/build.sh, which npm start / emulate / cleanup / import-seed / bench run as `--if-stale`: a clean
 * clone (no dist/) compiles, a fresh dist/ compiles nothing, any change under src/, scripts/ or console/ (the
 * web console, bundled into dist/console/) compiles again,
 * and a failed compile leaves no stamp (so the next run tries again). Run on a small copy of the project
 * layout (the real tsconfigs and build script, one source file, a one-line console, the repository's node_modules) so that the
 * repository's own dist/, which other suites run, is never touched.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, readFile, rm, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "../support/service.js";

const run = promisify(execFile);
let dir: string;

async function build(...args: string[]): Promise<{ code: number; stderr: string }> {
  try {
    const { stderr } = await run("bash", [path.join(dir, "scripts/build.sh"), ...args], { cwd: dir });
    return { code: 0, stderr };
  } catch (err) {
    const e = err as { code: number; stderr: string };
    return { code: e.code, stderr: e.stderr };
  }
}

/** Moves a file's time forward, as an edit would (mtime resolution must not hide it). */
async function touchLater(file: string, seconds: number): Promise<void> {
  const t = new Date(Date.now() + seconds * 1000);
  await utimes(file, t, t);
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "build-fresh-"));
  await mkdir(path.join(dir, "src"), { recursive: true });
  await mkdir(path.join(dir, "scripts"), { recursive: true });
  for (const f of ["package.json", "tsconfig.json", "tsconfig.build.json", "package-lock.json", "scripts/build.sh"]) {
    await copyFile(path.join(ROOT, f), path.join(dir, f));
  }
  await symlink(path.join(ROOT, "node_modules"), path.join(dir, "node_modules"));
  await writeFile(path.join(dir, "src/main.ts"), 'export const answer: number = 42;\n');
  await mkdir(path.join(dir, "console/src"), { recursive: true });
  for (const f of ["console/tsconfig.json", "console/index.html", "console/console.css"]) await copyFile(path.join(ROOT, f), path.join(dir, f));
  await writeFile(path.join(dir, "console/src/main.tsx"), 'document.title = "console";\n');
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("scripts/build.sh --if-stale", () => {
  it("compiles a clean clone, then nothing while dist/ is fresh, then again after a source changes", async () => {
    const first = await build("--if-stale");
    expect(first.code, first.stderr).toBe(0);
    expect(first.stderr).toContain("build: compiling");
    expect(existsSync(path.join(dir, "dist/src/main.js"))).toBe(true);
    expect(existsSync(path.join(dir, "dist/.build-stamp"))).toBe(true);

    const fresh = await build("--if-stale");
    expect(fresh).toEqual({ code: 0, stderr: "build: dist/ is up to date\n" });

    await touchLater(path.join(dir, "src/main.ts"), 5);
    const changed = await build("--if-stale");
    expect(changed.code).toBe(0);
    expect(changed.stderr).toMatch(/build: src\S* changed since the last build: compiling/);
    // The stamp was taken when that build started: the edit 5 s "ahead" still counts as newer.
    expect((await build("--if-stale")).stderr).toContain("compiling");
    expect(await readFile(path.join(dir, "dist/console/app.js"), "utf8")).toContain("console");
  });

  it("bundles the console again when a file under console/ changes", async () => {
    await touchLater(path.join(dir, "src/main.ts"), -60); // the previous test dated it in the future
    await build();
    await writeFile(path.join(dir, "console/src/main.tsx"), 'document.title = "console, edited";\n');
    await touchLater(path.join(dir, "console/src/main.tsx"), 10);
    const changed = await build("--if-stale");
    expect(changed.stderr).toMatch(/build: console\S* changed since the last build: compiling/);
    expect(await readFile(path.join(dir, "dist/console/app.js"), "utf8")).toContain("console, edited");
    await touchLater(path.join(dir, "console/src/main.tsx"), -60); // not "newer" for the tests after this one
  });

  it("a failed compile leaves no stamp, so the next run compiles again; without --if-stale it always compiles", async () => {
    await rm(path.join(dir, "dist"), { recursive: true, force: true });
    await writeFile(path.join(dir, "src/main.ts"), 'export const answer: number = "not a number";\n');
    const broken = await build("--if-stale");
    expect(broken.code).not.toBe(0);
    expect(existsSync(path.join(dir, "dist/.build-stamp"))).toBe(false);

    await writeFile(path.join(dir, "src/main.ts"), "export const answer: number = 43;\n");
    expect((await build("--if-stale")).stderr).toContain("build: compiling");
    expect((await build("--if-stale")).stderr).toBe("build: dist/ is up to date\n");
    expect((await build()).stderr).toContain("build: compiling");
  });
});
