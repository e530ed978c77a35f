import { createHash, randomBytes, randomUUID } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import type { Browser } from "playwright-core";
import { buildCarveArchive, runCarve, type CarveArchive, type CarveResult } from "../../scripts/emulator/index.js";
import { launchChromium } from "./browser.js";
import { startGatedProxy, type GatedProxy } from "./gated-proxy.js";
import { startTestService, type TestService } from "./service.js";
import { startVaultDouble, type VaultDouble } from "./vault-double.js";

/*
 * What the console's browser tests and the screenshot script share: a real listening service with the Vault
 * double, a headless Chromium, and osquery carves uploaded by the agent emulator, in the background and through
 * a gate when the test wants to watch them arrive.
 */

export const sha256 = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

export interface ConsoleCarve {
  carveId: string;
  nodeKey: string;
  archive: CarveArchive;
  /** The carved files' contents, in archive order. */
  contents: Buffer[];
  /** The emulator's run; resolves when the upload is over. */
  done: Promise<CarveResult>;
  /** Present for gated uploads: lets blocks through. */
  gate: GatedProxy | null;
}

export interface ConsoleFixture {
  vault: VaultDouble;
  svc: TestService;
  browser: Browser;
  work: string;
  /** The service's clock: advance() moves it on (a stalled carve turns incomplete). */
  clock: { advance(ms: number): void };
  admin: string;
  reader: string;
  consoleUrl: string;
  /** Carves a few files (one binary of `binaryBytes`) as osquery would; gated: blocks wait for gate.open(). */
  carve(options?: { gated?: boolean; compression?: boolean; blockSize?: number; binaryBytes?: number; host?: string }): Promise<ConsoleCarve>;
  dispose(): Promise<void>;
}

export async function startConsoleFixture(): Promise<ConsoleFixture> {
  const vault = await startVaultDouble();
  const admin = `hvs.CAESIconsoleAdmin${randomBytes(12).toString("hex")}`;
  const reader = `hvs.CAESIconsoleReader${randomBytes(12).toString("hex")}`;
  vault.addToken(admin, { policies: ["osquery-carve-download", "osquery-carve-admin"], displayName: "oidc-alice" });
  vault.addToken(reader, { policies: ["osquery-carve-download"], displayName: "oidc-bob" });
  let offset = 0;
  // Every decision asked of Vault anew: a revoked token is refused at its next request.
  const svc = await startTestService({ VAULT_ADDR: vault.url, CARVE_VAULT_CACHE_SECONDS: "0" }, { now: () => new Date(Date.now() + offset) });
  const work = await mkdtemp(path.join(tmpdir(), "console-"));
  const gates: GatedProxy[] = [];
  const uploads: Array<Promise<unknown>> = [];
  const hostsUsed = new Set<string>();
  let browser: Browser;
  try {
    browser = await launchChromium();
  } catch (err) {
    await svc.dispose();
    await vault.close();
    throw err;
  }

  const carve: ConsoleFixture["carve"] = async (options = {}) => {
    const carveId = randomUUID();
    const host = options.host ?? "web-17";
    // Shown as the files' paths on the host: /tmp/console-*/hosts/<host>/etc/hosts.
    const dir = path.join(work, "hosts", hostsUsed.has(host) ? `${host}-${carveId.slice(0, 8)}` : host);
    hostsUsed.add(host);
    await mkdir(path.join(dir, "etc"), { recursive: true });
    await mkdir(path.join(dir, "var/log"), { recursive: true });
    const contents = [
      Buffer.from(`127.0.0.1 localhost\n10.1.2.3 ${host}.corp.example ${host}\n`),
      Buffer.from(Array.from({ length: 200 }, (_, i) => `Dec  3 10:${String(i % 60).padStart(2, "0")}:01 ${host} sshd[${900 + i}]: Accepted publickey for deploy\n`).join("")),
      randomBytes(options.binaryBytes ?? 256 * 1024),
    ];
    const files = [path.join(dir, "etc/hosts"), path.join(dir, "var/log/auth.log"), path.join(dir, "var/tmp-dropper")];
    for (const [i, f] of files.entries()) await writeFile(f, contents[i] as Buffer);
    const archive = await buildCarveArchive({
      paths: files,
      carveId,
      outFile: path.join(work, `${carveId}.archive`),
      compression: options.compression ?? false,
      paxTimes: true,
    });
    const gate = options.gated ? await startGatedProxy(svc.url) : null;
    if (gate) gates.push(gate);
    const nodeKey = `node-key-${host}-${carveId.slice(0, 8)}`;
    const done = runCarve({
      baseUrl: gate?.url ?? svc.url,
      startEndpoint: "/start_uploads",
      continueEndpoint: "/upload_blocks",
      archivePath: archive.path,
      blockSize: options.blockSize ?? 32 * 1024,
      carveId,
      nodeKey,
      // A held block must not time out and be retried: the gate decides when it goes.
      timeoutMs: 600_000,
      retryDelaysMs: [20, 40],
    });
    uploads.push(done.catch(() => undefined));
    return { carveId, nodeKey, archive, contents, done, gate };
  };

  return {
    vault,
    svc,
    browser,
    work,
    clock: { advance: (ms) => (offset += ms) },
    admin,
    reader,
    consoleUrl: `${svc.url}/console/`,
    carve,
    dispose: async () => {
      await browser.close();
      for (const g of gates) g.openAll();
      await Promise.all(uploads);
      for (const g of gates) await g.close();
      await svc.dispose();
      await vault.close();
      await rm(work, { recursive: true, force: true });
    },
  };
}

/** The bytes of a file the browser saved. */
export async function savedBytes(file: string | null): Promise<Buffer> {
  if (file === null) throw new Error("the download was not saved");
  return readFile(file);
}
