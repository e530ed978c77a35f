import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import express, { type Response, type Router } from "express";
import { AppError } from "../errors.js";
import type { Logger } from "../logger.js";
import { sendJsonError } from "./json-error.js";

/**
 * What the console's pages may load and reach: its own origin only, nothing inline (the bundle has no inline
 * script or style, and an injected one must not run), no framing (clickjacking of hold/delete buttons), no
 * plugins, no <base> or form posts elsewhere.
 */
export const CONSOLE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

const CONTENT_TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".txt": "text/plain; charset=utf-8",
};

interface Asset {
  body: Buffer;
  type: string;
  etag: string;
}

/**
 * Where `npm run build` puts the console: dist/console. This module runs from src/http (tests, through vitest)
 * or dist/src/http (the built service); the package root is the one with package.json.
 */
export function defaultConsoleDir(): string {
  const top = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
  return existsSync(path.join(top, "package.json")) ? path.join(top, "dist", "console") : path.join(top, "console");
}

/** The built files, read once: a few hundred KB that never change while the process runs. */
function loadAssets(dir: string): Map<string, Asset> {
  const assets = new Map<string, Asset>();
  if (!existsSync(dir)) return assets;
  for (const name of readdirSync(dir)) {
    const type = CONTENT_TYPES[path.extname(name)];
    const file = path.join(dir, name);
    if (type === undefined || !statSync(file).isFile()) continue;
    const body = readFileSync(file);
    assets.set(name, { body, type, etag: `"${createHash("sha256").update(body).digest("hex").slice(0, 32)}"` });
  }
  return assets;
}

function setSecurityHeaders(res: Response): void {
  res.setHeader("Content-Security-Policy", CONSOLE_CSP);
  res.setHeader("X-Content-Type-Options", "nosniff");
  res.setHeader("Referrer-Policy", "no-referrer");
  res.setHeader("X-Frame-Options", "DENY");
  res.setHeader("Cross-Origin-Opener-Policy", "same-origin");
  res.setHeader("Cross-Origin-Resource-Policy", "same-origin");
}

/**
 * GET /console/ and its assets: the responders' web console (console/, bundled by scripts/build.sh). Public
 * like any static page: it holds no data, and every call it makes to the API carries the responder's token.
 * Only the files the build produced are served, by exact name.
 */
export function consoleRouter(deps: { logger: Logger; dir?: string }): Router {
  const dir = deps.dir ?? defaultConsoleDir();
  const assets = loadAssets(dir);
  if (!assets.has("index.html")) {
    deps.logger.warn({ dir }, "web console not built: /console/ answers 404 (npm run build)");
  }
  const router = express.Router();
  // Everything under /console/ is answered here, found or not, with the same headers.
  router.get(["/console", "/console/{*name}"], (req, res) => {
    if (req.path === "/console") {
      // Relative, so that a front serving the API under a path prefix keeps it.
      setSecurityHeaders(res);
      res.redirect(308, "console/");
      return;
    }
    const segments: unknown = req.params.name;
    const name = Array.isArray(segments) && segments.length > 0 ? segments.join("/") : "index.html";
    const asset = assets.get(name);
    setSecurityHeaders(res);
    if (asset === undefined) {
      const built = assets.has("index.html");
      sendJsonError(req, res, new AppError("NOT_FOUND", built ? "no such console file" : "the web console is not built (npm run build)"));
      return;
    }
    // Revalidated on every load, so a new release is picked up at once; 304 keeps that cheap.
    res.setHeader("Cache-Control", "no-cache");
    res.setHeader("ETag", asset.etag);
    if (req.headers["if-none-match"] === asset.etag) {
      res.status(304).end();
      return;
    }
    res.setHeader("Content-Type", asset.type);
    res.setHeader("Content-Length", String(asset.body.length));
    res.end(req.method === "HEAD" ? undefined : asset.body);
  });
  return router;
}
