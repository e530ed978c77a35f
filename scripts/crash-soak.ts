/**
 * Nightly crash soak: many rounds of test/crash/rounds.ts per backend, through vitest (its global setup
 * starts the MongoDB-wire server the GridFS rounds need).
 *
 *   npm run crash-soak -- --rounds N [--seed S] [--backend filesystem|gridfs] [--points a,b]
 *
 * Exits with vitest's status; every failing round prints its seed, round number and plan.
 */
import { spawn } from "node:child_process";
import { randomInt } from "node:crypto";
import path from "node:path";

const ROOT = path.resolve(import.meta.dirname, "../..");
const BACKENDS = ["filesystem", "gridfs"] as const;

function usage(problem: string): never {
  process.stderr.write(`crash-soak: ${problem}\nusage: npm run crash-soak -- --rounds N [--seed S] [--backend filesystem|gridfs] [--points a,b]\n`);
  process.exit(2);
}

const args = process.argv.slice(2);
const opts = new Map<string, string>();
for (let i = 0; i < args.length; i += 2) {
  const key = args[i] ?? "";
  const value = args[i + 1];
  if (!["--rounds", "--seed", "--backend", "--points"].includes(key)) usage(`unknown option ${key}`);
  if (value === undefined) usage(`${key} needs a value`);
  opts.set(key, value);
}
const rounds = opts.get("--rounds");
if (!rounds || !/^[1-9]\d*$/.test(rounds)) usage("--rounds must be a positive integer");
const seed = opts.get("--seed") ?? String(randomInt(1, 2 ** 31));
if (!/^[1-9]\d*$/.test(seed)) usage("--seed must be a positive integer");
const backend = opts.get("--backend");
if (backend !== undefined && !(BACKENDS as readonly string[]).includes(backend)) usage(`--backend must be one of ${BACKENDS.join(", ")}`);
const files = (backend ? [backend] : BACKENDS).map((b) => `test/crash/${b}.test.ts`);

process.stdout.write(`crash soak: ${rounds} rounds on ${backend ?? BACKENDS.join(" and ")}, CARVE_CRASH_SEED=${seed}\n`);
const child = spawn(process.execPath, [path.join(ROOT, "node_modules/vitest/vitest.mjs"), "run", ...files], {
  cwd: ROOT,
  stdio: "inherit",
  env: {
    ...process.env,
    CARVE_CRASH_ROUNDS: rounds,
    CARVE_CRASH_SEED: seed,
    ...(opts.has("--points") ? { CARVE_CRASH_POINTS: opts.get("--points") } : {}),
  },
});
child.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
