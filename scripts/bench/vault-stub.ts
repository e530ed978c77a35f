/**
 * Bench-only stand-in for HashiCorp Vault: just enough of Vault's HTTP API for the service's responder
 * authorization in `policy` mode (CARVE_VAULT_AUTH_MODE=policy, the default), so the download benchmark can
 * fetch carves the way a responder does (curl + X-Vault-Token) without a real Vault on the machine.
 *
 * It is NOT a test double and checks nothing about the service (the test suite has test/support/vault-double.ts
 * for that, which the bench build cannot import). It knows exactly one token and answers:
 *
 *  - GET /v1/auth/token/lookup-self with that token in X-Vault-Token (or `Authorization: Bearer` when
 *    X-Vault-Token is absent or empty, as Vault does): 200 and Vault's logical response envelope
 *    {request_id, lease_id, renewable, lease_duration, data, wrap_info, warnings, auth, mount_type}, `data`
 *    holding the keys of Vault's token lookup (api-docs/auth/token "Lookup a token (self)"): the token's
 *    policies (sorted, "default" added), ttl / expire_time of a one-hour service token, num_uses 0, ...
 *  - no token: 400 {"errors":["missing client token"]}
 *  - any other token: 403 {"errors":["permission denied"]} (Vault before ~1.15; newer Vault wraps the same
 *    403 in a multi-error string, the service reads only the status)
 *  - another method on lookup-self: 405; any other /v1 path: 404 {"errors":[]} for the known token.
 *
 * Runs inside the benchmark process on 127.0.0.1 and counts the lookups it answered, so a report can show
 * that the service's decision cache kept Vault off the download path.
 */
import { randomBytes, randomUUID } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";

export interface VaultStubOptions {
  /** Policies the known token carries (the service's download policy is osquery-carve-download). */
  policies: string[];
  /** Token lifetime reported by lookup-self, seconds (default 3600). */
  ttlSeconds?: number;
}

export interface VaultStub {
  /** VAULT_ADDR for the service: http://127.0.0.1:<port> */
  address: string;
  /** The one token it knows (random, "hvs." prefix like Vault's service tokens). */
  token: string;
  /** lookup-self requests answered, by outcome. */
  readonly counts: { allowed: number; refused: number };
  stop(): Promise<void>;
}

function tokenOf(req: http.IncomingMessage): string {
  const header = req.headers["x-vault-token"];
  const direct = Array.isArray(header) ? (header[0] ?? "") : (header ?? "");
  if (direct !== "") return direct;
  const auth = req.headers.authorization ?? "";
  return /^Bearer\s+/i.test(auth) ? auth.replace(/^Bearer\s+/i, "").trim() : "";
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "Content-Type": "application/json",
    "Content-Length": Buffer.byteLength(text),
    "Cache-Control": "no-store",
  });
  res.end(text);
}

export async function startVaultStub(options: VaultStubOptions): Promise<VaultStub> {
  const token = `hvs.${randomBytes(18).toString("base64url")}`;
  const accessor = randomBytes(12).toString("base64url");
  const ttl = options.ttlSeconds ?? 3600;
  const created = Math.floor(Date.now() / 1000);
  const policies = [...new Set(["default", ...options.policies.map((p) => p.trim().toLowerCase())])].sort();
  const counts = { allowed: 0, refused: 0 };

  const server = http.createServer((req, res) => {
    req.resume();
    const path = (req.url ?? "").split("?")[0] ?? "";
    const given = tokenOf(req);
    if (given === "") {
      counts.refused++;
      send(res, 400, { errors: ["missing client token"] });
      return;
    }
    if (given !== token) {
      counts.refused++;
      send(res, 403, { errors: ["permission denied"] });
      return;
    }
    if (path !== "/v1/auth/token/lookup-self") {
      send(res, 404, { errors: [] });
      return;
    }
    if (req.method !== "GET") {
      send(res, 405, { errors: ["unsupported operation"] });
      return;
    }
    counts.allowed++;
    const now = Math.floor(Date.now() / 1000);
    const left = Math.max(0, created + ttl - now);
    send(res, 200, {
      request_id: randomUUID(),
      lease_id: "",
      renewable: false,
      lease_duration: 0,
      data: {
        accessor,
        creation_time: created,
        creation_ttl: ttl,
        display_name: "token-carve-bench",
        entity_id: "",
        expire_time: new Date((created + ttl) * 1000).toISOString(),
        explicit_max_ttl: 0,
        id: token,
        issue_time: new Date(created * 1000).toISOString(),
        meta: null,
        num_uses: 0,
        orphan: false,
        path: "auth/token/create",
        policies,
        renewable: true,
        ttl: left,
        type: "service",
      },
      wrap_info: null,
      warnings: null,
      auth: null,
      mount_type: "token",
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  return {
    address: `http://127.0.0.1:${port}`,
    token,
    counts,
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
