import { z } from "zod";
import { API_VERSION, contractRegistry, EXAMPLE_CARVE_ID, parameterOverrides } from "./api-contract.js";
import { operations, type ContractHeader, type ContractOperation } from "./api-operations.js";

type Json = Record<string, unknown>;

const COMPONENTS = "#/components/schemas/";

/** JSON Schema keywords OpenAPI 3.1 takes from the document itself, not from each schema. */
function clean(schema: Json): Json {
  const rest = { ...schema };
  delete rest.$schema;
  delete rest.$id;
  return rest;
}

/** `#/$defs/<id>` (what zod writes for a registry schema met inside another) -> the components entry. */
function toComponentRefs(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(toComponentRefs);
  if (value === null || typeof value !== "object") return value;
  const out: Json = {};
  for (const [k, v] of Object.entries(value as Json)) {
    if (k === "$defs") continue; // every one of them is a component
    out[k] = k === "$ref" && typeof v === "string" ? v.replace(/^#\/\$defs\//, COMPONENTS) : toComponentRefs(v);
  }
  return out;
}

function withOverrides(ctx: { zodSchema: unknown; jsonSchema: unknown }): void {
  const o = parameterOverrides.get(ctx.zodSchema as z.ZodType);
  if (!o) return;
  const target = ctx.jsonSchema as Json;
  for (const k of Object.keys(target)) delete target[k];
  Object.assign(target, o);
}

/** A schema inline, its named parts as references to the components. */
function inline(schema: z.ZodType, io: "input" | "output"): Json {
  const override = parameterOverrides.get(schema);
  if (override) return { ...override };
  const id = contractRegistry.get(schema)?.id;
  if (id !== undefined) return { $ref: `${COMPONENTS}${id}` };
  const json = z.toJSONSchema(schema, { io, metadata: contractRegistry, unrepresentable: "any", override: withOverrides });
  return clean(toComponentRefs(json) as Json);
}

function components(): Json {
  const out = z.toJSONSchema(contractRegistry, { io: "output", uri: (id) => `${COMPONENTS}${id}`, unrepresentable: "any", override: withOverrides }) as {
    schemas: Record<string, Json>;
  };
  const schemas: Record<string, Json> = {};
  for (const [id, schema] of Object.entries(out.schemas).sort(([a], [b]) => a.localeCompare(b))) schemas[id] = clean(schema);
  return schemas;
}

function headerObject(header: ContractHeader): Json {
  return { description: header.description, required: header.required ?? true, schema: inline(header.schema, "output") };
}

function parameters(op: ContractOperation): Json[] {
  const out: Json[] = [];
  const add = (where: "path" | "query", shape: z.ZodObject): void => {
    const fields: Record<string, unknown> = shape.shape;
    const entries = Object.entries(fields) as Array<[string, z.ZodType]>;
    for (const [name, schema] of entries) {
      const json = inline(schema, "input");
      const optional = schema.safeParse(undefined).success;
      const param: Json = { name, in: where, required: where === "path" || !optional, schema: json };
      if (where === "path" && name === "carve_id") param.example = EXAMPLE_CARVE_ID;
      if (where === "path" && name === "n") param.example = "0";
      out.push(param);
    }
  };
  if (op.pathParams) add("path", op.pathParams);
  if (op.query) add("query", op.query);
  for (const [name, header] of Object.entries(op.requestHeaders ?? {})) {
    out.push({ name, in: "header", required: header.required ?? false, description: header.description, schema: inline(header.schema, "input") });
  }
  return out;
}

function operationObject(op: ContractOperation): Json {
  const responses: Record<string, Json> = {};
  for (const [status, r] of Object.entries(op.responses)) {
    if (!r) continue;
    const response: Json = { description: r.description };
    if (r.headers) response.headers = Object.fromEntries(Object.entries(r.headers).map(([name, hdr]) => [name, headerObject(hdr)]));
    const content: Record<string, Json> = {};
    if (r.json) content["application/json"] = { schema: inline(r.json, "output") };
    for (const media of r.bytes ?? []) content[media] = { schema: { type: "string", contentMediaType: media } };
    if (Object.keys(content).length > 0) response.content = content;
    responses[status] = response;
  }
  const out: Json = { operationId: op.operationId, summary: op.summary, tags: [op.tag] };
  if (op.description) out.description = op.description;
  if (op.deprecated) out.deprecated = true;
  // "body": the token travels in the JSON body; the document cannot express that as a security scheme.
  out.security = op.auth === "vault" ? [{ vaultToken: [] }, { bearer: [] }] : [];
  const params = parameters(op);
  if (params.length > 0) out.parameters = params;
  if (op.body) out.requestBody = { required: true, content: { [op.body.mediaType]: { schema: inline(op.body.schema, "input") } } };
  out.responses = responses;
  return out;
}

/**
 * Moves what several operations share into components (`headers`, `responses`) and references it: an object
 * that is the same wherever one name is used. Keeps the document small enough to read.
 */
function shareRepeated(paths: Record<string, Json>): { headers: Json; responses: Json } {
  const seen = { headers: new Map<string, Set<string>>(), responses: new Map<string, Set<string>>() };
  const each = (visit: (kind: "headers" | "responses", name: string, holder: Json, key: string) => void): void => {
    for (const item of Object.values(paths)) {
      for (const op of Object.values(item) as Json[]) {
        const responses = op.responses as Record<string, Json>;
        for (const [status, response] of Object.entries(responses)) {
          if (Number(status) >= 400) visit("responses", `Error${status}${op.operationId === "headArchive" || op.operationId === "headFile" ? "Head" : ""}`, responses, status);
          for (const name of Object.keys((response.headers as Json | undefined) ?? {})) visit("headers", name, response.headers as Json, name);
        }
      }
    }
  };
  each((kind, name, holder, key) => {
    const text = JSON.stringify(holder[key]);
    const texts = seen[kind].get(name) ?? new Set<string>();
    texts.add(text);
    seen[kind].set(name, texts);
  });
  const shared = { headers: {} as Json, responses: {} as Json };
  each((kind, name, holder, key) => {
    if (seen[kind].get(name)?.size !== 1) return;
    shared[kind][name] ??= holder[key];
    holder[key] = { $ref: `#/components/${kind}/${name}` };
  });
  return shared;
}

/**
 * The OpenAPI 3.1 document of the responder API, built from the contract (src/http/api-contract.ts). The same
 * bytes are checked in as docs/openapi.json (a test compares them) and served at GET /api/v1/openapi.json.
 */
export function openApiDocument(): Json {
  const paths: Record<string, Json> = {};
  for (const op of operations) {
    paths[op.path] ??= {};
    (paths[op.path] as Json)[op.method] = operationObject(op);
  }
  const shared = shareRepeated(paths);
  return {
    openapi: "3.1.0",
    info: {
      title: "osquery-carve-server responder API",
      version: API_VERSION,
      description:
        "List, inspect, download and keep osquery file carves with a HashiCorp Vault token (docs/responder-api.md). Every request is audited. Errors are {\"error\": {\"code\", \"message\", \"requestId\"}}.",
      license: { name: "Apache-2.0", identifier: "Apache-2.0" },
    },
    tags: [
      { name: "carves", description: "Carves and their archives" },
      { name: "files", description: "What is inside an archive" },
      { name: "custody", description: "Chain of custody: holds, deletion, import, verification" },
      { name: "audit", description: "The audit trail" },
      { name: "meta", description: "This document" },
    ],
    paths,
    components: {
      securitySchemes: {
        vaultToken: { type: "apiKey", in: "header", name: "X-Vault-Token", description: "A Vault token (vault print token)." },
        bearer: { type: "http", scheme: "bearer", description: "The same Vault token as Authorization: Bearer." },
      },
      schemas: components(),
      headers: shared.headers,
      responses: shared.responses,
    },
  };
}

/** The document as checked in and served: two-space JSON with a final newline. */
export function openApiText(): string {
  return `${JSON.stringify(openApiDocument(), null, 2)}\n`;
}
