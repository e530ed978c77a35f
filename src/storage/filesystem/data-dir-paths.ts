import path from "node:path";
import { AppError } from "../../errors.js";
import { archiveExtension } from "../../carves/geometry.js";
import type { Compression } from "../model.js";
import { journalIn } from "./upload-journal.js";

/*
 * Bytes in the data directory (every path is built from validated ids and checked to stay inside):
 *
 *   carves/<carve_id>.tar[.zst]   published archives, plain files an operator can pick up
 *   sessions/<carve_id>/data.part the archive being received, each block written at its offset
 *   sessions/<carve_id>/journal   8-byte records (block id, check) appended after a block's bytes are written:
 *                                 the durable list of stored blocks, replayed after a restart (./upload-journal.ts)
 *   tmp/                          staging for imports and probes; emptied at start-up
 *   .lock                         pid of the one process that owns this directory
 *
 * A block is acknowledged only after its bytes and its journal record are written (fsync of each is optional:
 * a process crash keeps the page cache, a power loss needs fsyncEachBlock). Publication fsyncs the data and
 * renames it into carves/: a file there is only ever a whole archive.
 */

/** Paths in a data directory, every one built from validated ids and checked to stay inside it. */
export class DataDirPaths {
  constructor(readonly root: string) {}

  p(...parts: string[]): string {
    const full = path.join(this.root, ...parts);
    if (full !== this.root && !full.startsWith(this.root + path.sep)) throw new AppError("INTERNAL", "path escapes the data directory");
    return full;
  }

  sessionDir(carveId: string): string {
    return this.p("sessions", carveId);
  }

  partPath(carveId: string): string {
    return this.p("sessions", carveId, "data.part");
  }

  journalPath(carveId: string): string {
    return journalIn(this.sessionDir(carveId));
  }

  finalPath(carveId: string, compression: Compression): string {
    return this.p("carves", `${carveId}${archiveExtension(compression)}`);
  }
}
