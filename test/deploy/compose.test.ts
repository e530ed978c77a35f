/**
 * Static checks of the deployment files (no Docker engine runs on CI machines): docker-compose.yml parses and
 * references only files that exist, gives the service only variables it knows (and a configuration it accepts),
 * gives NGINX exactly the variables its templates use, and the ports, paths and body limit agree on both sides;
 * the Dockerfile's stages exist and it runs as non-root; flagfiles, Vault policies and scripts are consistent.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { ENV_OVERRIDES, loadConfig } from "../../src/config/load.js";
import { parseByteSize } from "../../src/config/sizes.js";
import { blockBodyLimit } from "../../src/http/agent-routes.js";
import { proxyMatcher } from "../../src/http/client-identity.js";
import { ROOT } from "../support/service.js";

const run = promisify(execFile);

interface ComposeService {
  image?: string;
  build?: string | { context?: string; dockerfile?: string };
  command?: string | string[];
  entrypoint?: string | string[];
  environment?: Record<string, string | number | boolean | null> | string[];
  ports?: Array<string | { target: number; published?: string | number }>;
  volumes?: Array<string | { type?: string; source?: string; target?: string }>;
  networks?: string[] | Record<string, { ipv4_address?: string } | null>;
  depends_on?: string[] | Record<string, { condition?: string }>;
  user?: string;
  profiles?: string[];
  healthcheck?: { test: string[] };
}

interface Compose {
  services: Record<string, ComposeService>;
  networks?: Record<string, { internal?: boolean; ipam?: { config?: Array<{ subnet?: string }> } } | null>;
}

let compose: Compose;

/** Variables of the standard AWS credential chain the service reads through the AWS SDK (S3 blobs). */
const AWS_CHAIN = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"];

function configFor(env: Record<string, string>) {
  return loadConfig({ env: { ...env, CARVE_CONFIG: path.join(ROOT, "conf/carve-server.yml") }, cwd: ROOT });
}

/** Compose interpolation of `${NAME:-default}` / `${NAME-default}` / `${NAME}` with an empty environment. */
function interpolate(value: string): string {
  return value.replace(
    /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}/g,
    (_m, _name: string, def?: string) => def ?? "",
  );
}

function environmentOf(service: ComposeService): Record<string, string> {
  const env: Record<string, string> = {};
  const raw = service.environment ?? {};
  if (Array.isArray(raw)) {
    for (const entry of raw) {
      const i = entry.indexOf("=");
      env[i === -1 ? entry : entry.slice(0, i)] = i === -1 ? "" : interpolate(entry.slice(i + 1));
    }
  } else {
    for (const [k, v] of Object.entries(raw)) env[k] = v === null ? "" : interpolate(String(v));
  }
  return env;
}

function service(name: string): ComposeService {
  const s = compose.services[name];
  if (!s) throw new Error(`docker-compose.yml has no service ${name}`);
  return s;
}

/** Bind mounts as [host path (absolute), container path]. */
function bindMounts(s: ComposeService): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const v of s.volumes ?? []) {
    if (typeof v === "string") {
      const [source = "", target = ""] = v.split(":");
      if (source.startsWith(".") || source.startsWith("/")) out.push([path.resolve(ROOT, source), target]);
    } else if (v.type === "bind" && v.source && v.target) {
      out.push([path.resolve(ROOT, v.source), v.target]);
    }
  }
  return out;
}

function portOfListen(listen: string): number {
  const m = /(?:^|:)(\d+)$/.exec(listen.trim());
  if (!m) throw new Error(`not a listen address: ${listen}`);
  return Number(m[1]);
}

/** NGINX size syntax: 1024, 8k, 11m, 1g. */
function nginxSize(value: string): number {
  const m = /^(\d+)([kKmMgG]?)$/.exec(value.trim());
  if (!m) throw new Error(`not an NGINX size: ${value}`);
  const unit = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(m[2] ?? "").toLowerCase() as "" | "k" | "m" | "g"];
  return Number(m[1]) * unit;
}

async function templateFiles(): Promise<string[]> {
  const dir = path.join(ROOT, "nginx/templates");
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile() && e.name.endsWith(".template")).map((e) => path.join(e.parentPath, e.name));
}

/** The ${VAR} names the templates use (NGINX's own variables are lower case without braces). */
async function templateVariables(): Promise<Set<string>> {
  const names = new Set<string>();
  for (const file of await templateFiles()) {
    for (const m of (await readFile(file, "utf8")).matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g))
      names.add(m[1] as string);
  }
  return names;
}

beforeAll(async () => {
  compose = parseYaml(await readFile(path.join(ROOT, "docker-compose.yml"), "utf8")) as Compose;
});

describe("docker-compose.yml", () => {
  it("parses and runs nginx, the service, MongoDB and Vault from official images, plus a Vault init step", () => {
    expect(Object.keys(compose.services).sort()).toEqual(["carve-server", "mongo", "nginx", "s3", "vault", "vault-init"]);
    expect(service("nginx").image).toMatch(/^nginx:/);
    expect(service("mongo").image).toMatch(/^mongo:/);
    expect(service("vault").image).toMatch(/^hashicorp\/vault:/);
    expect(service("vault").command).toEqual(["server", "-dev"]);
    expect(service("vault-init").image).toBe(service("vault").image);
    expect(service("carve-server").build).toBeDefined();
  });

  it("references only files that exist (the dev PKI excepted: scripts/dev-pki.sh makes it, git ignores it)", async () => {
    const build = service("carve-server").build;
    const context = path.resolve(ROOT, typeof build === "string" ? build : (build?.context ?? "."));
    expect(existsSync(context)).toBe(true);
    const dockerfile = typeof build === "string" ? "Dockerfile" : (build?.dockerfile ?? "Dockerfile");
    expect(existsSync(path.join(context, dockerfile))).toBe(true);

    for (const [name, s] of Object.entries(compose.services)) {
      for (const [host, target] of bindMounts(s)) {
        if (host === path.join(ROOT, "pki")) {
          expect(existsSync(path.join(ROOT, "scripts/dev-pki.sh"))).toBe(true);
          expect(await readFile(path.join(ROOT, ".gitignore"), "utf8")).toMatch(/^pki\/$/m);
          continue;
        }
        expect(existsSync(host), `${name}: ${host}`).toBe(true);
        // Files the service's own command runs from a mount must exist on the host too.
        const argv = [s.entrypoint ?? [], s.command ?? []].flat().filter((a): a is string => typeof a === "string");
        for (const arg of argv) {
          if (arg.startsWith(`${target}/`))
            expect(existsSync(path.join(host, arg.slice(target.length + 1))), `${name}: ${arg}`).toBe(true);
        }
      }
    }
    const nginxMounts = Object.fromEntries(bindMounts(service("nginx")).map(([h, t]) => [t, h]));
    expect(nginxMounts["/etc/nginx/templates"]).toBe(path.join(ROOT, "nginx/templates"));
    expect(Object.fromEntries(bindMounts(service("vault-init")).map(([h, t]) => [t, h]))["/carve-vault"]).toBe(
      path.join(ROOT, "vault"),
    );
  });

  it("gives the service only environment variables it knows, and a configuration it accepts (GridFS on mongo)", () => {
    const env = environmentOf(service("carve-server"));
    const unknown = Object.keys(env).filter((k) => !Object.hasOwn(ENV_OVERRIDES, k) && !AWS_CHAIN.includes(k));
    expect(unknown).toEqual([]);
    expect(configFor(env).storage.blobs).toBe("local");
    const config = loadConfig({ env: { ...env, CARVE_CONFIG: path.join(ROOT, "conf/carve-server.yml") }, cwd: ROOT });
    expect(config.storage.backend).toBe("gridfs");
    expect(new URL(config.storage.gridfs.uri ?? "").hostname).toBe("mongo");
    expect(config.server.host).toBe("0.0.0.0");
    expect(config.agent.requireSameCertificate).toBe(true);
  });

  it("has an optional s3 profile: an S3 server the service's S3 settings name, with the same credentials, off by default", () => {
    const s3 = service("s3");
    expect(s3.profiles).toEqual(["s3"]);
    expect(s3.image).toMatch(/^chrislusf\/seaweedfs:\d+\.\d+$/);
    expect(s3.ports).toBeUndefined();
    expect(s3.networks).toEqual(["backend"]);
    const env = environmentOf(service("carve-server"));
    const withS3 = configFor({ ...env, CARVE_BLOBS: "s3" });
    expect(withS3.storage.blobs).toBe("s3");
    const endpoint = new URL(withS3.storage.s3.endpoint ?? "");
    expect(endpoint.hostname).toBe("s3");
    expect(endpoint.port).toBe("8333");
    expect(withS3.storage.s3.forcePathStyle).toBe(true);
    const s3env = environmentOf(s3);
    expect(s3env.S3_BUCKET).toBe(withS3.storage.s3.bucket);
    expect(s3env.AWS_ACCESS_KEY_ID).toBe(env.AWS_ACCESS_KEY_ID);
    expect(s3env.AWS_SECRET_ACCESS_KEY).toBe(env.AWS_SECRET_ACCESS_KEY);
    expect(s3.command).toContain("mini");
    // The service waits for it only when the profile is on.
    const deps = service("carve-server").depends_on as Record<string, { condition?: string; required?: boolean }>;
    expect(deps.s3).toEqual({ condition: "service_healthy", required: false });
    expect(s3.healthcheck?.test.join(" ")).toContain("8333/healthz");
  });

  it("trusts exactly NGINX's fixed address, on an internal network the service shares only with its backends", () => {
    const env = environmentOf(service("carve-server"));
    const nginxNets = service("nginx").networks as Record<string, { ipv4_address?: string } | null>;
    const nginxIp = nginxNets.backend?.ipv4_address ?? "";
    expect(net.isIPv4(nginxIp)).toBe(true);
    expect(env.CARVE_TRUSTED_PROXIES).toBe(nginxIp);
    const subnet = compose.networks?.backend?.ipam?.config?.[0]?.subnet ?? "";
    expect(proxyMatcher([subnet])(nginxIp)).toBe(true);
    expect(compose.networks?.backend?.internal).toBe(true);
    expect(service("carve-server").ports).toBeUndefined();
    expect(service("mongo").ports).toBeUndefined();
    expect(service("carve-server").networks).toEqual(["backend"]);
  });

  it("gives NGINX exactly the variables its templates use, and the flag files exist for every mode", async () => {
    const env = environmentOf(service("nginx"));
    const used = await templateVariables();
    expect([...used].filter((v) => !Object.hasOwn(env, v)).sort()).toEqual([]);
    expect(
      Object.keys(env)
        .filter((v) => !used.has(v))
        .sort(),
    ).toEqual([]);
    expect(env.NGINX_AGENT_MTLS).toBe("on"); // mutual TLS unless someone says otherwise
    const includes = path.join(ROOT, "nginx/templates/carve-server.d");
    for (const mode of ["on", "off-UNSAFE"])
      expect(existsSync(path.join(includes, `agent-mtls-${mode}.conf.template`))).toBe(true);
    for (const mode of ["on", "off"]) {
      for (const part of ["upstream", "locations"]) {
        expect(existsSync(path.join(includes, `fleet-manager-${mode}.${part}.conf.template`))).toBe(true);
      }
    }
  });

  it("agrees with the service on ports, paths and the body limit", () => {
    const nginx = environmentOf(service("nginx"));
    const svc = environmentOf(service("carve-server"));
    const published = (service("nginx").ports ?? []).map((p) =>
      typeof p === "string" ? Number(p.split(":").at(-1)?.split("/")[0]) : p.target,
    );
    expect(published.sort()).toEqual(
      [portOfListen(nginx.NGINX_AGENT_LISTEN ?? ""), portOfListen(nginx.NGINX_RESPONDER_LISTEN ?? "")].sort(),
    );

    const [upstreamHost, upstreamPort] = (nginx.CARVE_UPSTREAM ?? "").split(":");
    expect(upstreamHost).toBe("carve-server");
    expect(upstreamPort).toBe(svc.CARVE_PORT);
    expect(nginx.CARVE_START_PATH).toBe(svc.CARVE_START_PATH);
    expect(nginx.CARVE_CONTINUE_PATH).toBe(svc.CARVE_CONTINUE_PATH);

    // NGINX must admit a body carrying the largest block the service accepts (docs/deployment.md's formula).
    const maxBlock = parseByteSize(svc.CARVE_MAX_BLOCK_SIZE ?? "") ?? NaN;
    const limit = nginxSize(nginx.NGINX_CLIENT_MAX_BODY_SIZE ?? "");
    expect(limit).toBeGreaterThanOrEqual(blockBodyLimit(maxBlock));
    expect(limit).toBeGreaterThanOrEqual(Math.ceil(1.34 * maxBlock) + 65536);
    expect(limit).toBeLessThanOrEqual(Math.ceil(1.34 * maxBlock) + 65536 + 1024 ** 2); // and not wildly more
  });

  it("keeps the longest rate-limit wait (burst / rate) well inside osquery's 16 s request deadline", () => {
    const env = environmentOf(service("nginx"));
    for (const [rate, burst] of [
      ["NGINX_CARVE_RATE", "NGINX_CARVE_BURST"],
      ["NGINX_FLEET_RATE", "NGINX_FLEET_BURST"],
    ] as const) {
      const m = /^(\d+)r\/(s|m)$/.exec(env[rate] ?? "");
      expect(m, rate).not.toBeNull();
      const perSecond = Number(m?.[1]) / (m?.[2] === "m" ? 60 : 1);
      expect(Number(env[burst]) / perSecond, `${burst} / ${rate}`).toBeLessThanOrEqual(8);
    }
  });

  it("loads the Vault policies and a responder login in the init step", () => {
    const env = environmentOf(service("vault-init"));
    expect(env.VAULT_ADDR).toBe("http://vault:8200");
    expect(env.VAULT_TOKEN).toBe(environmentOf(service("vault")).VAULT_DEV_ROOT_TOKEN_ID);
    expect(env.CARVE_VAULT_USERPASS_USER).toBeTruthy();
    expect(env.CARVE_VAULT_USERPASS_PASSWORD).toBeTruthy();
    expect(service("vault-init").entrypoint).toEqual(["/bin/sh", "/carve-vault/setup.sh"]);
  });
});

describe("nginx/render.sh (NGINX without the official image)", () => {
  it("renders every template with the environment compose gives NGINX, and refuses when a variable is missing", async () => {
    const out = await mkdtemp(path.join(tmpdir(), "carve-render-"));
    try {
      const env = { PATH: process.env.PATH ?? "", ...environmentOf(service("nginx")) };
      await run("sh", [path.join(ROOT, "nginx/render.sh"), out], { env });
      const rendered = (await readdir(out, { recursive: true, withFileTypes: true })).filter((e) => e.isFile());
      expect(rendered.length).toBe((await templateFiles()).length);
      for (const f of rendered)
        expect(await readFile(path.join(f.parentPath, f.name), "utf8")).not.toMatch(/\$\{[A-Z_]+\}/);
      const main = await readFile(path.join(out, "carve-server.conf"), "utf8");
      expect(main).toContain("listen 443 ssl http2;");
      expect(main).toContain("$ssl_client_fingerprint"); // NGINX's own variables untouched

      const partial: Record<string, string> = { ...env };
      delete partial.NGINX_AGENT_CA;
      await expect(run("sh", [path.join(ROOT, "nginx/render.sh"), out], { env: partial })).rejects.toThrow(
        /not set: NGINX_AGENT_CA/,
      );
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});

describe("Dockerfile", () => {
  let lines: string[];
  beforeAll(async () => {
    // Join continuation lines, drop comments.
    const text = (await readFile(path.join(ROOT, "Dockerfile"), "utf8")).replace(/\\\n/g, " ");
    lines = text
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "" && !l.startsWith("#"));
  });

  it("is multi-stage: every COPY --from names an earlier stage; production dependencies only in the image", () => {
    const stages: string[] = [];
    let current = "";
    const copiesFrom: Record<string, string[]> = {};
    for (const line of lines) {
      const from = /^FROM\s+\S+(?:\s+AS\s+(\S+))?$/i.exec(line);
      if (from) {
        current = from[1] ?? String(stages.length);
        stages.push(current);
        continue;
      }
      const copy = /^COPY\s+.*--from=(\S+)/i.exec(line);
      if (copy) {
        expect(stages.slice(0, -1), line).toContain(copy[1]);
        (copiesFrom[current] ??= []).push(line);
      }
    }
    expect(stages.length).toBeGreaterThanOrEqual(2);
    const final = stages.at(-1) ?? "";
    const depsStage = /--from=(\S+)\s+\S*\s*\/app\/node_modules/.exec((copiesFrom[final] ?? []).join("\n"))?.[1];
    expect(depsStage).toBeDefined();
    const depsBlock = lines.slice(lines.findIndex((l) => new RegExp(`AS\\s+${depsStage ?? ""}$`, "i").test(l)));
    expect(depsBlock.find((l) => /^RUN\s+npm ci/.test(l))).toMatch(/--omit=dev/);
  });

  it("npm start passes --optimize-for-size on the node command line too, as the Dockerfile does", async () => {
    const pkg = JSON.parse(await readFile(path.join(ROOT, "package.json"), "utf8")) as { scripts: Record<string, string> };
    expect(pkg.scripts.start).toMatch(/(^|&& )node --optimize-for-size dist\/src\/main\.js$/);
  });

  it("runs node --optimize-for-size dist/src/main.js as a non-root user with a HEALTHCHECK on /status", () => {
    const finalStage = lines.slice(lines.map((l) => /^FROM\s/i.test(l)).lastIndexOf(true));
    const user =
      finalStage
        .filter((l) => /^USER\s/i.test(l))
        .at(-1)
        ?.split(/\s+/)[1] ?? "root";
    expect(["root", "0", "0:0", "root:root"]).not.toContain(user);
    // V8 sizes its young generation at start-up: the flag must be on the command line (src/main.ts).
    expect(finalStage.find((l) => /^CMD\s/i.test(l))).toMatch(/\["node",\s*"--optimize-for-size",\s*"dist\/src\/main\.js"\]/);
    expect(finalStage.find((l) => /^HEALTHCHECK\s/i.test(l))).toMatch(/\/status/);
    expect(finalStage.find((l) => /^EXPOSE\s/i.test(l))).toMatch(
      new RegExp(`\\b${environmentOf(service("carve-server")).CARVE_PORT}\\b`),
    );
  });

  it("builds the web console and ships it beside the service", () => {
    const finalStage = lines.slice(lines.map((l) => /^FROM\s/i.test(l)).lastIndexOf(true));
    expect(lines).toContain("COPY console ./console");
    expect(finalStage.some((l) => /^COPY\s+--from=\S+.*\/app\/dist\/console\s+\.\/dist\/console$/.test(l))).toBe(true);
  });

  it("keeps keys, data and node_modules out of the build context", async () => {
    const ignored = (await readFile(path.join(ROOT, ".dockerignore"), "utf8")).split("\n").map((l) => l.trim());
    for (const entry of ["pki/", "data/", "node_modules/", ".git/", "**/*.key"]) expect(ignored).toContain(entry);
  });
});

describe("osquery flag files", () => {
  it.each([["conf/osquery.flags"], ["conf/osquery-fleet.flags"]])(
    "%s: no trailing spaces, the front's TLS flags, the service's carve paths",
    async (file) => {
      const text = await readFile(path.join(ROOT, file), "utf8");
      const flags = text.split("\n").filter((l) => l.startsWith("--"));
      expect(text.split("\n").filter((l) => /\s$/.test(l))).toEqual([]);
      const value = (name: string): string | undefined =>
        flags.find((l) => l.startsWith(`--${name}=`))?.slice(name.length + 3);
      const svc = environmentOf(service("carve-server"));
      expect(value("carver_start_endpoint")).toBe(svc.CARVE_START_PATH);
      expect(value("carver_continue_endpoint")).toBe(svc.CARVE_CONTINUE_PATH);
      expect(value("disable_carver")).toBe("false");
      for (const f of ["tls_hostname", "tls_server_certs", "tls_client_cert", "tls_client_key", "carver_block_size"])
        expect(value(f)).toBeTruthy();
      expect(Number(value("carver_block_size"))).toBeLessThanOrEqual(
        parseByteSize(svc.CARVE_MAX_BLOCK_SIZE ?? "") ?? 0,
      );
    },
  );

  it("conf/osquery-fleet.flags sends config, logs and queries to paths NGINX gives the fleet manager", async () => {
    const text = await readFile(path.join(ROOT, "conf/osquery-fleet.flags"), "utf8");
    for (const f of [
      "config_tls_endpoint",
      "logger_tls_endpoint",
      "distributed_tls_read_endpoint",
      "enroll_tls_endpoint",
    ]) {
      const v = new RegExp(`^--${f}=(\\S+)$`, "m").exec(text)?.[1];
      expect(v).toMatch(/^\/api\//);
      expect(v).not.toMatch(/start_uploads|upload_blocks/);
    }
  });
});

describe("Vault policies and scripts", () => {
  it("the download policy reads and lists osquery-carves/*; the admin policy also deletes and updates, and reads osquery-carves-admin/*", async () => {
    const download = await readFile(path.join(ROOT, "vault/osquery-carve-download.hcl"), "utf8");
    const admin = await readFile(path.join(ROOT, "vault/osquery-carve-admin.hcl"), "utf8");
    const rules = (hcl: string): Record<string, string[]> => {
      const out: Record<string, string[]> = {};
      for (const m of hcl.matchAll(/^path\s+"([^"]+)"\s*\{\s*capabilities\s*=\s*\[([^\]]*)\]\s*\}/gm)) {
        out[m[1] as string] = [...(m[2] ?? "").matchAll(/"([a-z]+)"/g)].map((c) => c[1] as string).sort();
      }
      return out;
    };
    expect(rules(download)).toEqual({ "osquery-carves/*": ["list", "read"] });
    expect(rules(admin)).toEqual({
      "osquery-carves/*": ["delete", "list", "read", "update"],
      "osquery-carves-admin/*": ["read"],
    });
  });

  it("setup.sh writes both policies under the names the service checks, and the scripts parse", async () => {
    const setup = await readFile(path.join(ROOT, "vault/setup.sh"), "utf8");
    expect(setup).toContain('vault policy write "$download_policy" "$here/osquery-carve-download.hcl"');
    expect(setup).toContain('vault policy write "$admin_policy" "$here/osquery-carve-admin.hcl"');
    expect(setup).toMatch(/^download_policy=osquery-carve-download$/m);
    expect(setup).toMatch(/^admin_policy=osquery-carve-admin$/m);
    expect(setup.split("\n")[0]).toBe("#!/bin/sh"); // the hashicorp/vault image has no bash
    await run("sh", ["-n", path.join(ROOT, "vault/setup.sh")]);
    await run("bash", ["-n", path.join(ROOT, "scripts/dev-pki.sh")]);
  });
});
