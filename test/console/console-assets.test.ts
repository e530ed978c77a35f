/**
 * The console as built (dist/console, scripts/build.sh) and as served at /console/ by a listening service:
 * the bundle's size, no inline code and no third-party origin in it, the security headers on every file,
 * only built files served, revalidation, and a service whose console was never built.
 */
import { readdir, readFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CONSOLE_CSP } from "../../src/http/console-routes.js";
import { ROOT, startTestService, type TestService } from "../support/service.js";

const DIST = path.join(ROOT, "dist/console");
/** The bound on what a responder's browser downloads. */
const MAX_GZIPPED = 150 * 1024;

let svc: TestService;

beforeAll(async () => {
  svc = await startTestService();
});

afterAll(async () => {
  await svc.dispose();
});

describe("console bundle", () => {
  it("is under 150 KB gzipped, one script and one stylesheet", async () => {
    const files = (await readdir(DIST)).sort();
    expect(files).toEqual(["app.js", "console.css", "index.html"]);
    let gzipped = 0;
    for (const f of files) gzipped += gzipSync(await readFile(path.join(DIST, f)), { level: 9 }).length;
    expect(gzipped).toBeGreaterThan(5 * 1024); // Preact and the app are in it
    expect(gzipped).toBeLessThan(MAX_GZIPPED);
  });

  it("loads nothing from another origin and has nothing inline", async () => {
    const html = await readFile(path.join(DIST, "index.html"), "utf8");
    expect([...html.matchAll(/<script\b[^>]*>/g)].map((m) => m[0])).toEqual(['<script type="module" src="app.js">']);
    expect(html).not.toMatch(/<style|\sstyle=|\son[a-z]+=|javascript:/i);
    expect(html).not.toMatch(/(src|href)="(https?:)?\/\//);
    const js = await readFile(path.join(DIST, "app.js"), "utf8");
    // No eval-like code (the CSP has no unsafe-eval) and no import of another origin.
    expect(js).not.toMatch(/\beval\(|new Function\(/);
    expect(js).not.toMatch(/import\s*\(?\s*["']https?:/);
    const css = await readFile(path.join(DIST, "console.css"), "utf8");
    expect(css).not.toMatch(/@import|url\(/);
  });
});

describe("GET /console/", () => {
  it("serves every built file with the security headers", async () => {
    for (const [p, type] of [
      ["/console/", "text/html"],
      ["/console/index.html", "text/html"],
      ["/console/app.js", "text/javascript"],
      ["/console/console.css", "text/css"],
    ] as const) {
      const res = await fetch(`${svc.url}${p}`);
      expect(res.status, p).toBe(200);
      expect(res.headers.get("content-type"), p).toContain(type);
      expect(res.headers.get("content-security-policy"), p).toBe(CONSOLE_CSP);
      expect(res.headers.get("x-content-type-options"), p).toBe("nosniff");
      expect(res.headers.get("referrer-policy"), p).toBe("no-referrer");
      expect(res.headers.get("x-frame-options"), p).toBe("DENY");
      expect(res.headers.get("cache-control"), p).toBe("no-cache");
    }
    expect(CONSOLE_CSP).toMatch(/(^|; )default-src 'self'(;|$)/);
    expect(CONSOLE_CSP).toContain("frame-ancestors 'none'");
    expect(CONSOLE_CSP).not.toMatch(/unsafe|\*|data:|https?:/);
  });

  it("redirects /console to /console/, revalidates with ETag, answers HEAD, and serves nothing else", async () => {
    const redirect = await fetch(`${svc.url}/console`, { redirect: "manual" });
    expect(redirect.status).toBe(308);
    expect(new URL(redirect.headers.get("location") ?? "", `${svc.url}/console`).pathname).toBe("/console/");

    const first = await fetch(`${svc.url}/console/app.js`);
    const etag = first.headers.get("etag") ?? "";
    expect(etag).toMatch(/^"[0-9a-f]{32}"$/);
    const again = await fetch(`${svc.url}/console/app.js`, { headers: { "If-None-Match": etag } });
    expect(again.status).toBe(304);
    const head = await fetch(`${svc.url}/console/app.js`, { method: "HEAD" });
    expect(head.headers.get("content-length")).toBe(String((await first.arrayBuffer()).byteLength));

    for (const p of ["/console/missing.js", "/console/..%2Fsrc%2Fmain.js", "/console/app.js/x", "/console/.build-stamp"]) {
      const res = await fetch(`${svc.url}${p}`);
      expect(res.status, p).toBe(404);
      expect(res.headers.get("content-security-policy"), p).toBe(CONSOLE_CSP);
    }
  });

  it("says so when the console was not built, and the API still works", async () => {
    const empty = await mkdtemp(path.join(tmpdir(), "no-console-"));
    const bare = await startTestService({}, { consoleDir: empty });
    try {
      const res = await fetch(`${bare.url}/console/`);
      expect(res.status).toBe(404);
      expect(((await res.json()) as { error: { message: string } }).error.message).toContain("npm run build");
      expect(bare.logs.text).toContain("web console not built");
      expect((await fetch(`${bare.url}/api/v1/openapi.json`)).status).toBe(200);
    } finally {
      await bare.dispose();
      await rm(empty, { recursive: true, force: true });
    }
  });
});
