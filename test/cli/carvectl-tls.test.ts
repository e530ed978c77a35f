/**
 * carvectl through TLS: the service's own mutual-TLS listener with a PKI from scripts/dev-pki.sh. The
 * server's CA comes from --ca-cert (or CARVE_CACERT), the client certificate from --client-cert and
 * --client-key; without them the handshake fails and carvectl says which flag to give (exit 9).
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CarveList } from "../../src/http/api-contract.js";
import { carvectl } from "../support/carvectl.js";
import { ROOT, startTestService, type TestService } from "../support/service.js";
import { startVaultDouble, type VaultDouble } from "../support/vault-double.js";

const run = promisify(execFile);
let vault: VaultDouble;
let svc: TestService;
let pki: string;
const TOKEN = `hvs.CAESItls${randomBytes(8).toString("hex")}`;

beforeAll(async () => {
  pki = await mkdtemp(path.join(tmpdir(), "carvectl-pki-"));
  await run("bash", [path.join(ROOT, "scripts/dev-pki.sh"), "--days", "2", pki]);
  vault = await startVaultDouble();
  vault.addToken(TOKEN, { policies: ["osquery-carve-download"], displayName: "ldap-dana" });
  svc = await startTestService({
    VAULT_ADDR: vault.url,
    CARVE_TLS_CERT: path.join(pki, "server.pem"),
    CARVE_TLS_KEY: path.join(pki, "server.key"),
    CARVE_TLS_CLIENT_CA: path.join(pki, "ca.pem"),
  });
}, 60_000);

afterAll(async () => {
  await svc.dispose();
  await vault.close();
  await rm(pki, { recursive: true, force: true });
});

describe("carvectl over mutual TLS", () => {
  const addr = (): string => `https://localhost:${svc.port}`;
  const env = (extra: Record<string, string> = {}): Record<string, string> => ({ HOME: pki, CARVE_ADDR: addr(), VAULT_TOKEN: TOKEN, ...extra });

  it("works with the CA and a client certificate, from flags or from the environment", async () => {
    const flags = ["--ca-cert", path.join(pki, "ca.pem"), "--client-cert", path.join(pki, "responder.pem"), "--client-key", path.join(pki, "responder.key")];
    const r = await carvectl(["list", ...flags], { env: env() });
    expect(r.code, r.stderr).toBe(0);
    expect(r.json<CarveList>().carves).toEqual([]);
    const fromEnv = await carvectl(["list"], {
      env: env({ CARVE_CACERT: path.join(pki, "ca.pem"), CARVE_CLIENT_CERT: path.join(pki, "responder.pem"), CARVE_CLIENT_KEY: path.join(pki, "responder.key") }),
    });
    expect(fromEnv.code, fromEnv.stderr).toBe(0);
  });

  it("says which flag is missing when the handshake fails (exit 9)", async () => {
    const noCa = await carvectl(["list"], { env: env() });
    expect(noCa.code).toBe(9);
    expect(noCa.stderr).toMatch(/^carvectl: cannot reach https:\/\/localhost:\d+: .*certificate.*: check the server certificate's CA \(--ca-cert\)/);
    const noClient = await carvectl(["list", "--ca-cert", path.join(pki, "ca.pem")], { env: env() });
    expect(noClient.code).toBe(9);
    expect(noClient.stderr).toMatch(/--client-cert, --client-key/);
    expect(noClient.stderr.trim().split("\n")).toHaveLength(1);
    const half = await carvectl(["list", "--client-cert", path.join(pki, "responder.pem")], { env: env() });
    expect(half.code).toBe(2);
  });
});
