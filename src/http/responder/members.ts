import { createHash } from "node:crypto";
import type { ServerResponse } from "node:http";
import { walkTar, type ContentSink } from "../../carves/tar-listing.js";
import { zstdDecompress, ZstdFormatError } from "../../carves/zstd-stream.js";
import { AppError, isAppError } from "../../errors.js";
import { MEMBER_SHA256_HEADER, memberPath } from "../api-contract.js";
import { noQuery, parseWith } from "../responder-schemas.js";
import { ClientGoneError } from "../send-archive.js";
import { carveTarget, notComplete, type EndpointContext, type RegisterRoutes } from "./frame.js";

/** Headers this route adds, withdrawn when an error reply replaces the member. */
const MEMBER_HEADERS = [MEMBER_SHA256_HEADER, "Repr-Digest", "Content-Disposition", "Content-Length", "Accept-Ranges"];

/** RFC 8187 attr-char: everything else in a filename* value is percent-encoded. */
const ATTR_CHAR = /[A-Za-z0-9!#$&+\-.^_`|~]/;

/**
 * Content-Disposition for a member: its base name, reduced to characters every client and shell takes
 * (`filename=`), and the UTF-8 name (`filename*=`, RFC 6266) without separators or control characters.
 * A name that reduces to nothing, `.` or `..` becomes member-<n>.
 */
export function contentDisposition(memberName: string, n: number): string {
  const base = memberName.replace(/\/+$/, "").split("/").pop() ?? "";
  // Control characters, and the bidirectional marks that make "\u202eexe.txt" look like "txt.exe".
  // eslint-disable-next-line no-control-regex -- control characters are what is dropped
  const printable = base.replace(/[\u0000-\u001f\u007f-\u009f\\\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, "").slice(0, 255);
  const ascii = printable.replace(/[^A-Za-z0-9._+-]/g, "_").slice(0, 120);
  const plain = ascii === "" || /^\.+$/.test(ascii) || /^_+$/.test(ascii) ? `member-${n}` : ascii;
  let encoded = "";
  for (const byte of Buffer.from(printable === "" || /^\.+$/.test(printable) ? plain : printable, "utf8")) {
    const c = String.fromCharCode(byte);
    encoded += byte < 0x80 && ATTR_CHAR.test(c) ? c : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return `attachment; filename="${plain}"; filename*=UTF-8''${encoded}`;
}

/** Writes to the response with its backpressure; throws ClientGoneError once the client has gone. */
function writer(res: ServerResponse): (chunk: Buffer) => Promise<void> | undefined {
  return (chunk) => {
    if (res.destroyed) throw new ClientGoneError();
    if (res.write(chunk)) return undefined;
    if (res.destroyed) throw new ClientGoneError(); // its 'close' may have been emitted already
    return new Promise<void>((resolve, reject) => {
      const done = (): void => {
        res.off("drain", done);
        res.off("close", done);
        if (res.destroyed && !res.writableFinished) reject(new ClientGoneError());
        else resolve();
      };
      res.on("drain", done);
      res.on("close", done);
    });
  };
}

/**
 * GET (and HEAD) /api/v1/carves/:carve_id/files/:n: one regular file's content out of a complete carve's
 * .tar or .tar.zst, streamed from storage through the tar walker, nothing written to disk, memory bounded
 * by the decompressor's slices.
 *
 * The SHA-256 header comes from a first pass, the files listing (computed once per archive, cached, and what
 * a responder looks at before asking for a file): sent up front, with Content-Length, it lets any client
 * check the file before keeping it, where an HTTP trailer would reach almost none (curl and fetch drop
 * them). The bytes are hashed again as they stream and the last chunk is held back until that hash is known:
 * a mismatch (storage that changed under us) cuts the connection short of Content-Length instead of
 * completing a wrong file.
 */
export const registerMemberRoutes: RegisterRoutes = (router, deps) => {
  const { services, endpoint, now, files } = deps;

  const download = async (ctx: EndpointContext): Promise<void> => {
    const { req, res } = ctx;
    parseWith(noQuery, req.query);
    const parsed = memberPath.shape.n.safeParse(req.params.n);
    if (!parsed.success) throw new AppError("MEMBER_NOT_FOUND", "n is a member's index in the files listing: 0, 1, ...");
    const n = parsed.data;
    const carveId = ctx.carveId as string;
    ctx.detail.format = "member";
    ctx.detail.member = n;
    const record = await services.reads.get(carveId);
    ctx.detail.sha256 = record.sha256;
    if (record.status !== "complete" || record.sha256 === null) throw notComplete(record, now());
    const listing = await files.list(carveId, record.sha256);
    const member = listing.members[n];
    if (member === undefined) {
      const more = listing.truncated ? ` (the listing stopped at a bound: ${listing.truncatedReason ?? "?"})` : "";
      throw new AppError("MEMBER_NOT_FOUND", `the archive lists ${listing.members.length} members${more}`);
    }
    ctx.detail.memberName = member.name.slice(0, 300);
    if (member.type !== "file" || member.sha256 === null) throw new AppError("MEMBER_NOT_A_FILE", `member ${n} is a ${member.type}`);
    const expected = member.sha256;
    ctx.detail.memberSha256 = expected;

    const head = req.method === "HEAD";
    // Opened before any header is set, so a failure here is still a clean JSON error.
    const handle = head ? null : await services.reads.openArchive(carveId);
    res.setHeader("Content-Type", "application/octet-stream");
    res.setHeader("Content-Disposition", contentDisposition(member.name, n));
    res.setHeader("X-Content-Type-Options", "nosniff");
    res.setHeader("Content-Length", String(member.size));
    res.setHeader("Accept-Ranges", "none");
    res.setHeader(MEMBER_SHA256_HEADER, expected);
    res.setHeader("Repr-Digest", `sha-256=:${Buffer.from(expected, "hex").toString("base64")}:`);
    if (handle === null) {
      res.end();
      ctx.detail.bytesSent = 0;
      ctx.detail.completed = true;
      return;
    }

    let sent = 0;
    const write = writer(res);
    try {
      const source = record.compression === "zstd" ? zstdDecompress(handle.stream) : (handle.stream as AsyncIterable<Buffer>);
      const hash = createHash("sha256");
      let held: Buffer | null = null;
      let found = false;
      const sink: ContentSink = (chunk) => {
        hash.update(chunk);
        const previous = held;
        held = chunk;
        if (previous === null) return undefined;
        sent += previous.length;
        return write(previous);
      };
      await walkTar(source, files.limits, async (entry, readContent) => {
        if (entry.index !== n) return undefined;
        found = true;
        if (entry.type !== "file" || entry.size !== member.size) throw new AppError("ARCHIVE_NOT_TAR", `member ${n} differs from the listing`);
        await readContent(sink);
        return "stop";
      });
      const actual = hash.digest("hex");
      if (!found || actual !== expected) {
        deps.logger.error({ carveId, member: n, expected, actual: found ? actual : null }, "member content does not match its listing: download cut");
        ctx.detail.integrity = "mismatch";
        throw new AppError("STORAGE_UNAVAILABLE", "the file's content does not match its listing");
      }
      const last = held as Buffer | null;
      if (last !== null) {
        sent += last.length;
        await write(last);
      }
      await new Promise<void>((resolve, reject) => {
        // A client that has all Content-Length bytes may close before 'finish' is reported: complete.
        const closed = (): void => (res.writableFinished ? resolve() : reject(new ClientGoneError()));
        res.once("close", closed);
        res.end(() => {
          res.off("close", closed);
          resolve();
        });
      });
    } catch (err) {
      ctx.detail.bytesSent = sent;
      ctx.detail.completed = false;
      if (err instanceof ClientGoneError || (req.destroyed && !res.writableFinished)) {
        ctx.detail.aborted = true;
        deps.logger.info({ carveId, member: n, bytesSent: sent }, "file download aborted by the client");
        return;
      }
      if (!res.headersSent) for (const name of MEMBER_HEADERS) res.removeHeader(name);
      if (err instanceof ZstdFormatError || isAppError(err)) throw err;
      throw new AppError("STORAGE_UNAVAILABLE", "archive stream failed", { cause: err });
    } finally {
      handle.stream.destroy();
    }
    ctx.detail.bytesSent = sent;
    ctx.detail.completed = true;
  };

  router.get("/api/v1/carves/:carve_id/files/:n", endpoint("carve.download", carveTarget("read"), download));
};
