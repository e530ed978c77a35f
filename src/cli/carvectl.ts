#!/usr/bin/env node
/**
 * carvectl, the responder CLI (package.json "bin"): `npx carvectl --help`. The commands live in
 * src/cli/carvectl/; this file only wires the process to them.
 */
import { homedir } from "node:os";
import { main } from "./carvectl/main.js";

const controller = new AbortController();
let interrupts = 0;
process.on("SIGINT", () => {
  // The first Ctrl-C lets a download close its .part file cleanly; a second one does not wait.
  if (++interrupts > 1) process.exit(130);
  controller.abort();
});
// A closed pipe (carvectl cat ... | head) ends the command quietly, as for any Unix tool.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") process.exit(0);
  throw err;
});

const code = await main(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  home: homedir(),
  signal: controller.signal,
});
process.exitCode = code;
// Open keep-alive sockets must not keep a finished command waiting.
setTimeout(() => process.exit(code), 200).unref();
