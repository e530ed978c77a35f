import { createHash, randomBytes, randomUUID } from "node:crypto";
import type { TestSpec } from "../services/services-as-store.js";

export function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

/** A carve's bytes split the way osquery splits them. */
export interface TestCarve {
  spec: TestSpec;
  bytes: Buffer;
  blocks: Buffer[];
}

export function makeCarve(options: {
  size: number;
  blockSize: number;
  bytes?: Buffer;
  carveId?: string;
  requestId?: string;
  nodeKey?: string;
}): TestCarve {
  const bytes = options.bytes ?? randomBytes(options.size);
  const blocks: Buffer[] = [];
  for (let off = 0; off < bytes.length; off += options.blockSize) {
    blocks.push(bytes.subarray(off, Math.min(off + options.blockSize, bytes.length)));
  }
  return {
    bytes,
    blocks,
    spec: {
      carveId: options.carveId ?? randomUUID(),
      requestId: options.requestId ?? randomUUID(),
      nodeKey: options.nodeKey ?? "node-key-1",
      blockCount: blocks.length,
      blockSize: options.blockSize,
      carveSize: bytes.length,
      agent: {
        address: "127.0.0.1",
        userAgent: "osquery/5.23.0",
        certificate: {
          subjectDn: "CN=agent-1,O=Example",
          fingerprintSha256: "AB:CD:EF:01",
          source: "proxy",
        },
      },
    },
  };
}

export async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
  return Buffer.concat(chunks);
}

/** A deterministic shuffle (tests must be reproducible). */
export function shuffled<T>(items: readonly T[], seed = 42): T[] {
  const out = [...items];
  let s = seed >>> 0;
  for (let i = out.length - 1; i > 0; i--) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const j = s % (i + 1);
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}
