/**
 * Checks real replies against the checked-in OpenAPI document (docs/openapi.json), not against the zod
 * schemas it was generated from: what clients read is the document. A reply conforms when its operation
 * documents its status, its media type, every required header (each matching its schema) and, for JSON,
 * a body valid under the response schema (JSON Schema 2020-12, by Ajv).
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { Ajv2020, type ValidateFunction } from "ajv/dist/2020.js";

type Json = Record<string, unknown>;

export const OPENAPI_PATH = path.resolve(import.meta.dirname, "../../docs/openapi.json");
const BASE = "https://contract.invalid/openapi.json";

export interface Reply {
  method: string;
  /** Path without the query string. */
  path: string;
  status: number;
  headers: Headers;
  body: Buffer;
}

export class OpenApiChecker {
  readonly doc: Json;
  private readonly ajv: Ajv2020;
  private readonly compiled = new Map<string, ValidateFunction>();
  /** operationId -> statuses seen conforming. */
  readonly seen = new Map<string, Set<number>>();

  constructor(doc: Json = JSON.parse(readFileSync(OPENAPI_PATH, "utf8")) as Json) {
    this.doc = doc;
    // Formats are annotations here: every date-time also carries its pattern, which is checked.
    this.ajv = new Ajv2020({ strict: false, validateFormats: false, allErrors: true });
    this.ajv.addSchema({ $id: BASE, components: { schemas: (doc.components as Json).schemas } });
  }

  /** A schema of the document, compiled with its references resolved against the components. */
  validator(schema: Json): ValidateFunction {
    const text = JSON.stringify(schema).replaceAll('"#/components/', `"${BASE}#/components/`);
    let fn = this.compiled.get(text);
    if (!fn) {
      fn = this.ajv.compile(JSON.parse(text) as Json);
      this.compiled.set(text, fn);
    }
    return fn;
  }

  private deref(value: Json): Json {
    const ref = value.$ref;
    if (typeof ref !== "string") return value;
    let at: unknown = this.doc;
    for (const part of ref.replace(/^#\//, "").split("/")) at = (at as Json)[part.replaceAll("~1", "/").replaceAll("~0", "~")];
    return this.deref(at as Json);
  }

  /** The path template and operation answering `method` on a concrete path. */
  operation(method: string, concrete: string): { template: string; op: Json } {
    const paths = this.doc.paths as Record<string, Json>;
    const matches = Object.keys(paths).filter((t) => new RegExp(`^${t.replace(/\{[^}]+\}/g, "[^/]+")}$`).test(concrete));
    // A literal segment beats a template one: /carves/import is not /carves/{carve_id}.
    matches.sort((a, b) => (a.match(/\{/g)?.length ?? 0) - (b.match(/\{/g)?.length ?? 0));
    for (const template of matches) {
      const op = (paths[template] as Json)[method.toLowerCase()] as Json | undefined;
      if (op) return { template, op };
    }
    throw new Error(`${method} ${concrete}: no operation in the document`);
  }

  /** Problems of a reply (empty when it conforms). */
  problems(reply: Reply): string[] {
    const { op } = this.operation(reply.method, reply.path);
    const out = this.check(op, reply);
    if (out.length === 0) {
      const id = String(op.operationId);
      const statuses = this.seen.get(id) ?? new Set<number>();
      statuses.add(reply.status);
      this.seen.set(id, statuses);
    }
    return out;
  }

  private check(op: Json, reply: Reply): string[] {
    const where = `${reply.method} ${reply.path} -> ${reply.status}`;
    const responses = op.responses as Record<string, Json>;
    const documented = responses[String(reply.status)];
    if (!documented) return [`${where}: status not documented (documented: ${Object.keys(responses).join(", ")})`];
    const response = this.deref(documented);
    const out: string[] = [];
    for (const [name, raw] of Object.entries((response.headers as Record<string, Json> | undefined) ?? {})) {
      const header = this.deref(raw);
      const value = reply.headers.get(name);
      if (value === null) {
        if (header.required === true) out.push(`${where}: required header ${name} missing`);
        continue;
      }
      const check = this.validator(header.schema as Json);
      if (!check(value)) out.push(`${where}: header ${name}: ${JSON.stringify(value)} ${this.ajv.errorsText(check.errors)}`);
    }
    const content = response.content as Record<string, Json> | undefined;
    const hasBody = reply.body.length > 0 && reply.method !== "HEAD";
    if (!hasBody) return out;
    if (!content) return [...out, `${where}: a body where none is documented`];
    const media = (reply.headers.get("content-type") ?? "").split(";")[0]?.trim() ?? "";
    const entry = content[media];
    if (!entry) return [...out, `${where}: media type ${media} not documented (${Object.keys(content).join(", ")})`];
    if (media === "application/json") {
      let json: unknown;
      try {
        json = JSON.parse(reply.body.toString("utf8"));
      } catch {
        return [...out, `${where}: body is not JSON`];
      }
      const check = this.validator(entry.schema as Json);
      if (!check(json)) out.push(`${where}: body: ${this.ajv.errorsText(check.errors)}`);
    }
    return out;
  }

  /** Every operationId of the document. */
  operationIds(): string[] {
    const ids: string[] = [];
    for (const item of Object.values(this.doc.paths as Record<string, Json>)) for (const op of Object.values(item) as Json[]) ids.push(String(op.operationId));
    return ids;
  }
}

/** fetch, read the whole body, and return it as a Reply (the path without its query). */
export async function fetchReply(url: string, init: RequestInit = {}): Promise<Reply> {
  const res = await fetch(url, init);
  const body = Buffer.from(await res.arrayBuffer());
  return { method: (init.method ?? "GET").toUpperCase(), path: new URL(url).pathname, status: res.status, headers: res.headers, body };
}
