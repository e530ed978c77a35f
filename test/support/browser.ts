import { readFile } from "node:fs/promises";
import path from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { ROOT } from "./service.js";

/** Debian's Chromium (apt-get install chromium; .ci/run installs it): no browser download works here. */
export const CHROMIUM = process.env.CARVE_TEST_CHROMIUM ?? "/usr/bin/chromium";

export async function launchChromium(): Promise<Browser> {
  try {
    return await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--disable-gpu", "--disable-dev-shm-usage"] });
  } catch (err) {
    throw new Error(`cannot start ${CHROMIUM} (apt-get install -y chromium): ${(err as Error).message}`, { cause: err });
  }
}

export interface AxeViolation {
  id: string;
  impact: string | null;
  help: string;
  nodes: Array<{ target: string[]; failureSummary?: string }>;
}

let axeSource: string | null = null;

/**
 * Runs axe-core in the page and returns its serious and critical violations. axe is evaluated through the
 * DevTools protocol, which the page's Content-Security-Policy does not govern (a <script> tag would be refused,
 * as it should be).
 */
export async function seriousAxeViolations(page: Page): Promise<AxeViolation[]> {
  axeSource ??= await readFile(path.join(ROOT, "node_modules/axe-core/axe.min.js"), "utf8");
  await page.evaluate(`${axeSource}\n;void 0`);
  const violations = await page.evaluate<AxeViolation[]>(`axe.run(document, { resultTypes: ["violations"] }).then((r) => r.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.map((n) => ({ target: n.target, failureSummary: n.failureSummary })),
  })))`);
  return violations.filter((v) => v.impact === "serious" || v.impact === "critical");
}
