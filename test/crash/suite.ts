/**
 * The crash rounds of one backend as a vitest suite (test/crash/rounds.ts). `npm test` runs a few rounds;
 * `npm run crash-soak -- --rounds N [--seed S] [--backend filesystem|gridfs]` runs many (scripts/crash-soak.ts).
 *   CARVE_CRASH_SEED    seed of the round plans (default: random, printed); a failure prints seed and round
 *   CARVE_CRASH_ROUNDS  rounds per backend (default 4)
 *   CARVE_CRASH_POINTS  comma-separated crash point names to draw from (default: all; then no outside kills)
 */
import { randomInt } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { startVaultDouble, type VaultDouble } from "../support/vault-double.js";
import { CRASH_POINTS, type CrashPointName } from "../../src/util/crash-point.js";
import { ARMED_POINTS, planRound, runRound, type Backend, type RoundPlan } from "./rounds.js";

function pointsFromEnv(): readonly CrashPointName[] {
  const raw = process.env.CARVE_CRASH_POINTS;
  if (!raw) return ARMED_POINTS;
  const names = raw.split(",").map((n) => n.trim());
  for (const n of names) {
    if (!(ARMED_POINTS as readonly string[]).includes(n)) {
      throw new Error(`CARVE_CRASH_POINTS: ${n} is not one of ${ARMED_POINTS.join(", ")}`);
    }
  }
  return names.filter((n): n is CrashPointName => (CRASH_POINTS as readonly string[]).includes(n));
}

function positiveInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < 1 || !Number.isSafeInteger(Number(raw))) {
    throw new Error(`${name}=${raw}: expected a positive integer`);
  }
  return Number(raw);
}

export interface PinnedRound {
  /** What the round found, and where it was fixed. */
  why: string;
  seed: number;
  round: number;
}

export function crashSuite(backend: Backend, pinned: PinnedRound[]): void {
  const seed = process.env.CARVE_CRASH_SEED ? positiveInt("CARVE_CRASH_SEED", 1) : randomInt(1, 2 ** 31);
  const rounds = positiveInt("CARVE_CRASH_ROUNDS", 4);
  const points = pointsFromEnv();
  let vault: VaultDouble;
  let work: string;
  const token = `hvs.crash${randomInt(1e9)}`;
  const survived: string[] = [];

  beforeAll(async () => {
    work = await mkdtemp(path.join(tmpdir(), `carve-crash-${backend}-`));
    vault = await startVaultDouble();
    vault.addToken(token, {
      policies: ["osquery-carve-download", "osquery-carve-admin", "osquery-carve-import"],
      displayName: "token-crash-test",
    });
    console.log(`crash rounds on ${backend}: CARVE_CRASH_SEED=${seed}, ${rounds} rounds`);
  });
  afterAll(async () => {
    console.log(`crash rounds on ${backend} (seed ${seed}): ${survived.length} survived\n  ${survived.join("\n  ")}`);
    await vault?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  const run = async (plan: RoundPlan): Promise<void> => {
    const env = {
      backend,
      work,
      vaultUrl: vault.url,
      token,
      ...(backend === "gridfs" ? { mongoUri: inject("mongoUri") } : {}),
    };
    const outcome = await runRound(plan, env);
    const what = "point" in plan.crash ? `${plan.crash.point}:${plan.crash.hit}` : `kill after ${plan.crash.killAfterMs} ms`;
    survived.push(`round ${plan.round} (${what}, ${plan.phase}): ${outcome.crashNote}; agents ${outcome.agents.join(",")}`);
    // Each round must have exercised something: uploads were made and the service really died once.
    expect(outcome.agents.length).toBe(plan.agents.length);
    if ("killAfterMs" in plan.crash) expect(outcome.crashed).toBe(true);
  };

  describe(`crash points on ${backend}`, () => {
    for (const p of pinned) {
      it(`pinned: seed ${p.seed} round ${p.round}: ${p.why}`, () => run(planRound(p.seed, p.round)), 300_000);
    }
    for (let round = 0; round < rounds; round++) {
      it(`seed ${seed} round ${round}`, () => run(planRound(seed, round, points)), 300_000);
    }
  });
}
