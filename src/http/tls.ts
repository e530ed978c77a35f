import { readFileSync, promises as fsp } from "node:fs";
import type { RequestListener } from "node:http";
import https from "node:https";
import tls from "node:tls";

/** PEM files of one TLS listener. `clientCa` turns on client-certificate verification at the handshake. */
export interface TlsFiles {
  cert: string;
  key: string;
  clientCa?: string | undefined;
}

interface Material {
  cert: Buffer;
  key: Buffer;
  ca?: Buffer;
}

/*
 * TLS 1.2 minimum. Node's default cipher list (OpenSSL's, minus known-weak suites) already prefers
 * forward-secret AEAD suites; we only pin the protocol floor and let the server choose.
 */
const BASE_OPTIONS = {
  minVersion: "TLSv1.2",
  honorCipherOrder: true,
} as const satisfies tls.SecureContextOptions;

function contextOptions(m: Material): tls.SecureContextOptions {
  return { ...BASE_OPTIONS, cert: m.cert, key: m.key, ...(m.ca ? { ca: m.ca } : {}) };
}

function readSync(files: TlsFiles): Material {
  return {
    cert: readFileSync(files.cert),
    key: readFileSync(files.key),
    ...(files.clientCa ? { ca: readFileSync(files.clientCa) } : {}),
  };
}

async function read(files: TlsFiles): Promise<Material> {
  const [cert, key, ca] = await Promise.all([
    fsp.readFile(files.cert),
    fsp.readFile(files.key),
    files.clientCa ? fsp.readFile(files.clientCa) : Promise.resolve(undefined),
  ]);
  return { cert, key, ...(ca ? { ca } : {}) };
}

/**
 * An HTTPS server for `app`. With a client CA, connections without a valid certificate from that CA
 * (none, another CA's, expired) are refused during the handshake: no request ever reaches the app.
 * @throws Error when a file cannot be read or the key does not match the certificate.
 */
export function createTlsServer(app: RequestListener, files: TlsFiles, serverOptions: https.ServerOptions = {}): https.Server {
  const material = readSync(files);
  tls.createSecureContext(contextOptions(material)); // fail at start-up, with OpenSSL's reason
  return https.createServer(
    {
      ...serverOptions,
      ...contextOptions(material),
      requestCert: Boolean(files.clientCa),
      rejectUnauthorized: Boolean(files.clientCa),
    },
    app,
  );
}

/**
 * Re-reads the PEM files and swaps them in for NEW handshakes; established connections (carves in
 * flight) keep going. A broken set of files is refused and the running certificate stays.
 * @throws Error describing why the new files were not used.
 */
export async function reloadTls(server: https.Server, files: TlsFiles): Promise<void> {
  const material = await read(files);
  const options = contextOptions(material);
  tls.createSecureContext(options); // validate before swapping
  server.setSecureContext(options);
}
