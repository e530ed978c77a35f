/**
 * Writes docs/console-list.png and docs/console-carve.png: the console in headless Chromium against a live
 * service, with carves the agent emulator uploaded (complete, held, verified, one arriving, one stalled).
 * Run by scripts/console-screenshots.sh, not by npm test.
 */
import path from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { startConsoleFixture, type ConsoleFixture } from "../support/console-fixture.js";
import { ROOT } from "../support/service.js";

let fx: ConsoleFixture;
const WAIT = { timeout: 60_000 };

beforeAll(async () => {
  fx = await startConsoleFixture();
});

afterAll(async () => {
  await fx?.dispose();
});

async function api(method: string, p: string, body?: unknown): Promise<void> {
  const res = await fetch(`${fx.svc.url}${p}`, {
    method,
    headers: { "X-Vault-Token": fx.admin, "Content-Type": "application/json" },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  expect(res.status, `${method} ${p}`).toBeLessThan(300);
}

/** Waits until the service has stored `blocks` blocks of the carve. */
async function stored(carveId: string, blocks: number): Promise<void> {
  await expect
    .poll(async () => {
      const res = await fetch(`${fx.svc.url}/api/v1/carves/${carveId}`, { headers: { "X-Vault-Token": fx.admin } });
      return ((await res.json()) as { blocksReceived?: number }).blocksReceived;
    }, WAIT)
    .toBe(blocks);
}

it("writes the console screenshots", async () => {
  const old = await fx.carve({ host: "build-04", binaryBytes: 900 * 1024 });
  await old.done;
  const held = await fx.carve({ compression: true, host: "db-02", binaryBytes: 2 * 1024 * 1024 });
  await held.done;
  await api("PUT", `/api/v1/carves/${held.carveId}/hold`, { reason: "case IR-2026-118: exfiltration suspected" });
  await api("POST", `/api/v1/carves/${held.carveId}/verify`, { sha256: held.archive.sha256 });
  const stalled = await fx.carve({ gated: true, host: "laptop-311", binaryBytes: 640 * 1024 });
  stalled.gate?.open(5);
  await stored(stalled.carveId, 5);
  // The stalled carve's last block is over 10 minutes old by the service's clock: osquery gave up on it.
  fx.clock.advance(11 * 60 * 1000);
  const arriving = await fx.carve({ gated: true, host: "web-17", binaryBytes: 1024 * 1024 });
  arriving.gate?.open(9);

  const context = await fx.browser.newContext({ viewport: { width: 1280, height: 720 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  await page.goto(fx.consoleUrl);
  await page.getByLabel("Vault token").fill(fx.admin);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator(`tr[data-carve-id="${stalled.carveId}"] .badge-incomplete`).waitFor(WAIT);
  await page.locator(`tr[data-carve-id="${arriving.carveId}"] .progress-blocks`, { hasText: /^9 of / }).waitFor(WAIT);
  arriving.gate?.open(4);
  await page.locator(`tr[data-carve-id="${arriving.carveId}"] .progress-blocks`, { hasText: /^13 of / }).waitFor(WAIT);
  await page.screenshot({ path: path.join(ROOT, "docs/console-list.png"), fullPage: true });

  await page.goto(`${fx.consoleUrl}#/carves/${held.carveId}`);
  await page.locator('[data-field="member-sha256"]').nth(2).waitFor(WAIT);
  await page.screenshot({ path: path.join(ROOT, "docs/console-carve.png"), fullPage: true });
  await context.close();
  stalled.gate?.openAll();
  arriving.gate?.openAll();
});
