/**
 * The typed client is the web console's too: it must build for a browser. Checked the strict way: the
 * TypeScript compiler with the DOM library and no Node types compiles it and everything it imports (the
 * contract, zod); a Node API anywhere in that graph fails the compile. And its imports of the contract are
 * type-only, so a bundle carries nothing of the server.
 */
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { ROOT } from "../support/service.js";

const run = promisify(execFile);

describe("src/client/api-client.ts", () => {
  it("compiles for a browser: DOM library, no Node types", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "browser-tsc-"));
    try {
      const config = path.join(dir, "tsconfig.json");
      await writeFile(
        config,
        JSON.stringify({
          compilerOptions: {
            target: "ES2023",
            lib: ["ES2023", "DOM"],
            types: [],
            module: "NodeNext",
            moduleResolution: "NodeNext",
            strict: true,
            exactOptionalPropertyTypes: true,
            noUncheckedIndexedAccess: true,
            verbatimModuleSyntax: true,
            skipLibCheck: true,
            noEmit: true,
            typeRoots: [],
          },
          files: [path.join(ROOT, "src/client/api-client.ts")],
        }),
      );
      const result = await run(path.join(ROOT, "node_modules/.bin/tsc"), ["-p", config], { cwd: ROOT }).catch((err: { stdout?: string }) => ({ stdout: err.stdout ?? "failed" }));
      expect(result.stdout).toBe("");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it("imports the contract as types only", async () => {
    const source = await readFile(path.join(ROOT, "src/client/api-client.ts"), "utf8");
    const imports = [...source.matchAll(/^(import|export)\b[^;]*?from\s+"([^"]+)"/gms)];
    expect(imports.length).toBeGreaterThan(0);
    for (const m of imports) expect(m[0], m[0]).toMatch(/^(import|export) type\b/);
  });
});
