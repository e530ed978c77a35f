/**
 * The typed client of the responder API, shared by carvectl and the web console: fetch and web streams only,
 * no Node API, so a browser bundles it as is. Whatever is platform-specific (TLS client certificates, a CA)
 * comes in through the injected `fetch`. Reply types are the contract's (src/http/api-contract.ts, imported
 * as types: nothing of the server is bundled).
 */
import type {
  AuditPageView,
  CarveDetail,
  CarveList,
  CarveSummary,
  DeleteResult,
  ErrorBody,
  FilesListingView,
  HoldResult,
  VerifyResult,
} from "../http/api-contract.js";

export type { AuditEventView, AuditPageView, CarveDetail, CarveList, CarveSummary, FilesListingView, TarMemberView } from "../http/api-contract.js";

/** The part of the Fetch API the client uses; the global fetch fits. */
export type FetchLike = (url: string, init: RequestInit) => Promise<Response>;

export interface ApiClientOptions {
  /** Where the responder API is, e.g. https://carves.example.com:8443 (a path prefix is kept). */
  address: string;
  /** The Vault token, sent as X-Vault-Token. */
  token: string;
  fetch?: FetchLike;
  /** Sent as User-Agent where the platform allows it (browsers set their own). */
  userAgent?: string;
}

/** An error reply of the API: its `{"error": {...}}` body, or what stood in for one. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly requestId: string | null,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/** The service could not be reached, or its reply was not one the contract describes. */
export class TransportError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "TransportError";
  }
}

export interface ListCarvesParams {
  status?: "receiving" | "complete";
  /** Hex prefix of the node key's SHA-256 (nodeKeySha256Prefix). */
  node?: string;
  since?: string;
  until?: string;
  limit?: number;
  cursor?: string;
}

export interface AuditParams {
  carve_id?: string;
  action?: string;
  since?: string;
  until?: string;
  limit?: number;
  cursor?: string;
}

/** A byte body being received, with what its headers said about it. */
export interface Download {
  status: number;
  body: ReadableStream<Uint8Array>;
  /** Bytes this reply carries (Content-Length), when known. */
  length: number | null;
  headers: Headers;
}

export interface ArchiveDownload extends Download {
  /** First byte of the archive this reply starts at (0 unless a range was served). */
  start: number;
  /** The archive's whole size, when known (Content-Range, or Content-Length of a whole reply). */
  totalSize: number | null;
  /** The archive's SHA-256 from its ETag, when sent. */
  sha256: string | null;
}

export interface FileDownload extends Download {
  /** SHA-256 of the file's content, from X-Content-SHA256. */
  sha256: string;
  /** The file name the server proposes (Content-Disposition), already safe. */
  fileName: string | null;
}

const id = (carveId: string): string => encodeURIComponent(carveId);

function query(params: object): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) q.set(k, String(v));
  const s = q.toString();
  return s === "" ? "" : `?${s}`;
}

export class CarveApiClient {
  private readonly base: string;
  private readonly fetcher: FetchLike;

  constructor(private readonly options: ApiClientOptions) {
    this.base = options.address.replace(/\/+$/, "");
    this.fetcher = options.fetch ?? ((url, init) => fetch(url, init));
  }

  private async send(method: string, path: string, init: { headers?: Record<string, string>; body?: string; signal?: AbortSignal } = {}): Promise<Response> {
    const headers: Record<string, string> = { "X-Vault-Token": this.options.token, ...init.headers };
    if (this.options.userAgent) headers["User-Agent"] = this.options.userAgent;
    let res: Response;
    try {
      res = await this.fetcher(`${this.base}${path}`, {
        method,
        headers,
        ...(init.body !== undefined ? { body: init.body } : {}),
        ...(init.signal ? { signal: init.signal } : {}),
      });
    } catch (err) {
      if ((err as { name?: unknown }).name === "AbortError") throw err;
      const cause = (err as { cause?: { message?: unknown } }).cause;
      const detail = typeof cause?.message === "string" ? cause.message : (err as Error).message;
      throw new TransportError(`cannot reach ${this.base}: ${detail}`, { cause: err });
    }
    if (res.status >= 400) throw await this.errorOf(res);
    return res;
  }

  private async errorOf(res: Response): Promise<ApiError> {
    const text = await res.text().catch(() => "");
    try {
      const body = JSON.parse(text) as Partial<ErrorBody>;
      if (body.error && typeof body.error.code === "string") {
        return new ApiError(res.status, body.error.code, String(body.error.message), body.error.requestId ?? null);
      }
    } catch {
      // not the API's error shape: a proxy or front answered
    }
    const shown = text.replace(/\s+/g, " ").trim().slice(0, 120);
    return new ApiError(res.status, `HTTP_${res.status}`, `HTTP ${res.status} ${res.statusText}${shown ? `: ${shown}` : ""}`, res.headers.get("x-request-id"));
  }

  private async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.send(method, path, body === undefined ? {} : { headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const text = await res.text();
    try {
      return JSON.parse(text) as T;
    } catch (err) {
      throw new TransportError(`${method} ${path}: the reply is not JSON (${res.headers.get("content-type") ?? "no content type"})`, { cause: err });
    }
  }

  /** One page of carves, newest first. */
  listCarves(params: ListCarvesParams = {}): Promise<CarveList> {
    return this.json("GET", `/api/v1/carves${query(params)}`);
  }

  /** Every carve matching `params`, page after page. */
  async *allCarves(params: ListCarvesParams = {}): AsyncGenerator<CarveSummary> {
    let cursor = params.cursor;
    for (;;) {
      const page = await this.listCarves({ ...params, ...(cursor !== undefined ? { cursor } : {}) });
      yield* page.carves;
      if (page.nextCursor === null) return;
      cursor = page.nextCursor;
    }
  }

  getCarve(carveId: string): Promise<CarveDetail> {
    return this.json("GET", `/api/v1/carves/${id(carveId)}`);
  }

  listFiles(carveId: string): Promise<FilesListingView> {
    return this.json("GET", `/api/v1/carves/${id(carveId)}/files`);
  }

  deleteCarve(carveId: string): Promise<DeleteResult> {
    return this.json("DELETE", `/api/v1/carves/${id(carveId)}`);
  }

  placeHold(carveId: string, reason: string): Promise<HoldResult> {
    return this.json("PUT", `/api/v1/carves/${id(carveId)}/hold`, { reason });
  }

  releaseHold(carveId: string): Promise<HoldResult> {
    return this.json("DELETE", `/api/v1/carves/${id(carveId)}/hold`);
  }

  verify(carveId: string, sha256: string): Promise<VerifyResult> {
    return this.json("POST", `/api/v1/carves/${id(carveId)}/verify`, { sha256 });
  }

  audit(params: AuditParams = {}): Promise<AuditPageView> {
    return this.json("GET", `/api/v1/audit${query(params)}`);
  }

  openApi(): Promise<Record<string, unknown>> {
    return this.json("GET", "/api/v1/openapi.json");
  }

  /**
   * The archive as stored, from byte `from` on (a resumed download). With `sha256` the range is asked for
   * only if the archive still has that SHA-256 (If-Range); otherwise the whole archive comes back (200).
   * @throws ApiError RANGE_NOT_SATISFIABLE when `from` is at or past its end
   */
  async openArchive(carveId: string, options: { from?: number; sha256?: string; format?: "raw" | "tar"; signal?: AbortSignal } = {}): Promise<ArchiveDownload> {
    const headers: Record<string, string> = {};
    if (options.from !== undefined && options.from > 0) {
      headers.Range = `bytes=${options.from}-`;
      if (options.sha256) headers["If-Range"] = `"${options.sha256}"`;
    }
    const format = options.format && options.format !== "raw" ? `?format=${options.format}` : "";
    const res = await this.send("GET", `/api/v1/carves/${id(carveId)}/archive${format}`, { headers, ...(options.signal ? { signal: options.signal } : {}) });
    const length = lengthOf(res.headers);
    let start = 0;
    let totalSize = res.status === 200 ? length : null;
    if (res.status === 206) {
      const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(res.headers.get("content-range") ?? "");
      if (!m) throw new TransportError("206 reply without a usable Content-Range");
      start = Number(m[1]);
      totalSize = Number(m[3]);
    }
    const etag = /^"([0-9a-f]{64})"$/.exec(res.headers.get("etag") ?? "");
    return { status: res.status, body: bodyOf(res), length, headers: res.headers, start, totalSize, sha256: etag?.[1] ?? null };
  }

  /** Member n of the archive (its index in listFiles). */
  async openFile(carveId: string, n: number, options: { signal?: AbortSignal } = {}): Promise<FileDownload> {
    const res = await this.send("GET", `/api/v1/carves/${id(carveId)}/files/${n}`, options.signal ? { signal: options.signal } : {});
    const sha256 = res.headers.get("x-content-sha256");
    if (sha256 === null || !/^[0-9a-f]{64}$/.test(sha256)) throw new TransportError("file reply without X-Content-SHA256");
    const name = /filename="([^"]+)"/.exec(res.headers.get("content-disposition") ?? "");
    return { status: res.status, body: bodyOf(res), length: lengthOf(res.headers), headers: res.headers, sha256, fileName: name?.[1] ?? null };
  }
}

function lengthOf(headers: Headers): number | null {
  const v = headers.get("content-length");
  return v !== null && /^\d+$/.test(v) ? Number(v) : null;
}

function bodyOf(res: Response): ReadableStream<Uint8Array> {
  if (res.body === null) return new ReadableStream({ start: (c) => c.close() });
  return res.body;
}
