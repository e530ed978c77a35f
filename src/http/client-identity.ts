import { X509Certificate } from "node:crypto";
import net from "node:net";
import type { TLSSocket } from "node:tls";
import type { IncomingMessage } from "node:http";
import type { CertificateIdentity } from "../storage/model.js";

/**
 * Who is on the other end of a request, from one of two sources that produce the same shape:
 *  - a trusted TLS proxy (NGINX) that verified the client certificate and passed it in headers it always
 *    overwrites: X-Client-Verify ($ssl_client_verify), X-Client-Subject-DN ($ssl_client_s_dn),
 *    X-Client-Cert ($ssl_client_escaped_cert), plus X-Forwarded-For / X-Real-IP;
 *  - the service's own TLS socket when it terminates mutual TLS itself.
 * Headers from any address that is not a configured proxy are ignored: anyone can send them.
 */
export interface ClientInfo {
  /** The client's address: the proxy-reported one when the peer is a trusted proxy. */
  address: string | null;
  certificate: CertificateIdentity | null;
  /** The direct peer is one of the configured trusted proxies. */
  viaTrustedProxy: boolean;
}

export const IDENTITY_HEADERS = {
  verify: "x-client-verify",
  subject: "x-client-subject-dn",
  cert: "x-client-cert",
  realIp: "x-real-ip",
  forwardedFor: "x-forwarded-for",
} as const;

/** Parses `10.0.0.1`, `10.0.0.0/8`, `::1`, `fd00::/8` into a BlockList. @throws Error on a bad entry. */
export function proxyMatcher(entries: readonly string[]): (address: string | undefined) => boolean {
  const list = new net.BlockList();
  for (const entry of entries) {
    const [ip, bits] = entry.split("/");
    const family = net.isIP(ip ?? "");
    if (!ip || family === 0) throw new Error(`not an IP address or CIDR: ${entry}`);
    const type = family === 6 ? "ipv6" : "ipv4";
    if (bits === undefined) list.addAddress(ip, type);
    else list.addSubnet(ip, Number(bits), type);
  }
  return (address) => {
    if (!address) return false;
    const plain = address.startsWith("::ffff:") && net.isIPv4(address.slice(7)) ? address.slice(7) : address;
    const family = net.isIP(plain);
    if (family === 0) return false;
    return list.check(plain, family === 6 ? "ipv6" : "ipv4");
  };
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return typeof v === "string" ? v : Array.isArray(v) ? v[0] : undefined;
}

/** Identity of a PEM certificate in our shape. Returns null for anything unparsable. */
export function certificateIdentityFromPem(pem: string, source: CertificateIdentity["source"]): CertificateIdentity | null {
  try {
    const cert = new X509Certificate(pem);
    return { subjectDn: rfc2253(cert.subject), fingerprintSha256: cert.fingerprint256, source };
  } catch {
    return null;
  }
}

/** Node prints subjects one attribute per line, most significant first; RFC 2253 is the reverse, comma-joined. */
function rfc2253(subject: string): string {
  return subject
    .split("\n")
    .filter((l) => l !== "")
    .reverse()
    .map((l) => l.replace(/([,+"\\<>;])/g, "\\$1"))
    .join(",");
}

function fromProxyHeaders(req: IncomingMessage): CertificateIdentity | null {
  if (header(req, IDENTITY_HEADERS.verify) !== "SUCCESS") return null;
  const escaped = header(req, IDENTITY_HEADERS.cert);
  if (!escaped) return null;
  let pem: string;
  try {
    pem = decodeURIComponent(escaped);
  } catch {
    return null;
  }
  const identity = certificateIdentityFromPem(pem, "proxy");
  if (!identity) return null;
  // Prefer NGINX's own rendering of the subject when it sent one (that is what its logs show).
  const subject = header(req, IDENTITY_HEADERS.subject);
  return subject ? { ...identity, subjectDn: subject } : identity;
}

function fromTlsSocket(req: IncomingMessage): CertificateIdentity | null {
  const socket = req.socket as Partial<TLSSocket>;
  if (!socket.encrypted || !socket.authorized || typeof socket.getPeerX509Certificate !== "function") return null;
  const cert = socket.getPeerX509Certificate();
  if (!cert) return null;
  return { subjectDn: rfc2253(cert.subject), fingerprintSha256: cert.fingerprint256, source: "tls" };
}

export function resolveClient(req: IncomingMessage, isTrustedProxy: (address: string | undefined) => boolean): ClientInfo {
  const peer = req.socket.remoteAddress;
  const own = fromTlsSocket(req);
  if (own) return { address: peer ?? null, certificate: own, viaTrustedProxy: false };
  if (isTrustedProxy(peer)) {
    const realIp = header(req, IDENTITY_HEADERS.realIp);
    const forwarded = header(req, IDENTITY_HEADERS.forwardedFor)?.split(",").map((s) => s.trim()).filter(Boolean);
    // The last X-Forwarded-For entry is the one our proxy appended ($proxy_add_x_forwarded_for).
    const address = (realIp && net.isIP(realIp) ? realIp : undefined) ?? forwarded?.at(-1) ?? peer ?? null;
    return { address, certificate: fromProxyHeaders(req), viaTrustedProxy: true };
  }
  return { address: peer ?? null, certificate: null, viaTrustedProxy: false };
}
