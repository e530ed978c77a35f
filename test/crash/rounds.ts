/**
 * One crash round: the built service as a child process, agents emulated as osquery 5.23 uploads (several at
 * once, blocks reordered and duplicated), a responder import, completions, an explicit delete and retention
 * deletes, and one SIGKILL: at a named crash point (CARVE_CRASH_AT, src/util/crash-point.ts) or from outside
 * at a random moment. The service is restarted without the crash setting and the agents' own retries
 * (5.22+: 3 attempts, 1 s then 4 s apart) carry on. Checked every round, through the HTTP API and the agents'
 * results, plus test/crash/layout.ts for what only the storage layout shows:
 *  - every block an agent saw acknowledged is stored; every carve whose agent succeeded is complete, once,
 *    byte-exact on download;
 *  - nothing partial is ever visible as complete: not in listings sampled during the round, not as a
 *    download, not as a published archive (also right after the crash, before any recovery ran);
 *  - nothing is left behind by a completion or a deletion (staging, temporary files, orphan chunks).
 * Everything random comes from the round's seed, so a failing round is re-run with the same plan (timing,
 * and so the exact interleaving, still varies).
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { runCarve, type CarveResult } from "../../scripts/emulator/index.js";
import { CRASH_POINTS, type CrashPointName } from "../../src/util/crash-point.js";
import { freePort, spawnService, type ChildService } from "../support/service.js";
import { filesystemLayout, gridfsLayout, type LayoutReader, type LayoutSnapshot } from "./layout.js";

export type Backend = "filesystem" | "gridfs";

interface AgentPlan {
  blockSize: number;
  carveSize: number;
  order: number[];
  duplicate: number[];
}

export interface RoundPlan {
  seed: number;
  round: number;
  /** A named crash point and the hit it fires at, or a SIGKILL from outside after killAfterMs. */
  crash: { point: CrashPointName; hit: number } | { killAfterMs: number };
  /** Which part of the round the crash is armed in. */
  phase: "upload" | "delete";
  agents: AgentPlan[];
  importSize: number;
}

/** Points the deployments these rounds run never reach: no migration exists yet; object.* are the S3 blob store's. */
const UNREACHED: ReadonlySet<CrashPointName> = new Set(["migrate.mid", "object.mid-upload", "object.after-upload"]);
export const ARMED_POINTS = CRASH_POINTS.filter((p) => !UNREACHED.has(p));

/** mulberry32: small, fast, and the same sequence on every platform. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The plan of round `round` of `seed`; `points` narrows the crash points drawn from (and rules out outside kills). */
export function planRound(seed: number, round: number, points: readonly CrashPointName[] = ARMED_POINTS): RoundPlan {
  const r = prng((seed ^ Math.imul(round + 1, 0x9e3779b1)) >>> 0);
  const int = (lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;
  const agents: AgentPlan[] = [];
  for (let i = 0, n = int(2, 4); i < n; i++) {
    const blockSize = pick([4096, 8192, 16384]);
    const blocks = int(2, 12);
    const carveSize = blockSize * (blocks - 1) + int(1, blockSize);
    const order = Array.from({ length: blocks }, (_, k) => k);
    if (r() < 0.6) {
      for (let k = order.length - 1; k > 0; k--) {
        const j = Math.floor(r() * (k + 1));
        [order[k], order[j]] = [order[j] as number, order[k] as number];
      }
    }
    const duplicate = order.filter(() => r() < 0.2);
    agents.push({ blockSize, carveSize, order, duplicate });
  }
  const importSize = int(1_200_000, 3_000_000);
  const totalBlocks = agents.reduce((s, a) => s + Math.ceil(a.carveSize / a.blockSize), 0);
  const external = r() < 0.2;
  if (external && points === ARMED_POINTS) {
    return { seed, round, crash: { killAfterMs: int(30, 1500) }, phase: r() < 0.75 ? "upload" : "delete", agents, importSize };
  }
  const point = pick(points);
  let hit = 1;
  if (point.startsWith("block.")) hit = int(1, totalBlocks);
  else if (point.startsWith("complete.")) hit = int(1, agents.length);
  else if (point === "import.mid-stream") hit = int(1, 2);
  else if (point.startsWith("delete.")) hit = int(1, 2);
  return { seed, round, crash: { point, hit }, phase: point.startsWith("delete.") ? "delete" : "upload", agents, importSize };
}

export interface RoundEnv {
  backend: Backend;
  work: string;
  vaultUrl: string;
  /** A Vault token with the download, admin and import policies. */
  token: string;
  mongoUri?: string;
}

export interface RoundOutcome {
  plan: RoundPlan;
  /** The crash happened (a point can be missed when, say, an agent failed before its hit). */
  crashed: boolean;
  crashNote: string;
  agents: Array<CarveResult["status"]>;
  importsAcknowledged: number;
}

const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

class RoundFailure extends Error {}

/** Runs one round; throws (with the plan, for reproduction) on the first broken promise. */
export async function runRound(plan: RoundPlan, env: RoundEnv): Promise<RoundOutcome> {
  const problems: string[] = [];
  const fail = (what: string): never => {
    throw new RoundFailure(`${what}\nplan: ${JSON.stringify(plan)}`);
  };
  const dir = path.join(env.work, `round-${plan.seed}-${plan.round}-${randomUUID().slice(0, 8)}`);
  const database = `crash_${plan.seed}_${plan.round}_${randomBytes(4).toString("hex")}`;
  const configFile = `${dir}.yml`;
  // staleDeleteAfterMinutes has no environment variable: a deletion a crash left unfinished is finished by
  // the retention run 0.6 s later instead of after the default 10 minutes.
  await writeFile(configFile, "retention:\n  staleDeleteAfterMinutes: 0.01\n");
  const port = await freePort();
  const base: Record<string, string> = {
    CARVE_CONFIG: configFile,
    CARVE_PORT: String(port),
    LOG_LEVEL: "info",
    VAULT_ADDR: env.vaultUrl,
    ...(env.backend === "gridfs"
      ? { CARVE_STORAGE: "gridfs", CARVE_MONGODB_URI: env.mongoUri ?? "", CARVE_MONGODB_DATABASE: database }
      : { CARVE_DATA_DIR: dir }),
  };
  const noRetention = { CARVE_RETENTION_ENABLED: "false" };
  const retention = { CARVE_RETENTION_ENABLED: "true", CARVE_RETENTION_DAYS: "0", CARVE_RETENTION_INTERVAL_MINUTES: "0.01" };
  const layout: LayoutReader = env.backend === "gridfs" ? gridfsLayout(env.mongoUri ?? "", database) : filesystemLayout(dir);
  const url = `http://127.0.0.1:${port}`;
  const outputs: string[][] = [];
  let child: ChildService | null = null;
  let crashed = false;
  let crashNote = "no crash";

  // What may ever be published: each agent carve's bytes, and any of the import payloads.
  const files = plan.agents.map(() => randomBytes(0));
  const expectedById = new Map<string, string>();
  const importBytes = randomBytes(plan.importSize);
  const importSha = sha(importBytes);

  const start = async (extra: Record<string, string>): Promise<ChildService> => {
    // 60 s: on a machine loaded far beyond its cores, a start-up alone has taken over 30 s.
    const c = await spawnService({ ...base, ...extra }, 60_000);
    outputs.push(c.output);
    child = c;
    return c;
  };
  const api = async (p: string, init: RequestInit = {}): Promise<Response> =>
    fetch(url + p, { ...init, headers: { "x-vault-token": env.token, ...(init.headers as Record<string, string>) } });
  const publishedProblems = (snap: LayoutSnapshot, when: string): void => {
    for (const [id, copies] of snap.published) {
      const want = expectedById.get(id);
      for (const c of copies) {
        if (c !== want && c !== importSha) problems.push(`${when}: published archive of ${id} is not whole (${c.slice(0, 16)})`);
      }
      if (copies.length > 1) problems.push(`${when}: ${copies.length} published copies of ${id}`);
    }
  };

  /**
   * Runs `work` with the crash armed: when the child dies, the layout is checked as the crash left it, then a
   * child without the crash setting takes the same port, while `work` (agents retrying) goes on.
   */
  const armed = async <T>(extra: Record<string, string>, work: () => Promise<T>): Promise<T> => {
    const spec = "point" in plan.crash ? { CARVE_CRASH_AT: `${plan.crash.point}:${plan.crash.hit}` } : {};
    const first = await start({ ...extra, ...spec });
    let timer: NodeJS.Timeout | undefined;
    if ("killAfterMs" in plan.crash) timer = setTimeout(() => first.proc.kill("SIGKILL"), plan.crash.killAfterMs);
    let done = false;
    let restart: Promise<unknown> | null = null;
    void first.exited.then((code) => {
      if (done) return;
      crashed = true;
      const line = first.output.find((l) => l.startsWith("crash-point: SIGKILL"));
      crashNote = line ?? `killed from outside (exit ${code}, ${first.proc.signalCode})`;
      restart = layout.snapshot().then(async (snap) => {
        publishedProblems(snap, "right after the crash");
        await start(extra);
      });
      // Awaited (and so reported) in the finally below; handled now so a failed restart is no unhandled rejection.
      restart.catch(() => undefined);
    });
    try {
      return await work();
    } finally {
      clearTimeout(timer);
      // A kill planned later than the work took still happens (between the phases), with its restart.
      if ("killAfterMs" in plan.crash && first.proc.exitCode === null && first.proc.signalCode === null) {
        first.proc.kill("SIGKILL");
        await first.exited;
      }
      done = true;
      await (restart as Promise<unknown> | null);
    }
  };

  const waitUp = async (): Promise<void> => {
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      try {
        if ((await fetch(`${url}/status`)).ok) return;
      } catch {
        // down or restarting
      }
      await sleep(50);
    }
    fail("the service did not come back within 60 s");
  };

  type Listed = { carveId: string; status: string; sha256: string | null; origin: string };
  const list = async (): Promise<Listed[]> => {
    const res = await api("/api/v1/carves?limit=500");
    if (res.status !== 200) throw new Error(`listing answered ${res.status}`);
    return ((await res.json()) as { carves: Listed[] }).carves;
  };
  const checkListed = (carves: Listed[], when: string): void => {
    for (const c of carves) {
      if (c.status !== "complete") continue;
      const want = expectedById.get(c.carveId) ?? (c.origin === "import" ? importSha : undefined);
      if (c.sha256 !== want) problems.push(`${when}: ${c.carveId} listed complete with sha256 ${c.sha256}, expected ${want}`);
    }
  };
  const download = async (id: string): Promise<{ status: number; sha: string }> => {
    const res = await api(`/api/v1/carves/${id}/archive`);
    return { status: res.status, sha: sha(Buffer.from(await res.arrayBuffer())) };
  };

  // Listings sampled all through the upload phase: a carve may be listed complete only when it is whole.
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      try {
        checkListed(await list(), "sampled listing");
      } catch {
        // the service is down (crash) or restarting
      }
      await sleep(100);
    }
  })();

  const agentResults: CarveResult[] = [];
  const acknowledgedImports: string[] = [];
  try {
    // ------------------------------------------------------------- upload phase
    const archives = await Promise.all(
      plan.agents.map(async (a, i) => {
        const bytes = randomBytes(a.carveSize);
        files[i] = bytes;
        const file = path.join(env.work, `${path.basename(dir)}-${i}.bin`);
        await writeFile(file, bytes);
        const carveId = randomUUID();
        expectedById.set(carveId, sha(bytes));
        return { file, carveId };
      }),
    );
    const uploads = async (): Promise<void> => {
      const agents = plan.agents.map((a, i) =>
        runCarve({
          baseUrl: url,
          startEndpoint: "/start_uploads",
          continueEndpoint: "/upload_blocks",
          archivePath: archives[i]!.file,
          carveId: archives[i]!.carveId,
          blockSize: a.blockSize,
          agentVersion: "5.23.0",
          inject: { order: a.order, duplicate: a.duplicate },
        }),
      );
      const importer = (async () => {
        // A responder whose import failed (connection cut) sends it again once the service is back.
        for (let attempt = 1; attempt <= 4; attempt++) {
          await waitUp();
          const form = new FormData();
          form.append("description", `crash round ${plan.round}`);
          form.append("file", new Blob([importBytes]), "evidence.tar");
          try {
            const res = await api("/api/v1/carves/import", { method: "POST", body: form });
            const body = (await res.json()) as { carveId?: string };
            if (res.status === 201 && body.carveId) {
              acknowledgedImports.push(body.carveId);
              expectedById.set(body.carveId, importSha);
              return;
            }
          } catch {
            // cut by the crash: try again
          }
        }
      })();
      agentResults.push(...(await Promise.all(agents)));
      await importer;
    };
    await (plan.phase === "upload" ? armed(noRetention, uploads) : start(noRetention).then(uploads));
    sampling = false;
    await sampler;
    await waitUp();

    // ------------------------------------------------------------- checks after the upload phase
    const listed = await list();
    checkListed(listed, "listing after the uploads");
    const byId = new Map(listed.map((c) => [c.carveId, c]));
    for (const [i, result] of agentResults.entries()) {
      const id = result.carveId;
      const rec = byId.get(id);
      const acked = new Set(result.requests.filter((q) => q.kind === "block" && q.ok).map((q) => q.blockId));
      const startAcked = result.requests.some((q) => q.kind === "start" && q.ok);
      if (result.status === "SUCCESS" && rec?.status !== "complete") problems.push(`agent ${i} succeeded but ${id} is ${rec?.status ?? "absent"}`);
      if (!rec) {
        if (startAcked) problems.push(`agent ${i}: start acknowledged but ${id} is not listed`);
        continue;
      }
      if (rec.status === "complete") {
        const d = await download(id);
        if (d.status !== 200 || d.sha !== sha(files[i]!)) problems.push(`agent ${i}: download of ${id}: ${d.status}, sha ${d.sha.slice(0, 16)}`);
      } else {
        const detail = (await (await api(`/api/v1/carves/${id}`)).json()) as { missingBlockIds: number[] };
        const lost = detail.missingBlockIds.filter((b) => acked.has(b));
        if (lost.length > 0) problems.push(`agent ${i}: acknowledged blocks ${lost.join(",")} of ${id} are missing`);
        const d = await download(id);
        if (d.status === 200) problems.push(`agent ${i}: incomplete ${id} downloadable`);
      }
    }
    for (const id of acknowledgedImports) {
      if (byId.get(id)?.status !== "complete") problems.push(`acknowledged import ${id} is ${byId.get(id)?.status ?? "absent"}`);
    }
    for (const c of listed) {
      if (!expectedById.has(c.carveId) && c.origin !== "import") problems.push(`unknown carve ${c.carveId} listed`);
      if (c.origin === "import") {
        const d = await download(c.carveId);
        if (d.status !== 200 || d.sha !== importSha) problems.push(`import ${c.carveId}: download ${d.status}, sha ${d.sha.slice(0, 16)}`);
      }
    }
    const completions = new Map<string, number>();
    for (const line of outputs.flat()) {
      const m = /"carveId":"([^"]+)".*"msg":"carve complete"/.exec(line);
      if (m?.[1]) completions.set(m[1], (completions.get(m[1]) ?? 0) + 1);
    }
    for (const [id, n] of completions) if (n > 1) problems.push(`${id} completed ${n} times`);
    const snap = await layout.snapshot();
    publishedProblems(snap, "after the upload phase");
    const complete = new Set(listed.filter((c) => c.status === "complete").map((c) => c.carveId));
    for (const id of complete) if ((snap.published.get(id) ?? []).length !== 1) problems.push(`complete ${id} has ${(snap.published.get(id) ?? []).length} published copies`);
    for (const [id] of snap.published) {
      // An import cut between its GridFS files document and its record stays hidden (and whole, checked
      // above) until retention expires it as abandoned; the filesystem removes it at start-up.
      if (snap.records.get(id) === "importing") continue;
      if (!complete.has(id)) problems.push(`published ${id} is not listed complete (listed ${byId.get(id)?.status ?? "nowhere"}, record ${snap.records.get(id) ?? "none"})`);
    }
    for (const [id, what] of snap.staging) {
      if (complete.has(id)) problems.push(`completion of ${id} left staging: ${what}`);
      else if (!byId.has(id) && snap.records.get(id) !== "importing") problems.push(`staging of an unknown carve ${id}: ${what}`);
    }
    for (const o of snap.orphans) problems.push(`after the upload phase: orphan ${o}`);
    if (problems.length > 0) fail(problems.join("\n"));

    // ------------------------------------------------------------- delete phase: one explicit delete, retention
    await new Promise<void>((resolve) => {
      const c = child;
      if (!c) return resolve();
      void c.exited.then(() => resolve());
      c.proc.kill("SIGTERM");
    });
    const incomplete = new Set(listed.filter((c) => c.status !== "complete").map((c) => c.carveId));
    const deletes = async (): Promise<void> => {
      const victim = [...complete][0];
      if (victim) {
        try {
          const res = await api(`/api/v1/carves/${victim}`, { method: "DELETE" });
          // 404: the retention run got there first.
          if (res.status !== 200 && res.status !== 404) problems.push(`DELETE ${victim} answered ${res.status}`);
        } catch {
          // cut by the crash; the deletion is finished by retention after the restart
        }
      }
      const deadline = Date.now() + 60_000;
      for (;;) {
        let left: string[] = [];
        try {
          await waitUp();
          left = (await list()).filter((c) => !incomplete.has(c.carveId)).map((c) => c.carveId);
          const s = await layout.snapshot();
          for (const [id] of s.records) if (!incomplete.has(id) && s.records.get(id) !== "importing") left.push(`${id} (${s.records.get(id)})`);
          for (const [id] of s.published) if (s.records.get(id) !== "importing") left.push(`published ${id}`);
          for (const [id, what] of s.staging) if (!incomplete.has(id) && s.records.get(id) !== "importing") left.push(`${id}: ${what}`);
          left.push(...s.orphans);
        } catch (err) {
          left = [`not reachable: ${(err as Error).message}`];
        }
        if (left.length === 0) return;
        if (Date.now() > deadline) fail(`retention did not clean up within 60 s: ${left.join("; ")}`);
        await sleep(200);
      }
    };
    await (plan.phase === "delete" ? armed(retention, deletes) : start(retention).then(deletes));
    for (const id of complete) {
      const d = await download(id);
      if (d.status !== 404) problems.push(`deleted ${id} still answers ${d.status}`);
    }
    if (problems.length > 0) fail(problems.join("\n"));
  } finally {
    sampling = false;
    await sampler;
    const c = child as ChildService | null;
    if (c && c.proc.exitCode === null && c.proc.signalCode === null) {
      c.proc.kill("SIGTERM");
      const code = await c.exited;
      if (code !== 0 && problems.length === 0) problems.push(`the service exited ${code} on SIGTERM`);
    }
    if (env.backend === "gridfs") {
      const { MongoClient } = await import("mongodb");
      const mc = new MongoClient(env.mongoUri ?? "");
      await mc.db(database).dropDatabase().catch(() => undefined);
      await mc.close();
    }
    await layout.close();
    // A long soak keeps the disk it started with.
    await rm(dir, { recursive: true, force: true });
    await rm(configFile, { force: true });
    for (let i = 0; i < plan.agents.length; i++) await rm(path.join(env.work, `${path.basename(dir)}-${i}.bin`), { force: true });
  }
  if (problems.length > 0) fail(problems.join("\n"));
  return {
    plan,
    crashed,
    crashNote,
    agents: agentResults.map((r) => r.status),
    importsAcknowledged: acknowledgedImports.length,
  };
}
