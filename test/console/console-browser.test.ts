/**
 * The web console in a real browser (Debian's Chromium, headless, driven by playwright-core) against a real
 * listening service with the Vault double, while the agent emulator uploads carves in the background: sign-in,
 * live progress, the carve page, downloads whose SHA-256 is checked, custody actions with an admin token and
 * their refusal for a download-only one, token hygiene, and an axe-core accessibility check of every page.
 */
import { execFileSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BrowserContext, Locator, Page } from "playwright-core";
import { seriousAxeViolations } from "../support/browser.js";
import { savedBytes, sha256, startConsoleFixture, type ConsoleCarve, type ConsoleFixture } from "../support/console-fixture.js";

/** Long enough for a poll cycle or two on a loaded 2-core machine; every wait is for a condition. */
const WAIT = { timeout: 45_000 };

let fx: ConsoleFixture;
let context: BrowserContext;
let page: Page;
const requestUrls: string[] = [];
let live: ConsoleCarve;
let zstdCarve: ConsoleCarve;

async function newPage(): Promise<{ context: BrowserContext; page: Page }> {
  const ctx = await fx.browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
  ctx.on("request", (r) => requestUrls.push(r.url()));
  const p = await ctx.newPage();
  p.on("framenavigated", (f) => requestUrls.push(f.url()));
  return { context: ctx, page: p };
}

async function signInWith(p: Page, token: string): Promise<void> {
  await p.goto(fx.consoleUrl);
  await p.getByLabel("Vault token").waitFor(WAIT);
  // Keyboard only: the field has focus on load, Enter submits.
  await p.waitForFunction('document.activeElement?.id === "token"', undefined, WAIT);
  await p.keyboard.type(token);
  await p.keyboard.press("Enter");
  await p.getByRole("heading", { name: "Carves", level: 1 }).waitFor(WAIT);
}

const row = (p: Page, carveId: string): Locator => p.locator(`tr[data-carve-id="${carveId}"]`);
const blocksText = (p: Page, carveId: string, text: string): Locator =>
  row(p, carveId).locator(".progress-blocks", { hasText: new RegExp(`^${text}$`) });

async function expectNoSeriousViolations(p: Page, what: string): Promise<void> {
  const violations = await seriousAxeViolations(p);
  expect(violations, `${what}: ${JSON.stringify(violations, null, 1)}`).toEqual([]);
}

beforeAll(async () => {
  fx = await startConsoleFixture();
  zstdCarve = await fx.carve({ compression: true, host: "db-02" });
  await zstdCarve.done;
  ({ context, page } = await newPage());
}, 120_000);

afterAll(async () => {
  await fx?.dispose();
});

describe("web console", () => {
  it("is served with a strict Content-Security-Policy and no inline code", async () => {
    const res = await fetch(fx.consoleUrl);
    expect(res.status).toBe(200);
    const csp = res.headers.get("content-security-policy") ?? "";
    expect(csp).toContain("default-src 'self'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).not.toContain("unsafe-inline");
    expect(csp).not.toContain("unsafe-eval");
    expect(res.headers.get("x-content-type-options")).toBe("nosniff");
    expect(res.headers.get("referrer-policy")).toBe("no-referrer");
    const html = await res.text();
    expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
    expect(html).not.toMatch(/<style|\sstyle=|\son[a-z]+=/i);
    // The browser sees the same header on the page it loads.
    const loaded = await page.goto(fx.consoleUrl);
    expect(loaded?.headers()["content-security-policy"]).toBe(csp);
  });

  it("has an accessibility check that finds what it should", async () => {
    // The checker itself: an unlabelled field is a serious violation, so an empty answer below means something.
    const blank = await context.newPage();
    await blank.setContent('<!doctype html><html lang="en"><title>t</title><main><input type="text"></main></html>');
    expect((await seriousAxeViolations(blank)).map((v) => v.id)).toContain("label");
    await blank.close();
  });

  it("refuses an unknown token with a clear message, then signs in with a valid one", async () => {
    await page.goto(fx.consoleUrl);
    await page.getByLabel("Vault token").fill("hvs.CAESInot-a-token-vault-knows");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").filter({ hasText: "Vault does not accept this token" }).waitFor(WAIT);
    await expectNoSeriousViolations(page, "sign-in page");
    await page.getByLabel("Vault token").fill("");
    await signInWith(page, fx.admin);
    expect(await page.getByRole("link", { name: "Audit trail" }).count()).toBe(1);
  });

  it("shows a carve appear and its progress advance while the agent uploads", async () => {
    live = await fx.carve({ gated: true, blockSize: 32 * 1024, binaryBytes: 320 * 1024 });
    const total = Math.ceil(live.archive.size / (32 * 1024));
    expect(total).toBeGreaterThanOrEqual(10);
    await blocksText(page, live.carveId, `0 of ${total} blocks`).waitFor(WAIT);
    live.gate?.open(3);
    await blocksText(page, live.carveId, `3 of ${total} blocks`).waitFor(WAIT);
    live.gate?.open(4);
    await blocksText(page, live.carveId, `7 of ${total} blocks`).waitFor(WAIT);
    const detail = await row(page, live.carveId).locator(".progress-detail").textContent();
    expect(detail).toMatch(/KiB of \d+ KiB · \d[\d.]* (B|KiB|MiB)\/s · last block \d+ s ago/);
    await row(page, live.carveId).locator(".badge-receiving").waitFor(WAIT);
    await expectNoSeriousViolations(page, "carve list with a receiving carve");

    // No block for over 10 minutes (the service's clock moved on): osquery gave up, the list says so.
    fx.clock.advance(11 * 60 * 1000);
    await row(page, live.carveId).locator(".badge-incomplete", { hasText: "incomplete" }).waitFor(WAIT);

    live.gate?.openAll();
    expect((await live.done).status).toBe("SUCCESS");
    await row(page, live.carveId).locator(".badge-complete").waitFor(WAIT);
  });

  it("filters the list by status and node", async () => {
    await page.getByLabel("Status").selectOption("receiving");
    await page.getByRole("button", { name: "Apply filters" }).click();
    await page.locator("caption", { hasText: "No carves match." }).waitFor(WAIT);
    expect(page.url()).toContain("status=receiving");
    await page.getByRole("link", { name: "Clear" }).click();
    const nodePrefix = sha256(Buffer.from(zstdCarve.nodeKey)).slice(0, 16);
    await page.getByLabel("Node key SHA-256 prefix").fill(nodePrefix);
    await page.getByRole("button", { name: "Apply filters" }).click();
    await row(page, zstdCarve.carveId).waitFor(WAIT);
    await row(page, live.carveId).waitFor({ state: "detached", ...WAIT });
    await page.getByRole("link", { name: "Clear" }).click();
    await row(page, live.carveId).waitFor(WAIT);

    const tomorrow = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
    await page.getByLabel("Created from").fill(tomorrow);
    await page.getByRole("button", { name: "Apply filters" }).click();
    await page.locator("caption", { hasText: "No carves match." }).waitFor(WAIT);
    expect(page.url()).toContain(`since=${tomorrow}`);
  });

  it("pages through the list", async () => {
    await page.goto(`${fx.consoleUrl}#/carves?limit=1`);
    // Newest first: the live carve, then the zstd one.
    await row(page, live.carveId).waitFor(WAIT);
    expect(await page.locator("tr[data-carve-id]").count()).toBe(1);
    await page.getByRole("button", { name: "Next page" }).click();
    await row(page, zstdCarve.carveId).waitFor(WAIT);
    expect(await page.locator("tr[data-carve-id]").count()).toBe(1);
    expect(await page.getByRole("button", { name: "Next page" }).isDisabled()).toBe(true);
    await page.getByRole("button", { name: "Previous page" }).click();
    await row(page, live.carveId).waitFor(WAIT);
    await page.goto(`${fx.consoleUrl}#/carves`);
    await row(page, zstdCarve.carveId).waitFor(WAIT);
  });

  it("opens the carve page from the keyboard and lists the files with their SHA-256", async () => {
    const focusedCarveLink = (): Promise<unknown> =>
      page.evaluate('document.activeElement?.tagName === "A" && document.activeElement.closest("tr")?.dataset.carveId');
    for (let i = 0; i < 60 && (await focusedCarveLink()) !== live.carveId; i++) await page.keyboard.press("Tab");
    expect(await focusedCarveLink()).toBe(live.carveId);
    await page.keyboard.press("Enter");
    await page.getByRole("heading", { name: `Carve ${live.carveId}`, level: 1 }).waitFor(WAIT);
    await page.locator('[data-field="sha256"]', { hasText: live.archive.sha256 }).waitFor(WAIT);
    const cells = page.locator('[data-field="member-sha256"]');
    await cells.nth(live.contents.length - 1).waitFor(WAIT);
    expect(await cells.allTextContents()).toEqual(live.contents.map(sha256));
    const paths = await page.locator("table.files td.path").allTextContents();
    expect(paths.map((p) => p.split("/").pop())).toEqual(["hosts", "auth.log", "tmp-dropper"]);
    await expectNoSeriousViolations(page, "carve page");
  });

  it("saves a single file and the archive, each with the SHA-256 the service stated", async () => {
    const [file] = await Promise.all([page.waitForEvent("download", WAIT), page.getByRole("button", { name: /^Download .*tmp-dropper$/ }).click()]);
    expect(file.suggestedFilename()).toBe("tmp-dropper");
    expect(sha256(await savedBytes(await file.path()))).toBe(sha256(live.contents[2] as Buffer));
    await page.locator('tr[data-member="2"] .ok', { hasText: "SHA-256 matches" }).waitFor(WAIT);

    const [archive] = await Promise.all([page.waitForEvent("download", WAIT), page.getByRole("button", { name: /^Download archive/ }).click()]);
    expect(archive.suggestedFilename()).toBe(`${live.carveId}.tar`);
    expect(sha256(await savedBytes(await archive.path()))).toBe(live.archive.sha256);
    await page.locator('[data-outcome="archive"] .ok', { hasText: "SHA-256 matches the carve's" }).waitFor(WAIT);
  });

  it("downloads a zstd carve as stored and as a plain .tar", async () => {
    await page.goto(`${fx.consoleUrl}#/carves/${zstdCarve.carveId}`);
    const [raw] = await Promise.all([page.waitForEvent("download", WAIT), page.getByRole("button", { name: /^Download archive \(\.tar\.zst/ }).click()]);
    expect(raw.suggestedFilename()).toBe(`${zstdCarve.carveId}.tar.zst`);
    const stored = await savedBytes(await raw.path());
    expect(sha256(stored)).toBe(zstdCarve.archive.sha256);
    const [tar] = await Promise.all([page.waitForEvent("download", WAIT), page.getByRole("button", { name: /^Download as \.tar/ }).click()]);
    expect(tar.suggestedFilename()).toBe(`${zstdCarve.carveId}.tar`);
    const expected = execFileSync("zstd", ["-dc"], { input: stored, maxBuffer: 64 * 1024 * 1024 });
    expect(sha256(await savedBytes(await tar.path()))).toBe(sha256(expected));
  });

  it("verifies against the host's carves.sha256, holds, releases and deletes with an admin token", async () => {
    await page.goto(`${fx.consoleUrl}#/carves/${live.carveId}`);
    await page.getByLabel("The host's carves.sha256").fill(live.archive.sha256);
    await page.getByRole("button", { name: "Verify", exact: true }).click();
    await page.locator('[data-outcome="verify"] .ok', { hasText: "Match" }).waitFor(WAIT);
    await page.locator("table.verifications td", { hasText: live.archive.sha256 }).waitFor(WAIT);

    await page.getByLabel("Reason for the hold").fill("case IR-2026-118");
    await page.getByRole("button", { name: "Place hold" }).click();
    await page.locator('[data-field="hold"]', { hasText: "by oidc-alice" }).waitFor(WAIT);
    expect(await page.locator('[data-field="hold"]').textContent()).toContain("case IR-2026-118");
    expect(await page.locator('[data-action="delete"]').isDisabled()).toBe(true);
    const held = (await (await fetch(`${fx.svc.url}/api/v1/carves/${live.carveId}`, { headers: { "X-Vault-Token": fx.admin } })).json()) as { hold: { reason: string } | null };
    expect(held.hold?.reason).toBe("case IR-2026-118");

    await page.getByRole("button", { name: "Release hold" }).click();
    await page.locator('[data-field="hold"]', { hasText: /^none$/ }).waitFor(WAIT);

    await page.locator('[data-action="delete"]:not([disabled])').click();
    const dialog = page.getByRole("dialog", { name: "Delete this carve?" });
    await dialog.waitFor(WAIT);
    await expectNoSeriousViolations(page, "delete confirmation");
    await dialog.getByRole("button", { name: "Cancel" }).click();
    await dialog.waitFor({ state: "hidden", ...WAIT });
    await page.locator('[data-action="delete"]').click();
    await dialog.getByRole("button", { name: "Delete permanently" }).click();
    await page.getByRole("status").filter({ hasText: `Carve ${live.carveId} deleted` }).waitFor(WAIT);
    const gone = await fetch(`${fx.svc.url}/api/v1/carves/${live.carveId}`, { headers: { "X-Vault-Token": fx.admin } });
    expect(gone.status).toBe(404);
  });

  it("shows the audit trail to an admin token, filterable", async () => {
    await page.getByRole("link", { name: "Audit trail" }).click();
    await page.getByRole("heading", { name: "Audit trail", level: 1 }).waitFor(WAIT);
    await page.getByLabel("Carve id").fill(live.carveId);
    await page.getByLabel("Action").selectOption("carve.delete");
    await page.getByRole("button", { name: "Apply filters" }).click();
    // The unfiltered table (which has a carve.delete row too, among others) stays until the filtered page arrives,
    // and the page re-renders on navigation: wait until the rows shown are the filtered ones.
    // Read in one step in the page: row by row, a row could be gone before its attribute was read (and Playwright
    // then waits for it).
    type Row = { getAttribute(name: string): string | null };
    const shownActions = async (): Promise<Set<string | null>> =>
      new Set(await page.locator("tr[data-audit-action]").evaluateAll((rows: Row[]) => rows.map((r) => r.getAttribute("data-audit-action"))));
    const deadline = Date.now() + 30_000;
    let actions = await shownActions();
    while (!(actions.size === 1 && actions.has("carve.delete")) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      actions = await shownActions();
    }
    expect(actions).toEqual(new Set(["carve.delete"]));
    expect(await page.locator("table.audit").textContent()).toContain("oidc-alice");
    await expectNoSeriousViolations(page, "audit page");

    // Over one page of events (50): the console's own requests plus these.
    for (let i = 0; i < 51; i++) await fetch(`${fx.svc.url}/api/v1/carves?limit=1`, { headers: { "X-Vault-Token": fx.admin } });
    await page.getByRole("link", { name: "Audit trail" }).click();
    await page.getByLabel("Carve id").fill("");
    await page.getByLabel("Action").selectOption("");
    await page.getByRole("button", { name: "Apply filters" }).click();
    await page.locator("caption", { hasText: "50 events, newest first" }).waitFor(WAIT);
    const ids = async (): Promise<string[]> =>
      Promise.all((await page.locator("tr[data-audit-id]").all()).map(async (r) => (await r.getAttribute("data-audit-id")) ?? ""));
    const first = await ids();
    expect(first).toHaveLength(50);
    await page.getByRole("button", { name: "Next page" }).click();
    await page.getByText("Page 2").waitFor(WAIT);
    await page.locator(`tr[data-audit-id="${first[0] ?? ""}"]`).waitFor({ state: "detached", ...WAIT });
    const second = await ids();
    expect(second.length).toBeGreaterThan(0);
    // The next page goes on where the first stopped (older events), whatever was audited meanwhile.
    expect(second.filter((id) => first.includes(id))).toEqual([]);
    await page.getByRole("button", { name: "Previous page" }).click();
    await page.getByText("Page 1").waitFor(WAIT);
    expect(await page.getByRole("button", { name: "Previous page" }).isDisabled()).toBe(true);
  });

  it("locks: the token is forgotten and a reload asks for it again", async () => {
    await page.getByRole("button", { name: "Lock" }).click();
    await page.locator("[data-signin-notice]", { hasText: "Locked" }).waitFor(WAIT);
    expect(await page.evaluate("sessionStorage.length")).toBe(0);
    await page.reload();
    await page.getByLabel("Vault token").waitFor(WAIT);
  });

  it("disables admin actions for a download-only token, and shows the server's 403 when forced", async () => {
    const reader = await newPage();
    try {
      const p = reader.page;
      await signInWith(p, fx.reader);
      expect(await p.getByRole("link", { name: "Audit trail" }).count()).toBe(0);
      await p.goto(`${fx.consoleUrl}#/carves/${zstdCarve.carveId}`);
      const hold = p.locator('[data-action="hold"]');
      await hold.waitFor(WAIT);
      expect(await hold.isDisabled()).toBe(true);
      expect(await p.locator('[data-action="delete"]').isDisabled()).toBe(true);
      expect(await p.getByLabel("Reason for the hold").isDisabled()).toBe(true);
      await p.getByText("Needs an admin token").first().waitFor(WAIT);

      // Forced: the page's controls enabled by hand, the request goes out, the service refuses it.
      await p.evaluate('document.querySelectorAll("[disabled]").forEach((el) => el.removeAttribute("disabled"))');
      await p.getByLabel("Reason for the hold").fill("not mine to hold");
      await hold.click();
      await p.locator('[data-outcome="hold"] [data-error-code="ACCESS_DENIED"]', { hasText: "Refused by the server: 403 ACCESS_DENIED" }).waitFor(WAIT);
      await p.evaluate('document.querySelectorAll("[data-action=delete]").forEach((el) => el.removeAttribute("disabled"))');
      await p.locator('[data-action="delete"]').click();
      await p.getByRole("button", { name: "Delete permanently" }).click();
      await p.locator('[data-outcome="delete"] [data-error-code="ACCESS_DENIED"]').waitFor(WAIT);
      // From then on the console knows: the hint says the server refused it.
      await p.getByText("The server refused this token this action (403).").first().waitFor(WAIT);
      const still = await fetch(`${fx.svc.url}/api/v1/carves/${zstdCarve.carveId}`, { headers: { "X-Vault-Token": fx.admin } });
      expect(((await still.json()) as { hold: unknown }).hold).toBeNull();

      await p.goto(`${fx.consoleUrl}#/audit`);
      await p.locator('[data-error-code="ACCESS_DENIED"]').waitFor(WAIT);

      // Revoked in Vault meanwhile: the next request is answered 401 and the console returns to sign-in.
      fx.vault.revoke(fx.reader);
      await p.getByRole("link", { name: "Carves" }).click();
      await p.locator("[data-signin-notice]", { hasText: "expired or was revoked" }).waitFor(WAIT);
      expect(await p.evaluate("sessionStorage.length")).toBe(0);
    } finally {
      await reader.context.close();
    }
  });

  it("never puts a token in a URL, localStorage or the service's log", async () => {
    expect(await page.evaluate("JSON.stringify({ ...localStorage })")).toBe("{}");
    expect(requestUrls.length).toBeGreaterThan(20);
    for (const token of [fx.admin, fx.reader]) {
      for (const url of requestUrls) expect(url).not.toContain(token);
      expect(fx.svc.logs.text).not.toContain(token);
    }
    expect(fx.svc.logs.text).toContain("carve.delete");
    await context.close();
  });
});
