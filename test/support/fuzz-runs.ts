/**
 * A count of fuzzing runs or examples from the environment: `fallback` when unset, else a positive integer.
 * Anything else (0, "abc", "1e3", "") is refused: a property run 0 times, or NaN times, passes without testing.
 */
export function positiveCountFromEnv(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined) return fallback;
  if (!/^[1-9]\d*$/.test(raw) || !Number.isSafeInteger(Number(raw))) {
    throw new Error(`${name}=${JSON.stringify(raw)}: expected a positive integer`);
  }
  return Number(raw);
}
