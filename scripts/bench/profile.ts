/**
 * Summarizes V8 .cpuprofile files (node --cpu-prof): self time per function and per component
 * (the service's own code, each npm package, Node internals, GC, idle).
 *
 *   node dist/scripts/bench/profile.js FILE.cpuprofile [--top 25]
 */
import { readFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface SelfTimeEntry {
  name: string;
  ms: number;
  percent: number;
}

export interface ProfileSummary {
  file: string;
  totalMs: number;
  /** Share of the profile not idle. */
  busyPercent: number;
  topFunctions: SelfTimeEntry[];
  components: SelfTimeEntry[];
}

/** Component a function belongs to, from its script URL. */
export function componentOf(frame: CallFrame): string {
  const { url, functionName } = frame;
  if (url === "") {
    if (functionName === "(garbage collector)" || functionName === "(idle)" || functionName === "(program)") {
      return functionName;
    }
    return "(native/builtin)";
  }
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (nm?.[1] !== undefined) return `npm:${nm[1]}`;
  if (url.startsWith("node:")) return `node:${url.slice(5).split("/")[0] ?? ""}`;
  const own = /\/dist\/(src|scripts)\/(.*)$/.exec(url);
  if (own?.[2] !== undefined) return `${own[1]}/${own[2].split("/")[0] ?? ""}`;
  return url;
}

function label(frame: CallFrame): string {
  const name = frame.functionName === "" ? "(anonymous)" : frame.functionName;
  if (frame.url === "") return name;
  const short = frame.url.replace(/^file:\/\/.*?\/(node_modules|dist)\//, "$1/");
  return `${name} ${short}:${frame.lineNumber + 1}`;
}

export function summarizeProfile(profile: CpuProfile, file: string, top = 25): ProfileSummary {
  const byId = new Map<number, ProfileNode>();
  for (const n of profile.nodes) byId.set(n.id, n);
  const selfUs = new Map<number, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i] as number;
    // timeDeltas[i] is the time before sample i; attribute the following interval to it.
    const dt = profile.timeDeltas[i + 1] ?? 0;
    selfUs.set(id, (selfUs.get(id) ?? 0) + Math.max(0, dt));
  }
  let total = 0;
  let idle = 0;
  const fn = new Map<string, number>();
  const comp = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (!node) continue;
    total += us;
    if (node.callFrame.functionName === "(idle)") idle += us;
    const l = label(node.callFrame);
    fn.set(l, (fn.get(l) ?? 0) + us);
    const c = componentOf(node.callFrame);
    comp.set(c, (comp.get(c) ?? 0) + us);
  }
  const entries = (m: Map<string, number>, n: number): SelfTimeEntry[] =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([name, us]) => ({
        name,
        ms: Math.round(us / 100) / 10,
        percent: total > 0 ? Math.round((1000 * us) / total) / 10 : 0,
      }));
  return {
    file,
    totalMs: Math.round(total / 1000),
    busyPercent: total > 0 ? Math.round((1000 * (total - idle)) / total) / 10 : 0,
    topFunctions: entries(fn, top),
    components: entries(comp, 20),
  };
}

export async function summarizeProfileFile(file: string, top = 25): Promise<ProfileSummary> {
  const profile = JSON.parse(await readFile(file, "utf8")) as CpuProfile;
  return summarizeProfile(profile, file, top);
}

export function formatProfileSummary(s: ProfileSummary): string {
  const lines = [
    `profile ${s.file}: ${s.totalMs} ms sampled, ${s.busyPercent}% not idle`,
    "  self time by component:",
    ...s.components.map(
      (e) => `    ${e.percent.toFixed(1).padStart(5)}%  ${e.ms.toFixed(0).padStart(7)} ms  ${e.name}`,
    ),
    "  top functions by self time:",
    ...s.topFunctions.map(
      (e) => `    ${e.percent.toFixed(1).padStart(5)}%  ${e.ms.toFixed(0).padStart(7)} ms  ${e.name}`,
    ),
  ];
  return lines.join("\n");
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { top: { type: "string", default: "25" } },
  });
  for (const file of positionals) {
    process.stdout.write(`${formatProfileSummary(await summarizeProfileFile(file, Number(values.top)))}\n\n`);
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
