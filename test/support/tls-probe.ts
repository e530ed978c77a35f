/**
 * How a TLS server answers a client certificate, seen from the client, exactly. Node's https client cannot
 * tell: it writes its request as soon as its half of the handshake is done, and a request written into a
 * connection the server is closing draws a TCP reset that can arrive before the server's alert is read, so a
 * refusal shows as any of the alert, ECONNRESET or EPIPE. This probe writes nothing after the handshake.
 */
import tls from "node:tls";

/**
 * - `alert <code>`: the server refused in the handshake with a TLS alert (OpenSSL's code as Node names it,
 *   e.g. ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED when no certificate was sent).
 * - `closed after the handshake`: the client finished its half of the handshake (it trusted the server's
 *   certificate), then the server closed the connection without an alert and without a byte. Under TLS 1.3
 *   this is Node's refusal of a certificate it verified and rejected (another CA's, an expired one).
 * - `accepted`: the server finished the handshake too: its TLS 1.3 session tickets arrived.
 * - `failed <code>`: the connection failed on the client's side (refused, an untrusted server certificate).
 */
export type HandshakeOutcome = "accepted" | "closed after the handshake" | `alert ${string}` | `failed ${string}`;

export interface ProbeOptions {
  port: number;
  ca: Buffer;
  client: { cert: Buffer; key: Buffer } | null;
  host?: string;
  servername?: string;
}

export function probeHandshake(options: ProbeOptions): Promise<HandshakeOutcome> {
  return new Promise((resolve) => {
    let secured = false;
    let error: NodeJS.ErrnoException | null = null;
    const socket = tls.connect({
      host: options.host ?? "127.0.0.1",
      port: options.port,
      ca: options.ca,
      servername: options.servername ?? "localhost",
      ...(options.client ? { cert: options.client.cert, key: options.client.key } : {}),
    });
    socket.once("secureConnect", () => (secured = true));
    // The server sends its session tickets only once it has verified the client's certificate and finished.
    socket.once("session", () => {
      resolve("accepted");
      socket.destroy();
    });
    let bytes = 0;
    socket.on("data", (c: Buffer) => (bytes += c.length));
    socket.on("error", (e: NodeJS.ErrnoException) => (error = e));
    socket.once("close", () => {
      const code = error ? (error.code ?? error.message) : null;
      if (code?.startsWith("ERR_SSL_") && code.includes("_ALERT_")) resolve(`alert ${code}`);
      else if (secured && code === null && bytes === 0) resolve("closed after the handshake");
      else resolve(`failed ${code ?? (secured ? `closed after ${bytes} bytes` : "closed before the handshake")}`);
    });
  });
}
