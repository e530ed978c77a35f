import type { IncomingMessage } from "node:http";
import type { Readable } from "node:stream";
import busboy from "busboy";
import { AppError } from "../errors.js";
import { HOST_NOT_HASHED, IMPORT_FIELDS, IMPORT_FILE_FIELD, SHA256_HEX, shown } from "./responder-schemas.js";

export { IMPORT_FIELDS, IMPORT_FILE_FIELD };
export type ImportField = keyof typeof IMPORT_FIELDS;

/** Bytes of one field value busboy keeps (UTF-8: up to 4 bytes a character of the longest field). */
const FIELD_BYTES = 4 * 4096;
// eslint-disable-next-line no-control-regex -- these are exactly the characters refused
const CONTROL = /[\u0000-\u001f\u007f]/;
// eslint-disable-next-line no-control-regex -- a description may span lines; nothing else
const CONTROL_BUT_LINES = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/;

function isImportField(name: string): name is ImportField {
  return Object.hasOwn(IMPORT_FIELDS, name);
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (err: AppError) => void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (err: AppError) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Awaited later, or never (when the request failed first): never an unhandled rejection.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

/**
 * One multipart/form-data import request, parsed by busboy as it arrives. The fields must come BEFORE the file
 * part (browsers and `curl -F` send parts in the order given): they are known, validated and final by the time
 * the first file byte reaches the store, and the expected sha256 is among them.
 *
 * The file part is handed to the store as an async iterable (`chunks()`), with backpressure: nothing is
 * buffered here beyond busboy's and the socket's own buffers. That iterable ends only once the WHOLE form has
 * been parsed, so anything wrong after the file (a second file, a field, a malformed ending, a disconnect)
 * makes it throw and the store keeps nothing.
 */
export class MultipartImport {
  readonly fields = new Map<ImportField, string>();
  fileName: string | null = null;
  /** File bytes handed to the store so far. */
  bytes = 0;
  private readonly parser: busboy.Busboy;
  private file: (Readable & { truncated?: boolean }) | null = null;
  private failure: AppError | null = null;
  private complete = false;
  private readonly fileStarted = deferred<Readable | null>();
  private readonly formParsed = deferred<undefined>();

  /** @throws AppError IMPORT_MALFORMED when busboy refuses the headers (no boundary...). */
  constructor(
    private readonly req: IncomingMessage,
    private readonly maxBytes: number,
  ) {
    try {
      this.parser = busboy({
        headers: req.headers,
        defParamCharset: "utf8",
        limits: {
          fieldNameSize: 100,
          fieldSize: FIELD_BYTES,
          fields: Object.keys(IMPORT_FIELDS).length + 4,
          files: 1,
          parts: Object.keys(IMPORT_FIELDS).length + 6,
          headerPairs: 32,
          // One byte over the limit: a file of maxBytes + 1 bytes reaches the store, whose own count refuses
          // it; anything longer is cut by busboy, which emits `limit` and then ENDS the stream normally, so
          // `limit` must fail the import (see onFile) or a silently cut file would be kept.
          fileSize: maxBytes + 1,
        },
      });
    } catch (err) {
      throw new AppError("IMPORT_MALFORMED", (err as Error).message.slice(0, 200), { cause: err });
    }
    this.parser.on("field", (name, value, info) => this.onField(name, value, info));
    this.parser.on("file", (name, stream, info) => this.onFile(name, stream, info));
    this.parser.on("filesLimit", () => this.fail(new AppError("IMPORT_TOO_MANY_FILES")));
    this.parser.on("fieldsLimit", () => this.fail(new AppError("IMPORT_MALFORMED", "too many form fields")));
    this.parser.on("partsLimit", () => this.fail(new AppError("IMPORT_MALFORMED", "too many parts")));
    this.parser.on("error", (err) => {
      // busboy's own messages ("Unexpected end of form", "Malformed part header") are safe to show.
      const message = err instanceof Error ? err.message : "unreadable multipart body";
      this.fail(new AppError("IMPORT_MALFORMED", message.slice(0, 200), { cause: err }));
    });
    this.parser.on("close", () => {
      if (this.failure) return;
      if (!this.parser.writableFinished) {
        this.fail(new AppError("IMPORT_MALFORMED", "the multipart body ended early"));
        return;
      }
      this.complete = true;
      if (this.file === null) this.fileStarted.resolve(null);
      this.formParsed.resolve(undefined);
    });
    const gone = (): void => {
      if (!req.complete) this.fail(new AppError("IMPORT_ABORTED", "the client disconnected during the upload"));
    };
    req.on("error", gone);
    req.on("close", gone);
    req.pipe(this.parser);
  }

  /** The file part's stream once it starts; null when the form ended without one. @throws AppError */
  fileStream(): Promise<Readable | null> {
    return this.fileStarted.promise;
  }

  /**
   * The file's bytes for the store. Throws (so the store keeps nothing) when the file was cut at the size
   * limit, when the request breaks off, or when anything after the file is wrong.
   */
  async *chunks(): AsyncGenerator<Buffer> {
    const file = this.file;
    if (file === null) throw new AppError("IMPORT_FILE_MISSING");
    try {
      for await (const chunk of file as AsyncIterable<Buffer>) {
        this.bytes += chunk.length;
        yield chunk;
      }
    } catch (err) {
      // busboy destroys the file stream first and reports why (its 'error', a disconnect) a tick later.
      if (this.failure === null && !(err instanceof AppError)) await new Promise((resolve) => setImmediate(resolve));
      throw (
        this.failure ?? new AppError("IMPORT_ABORTED", "the multipart body ended inside the file part", { cause: err })
      );
    }
    if (this.failure) throw this.failure;
    if (file.truncated) throw new AppError("IMPORT_TOO_LARGE", `larger than ${this.maxBytes} bytes`);
    await this.formParsed.promise;
  }

  /**
   * Stops parsing after a failure or an early end: the rest of the body is read and discarded (so the reply
   * can be read by a client still sending; bounded by the server's request timeout), nothing is buffered.
   */
  dispose(): void {
    if (this.complete) return;
    this.fail(new AppError("IMPORT_ABORTED", "the import stopped before the form was read"));
  }

  private fail(err: AppError): void {
    if (this.failure !== null || this.complete) return;
    this.failure = err;
    this.fileStarted.reject(err);
    this.formParsed.reject(err);
    // Wakes the store's read of the file part at once: it throws `err`, and the store removes what it wrote.
    this.file?.destroy(err);
    this.req.unpipe(this.parser);
    // Not from inside busboy's own write (this may run in one of its event handlers): on the next tick.
    process.nextTick(() => this.parser.destroy());
    if (!this.req.destroyed) this.req.resume();
  }

  private onField(name: string, value: string, info: busboy.FieldInfo): void {
    if (this.file !== null) {
      this.fail(new AppError("IMPORT_FIELD_AFTER_FILE", `field ${shown(name)} came after the file part`));
      return;
    }
    if (info.nameTruncated) {
      this.fail(new AppError("IMPORT_FIELD_INVALID", "a field name is longer than 100 bytes"));
      return;
    }
    if (name === IMPORT_FILE_FIELD) {
      this.fail(new AppError("IMPORT_FIELD_INVALID", "the file part has no filename: send it with -F file=@<path>"));
      return;
    }
    if (!isImportField(name)) {
      this.fail(new AppError("IMPORT_UNKNOWN_FIELD", `${shown(name)}`));
      return;
    }
    if (this.fields.has(name)) {
      this.fail(new AppError("IMPORT_FIELD_INVALID", `${name} given twice`));
      return;
    }
    const trimmed = value.trim();
    if (info.valueTruncated || trimmed.length > IMPORT_FIELDS[name]) {
      this.fail(new AppError("IMPORT_FIELD_INVALID", `${name} is longer than ${IMPORT_FIELDS[name]} characters`));
      return;
    }
    if ((name === "description" ? CONTROL_BUT_LINES : CONTROL).test(trimmed)) {
      this.fail(new AppError("IMPORT_FIELD_INVALID", `${name} contains control characters`));
      return;
    }
    if (name === "sha256" && trimmed !== "") {
      if (trimmed === HOST_NOT_HASHED) {
        this.fail(new AppError("HOST_SHA256_UNAVAILABLE", "leave the sha256 field out"));
        return;
      }
      if (!SHA256_HEX.test(trimmed)) {
        this.fail(new AppError("INVALID_SHA256", "in the sha256 field"));
        return;
      }
    }
    this.fields.set(name, name === "sha256" ? trimmed.toLowerCase() : trimmed);
  }

  private onFile(name: string, stream: Readable & { truncated?: boolean }, info: busboy.FileInfo): void {
    if (this.failure !== null || this.file !== null || name !== IMPORT_FILE_FIELD) {
      stream.resume();
      if (this.file !== null) this.fail(new AppError("IMPORT_TOO_MANY_FILES"));
      else if (name !== IMPORT_FILE_FIELD) {
        this.fail(
          new AppError(
            "IMPORT_UNKNOWN_FIELD",
            `file part ${shown(name)}: name it ${IMPORT_FILE_FIELD} (-F file=@<path>)`,
          ),
        );
      }
      return;
    }
    this.file = stream;
    // fail() destroys it with the reason; the store's read sees that. Before the store reads (or if it never
    // does), the error must not go unhandled.
    stream.on("error", () => undefined);
    this.fileName = info.filename === undefined ? null : info.filename.replace(/[^\x20-\x7e]/g, "?").slice(0, 255);
    stream.on("limit", () => this.fail(new AppError("IMPORT_TOO_LARGE", `larger than ${this.maxBytes} bytes`)));
    this.fileStarted.resolve(stream);
  }
}
