import type { Download } from "../../src/client/api-client.js";

/** Largest download whose SHA-256 the console checks in the page (Web Crypto hashes a whole buffer). */
const HASHED_UP_TO = 1024 * 1024 * 1024;

export interface Saved {
  bytes: number;
  /** SHA-256 of what was saved, when it was small enough to hash here. */
  sha256: string | null;
}

async function sha256Hex(blob: Blob): Promise<string | null> {
  if (blob.size > HASHED_UP_TO || !globalThis.crypto?.subtle) return null; // subtle: secure contexts only
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Saves a download the client fetched with the token in its header: the stream is read into a Blob and handed
 * to the browser's download manager through a blob: URL, so no URL ever carries the token (a plain link to
 * the API could not send the header at all). The whole file passes through memory: for archives of many GiB
 * carvectl get (resumable, streamed to disk) is the better tool.
 */
export async function saveDownload(download: Download, fileName: string, onProgress?: (received: number) => void): Promise<Saved> {
  const reader = download.body.getReader();
  const chunks: Uint8Array[] = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    onProgress?.(received);
  }
  if (download.length !== null && received !== download.length) {
    throw new Error(`the transfer stopped after ${received} of ${download.length} bytes`);
  }
  const blob = new Blob(chunks as BlobPart[], { type: "application/octet-stream" });
  const sha256 = await sha256Hex(blob);
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = fileName;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  // Revoked later, not at once: the download manager may still be reading the blob.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return { bytes: received, sha256 };
}
