import { watch, type FSWatcher } from "node:fs";
import http from "node:http";
import type https from "node:https";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import { unconfiguredAuthorizer, type Authorizer } from "./auth/authorizer.js";
import { expiryPolicyOf } from "./carves/expiry.js";
import { CarveServices } from "./services/deployment.js";
import { RetentionJob } from "./jobs/retention.js";
import { retentionOptionsOf } from "./jobs/retention-config.js";
import type { Config } from "./config/schema.js";
import { safeErrorFields } from "./errors.js";
import { createRequestHandler } from "./http/app.js";
import { BodyWatch } from "./http/body-watch.js";
import { proxyMatcher } from "./http/client-identity.js";
import { ConnectionGuard } from "./http/connection-guard.js";
import { createTlsServer, reloadTls, type TlsFiles } from "./http/tls.js";
import type { Logger } from "./logger.js";
import { openStorage } from "./storage/factory.js";
import { Metrics } from "./metrics.js";

export interface RunningService {
  /** The main listener: agents (and responders, unless they have their own listener). */
  url: string;
  port: number;
  /** The responder-only listener, when configured. */
  responderUrl: string | null;
  /** The services over the opened storage: what the routes, retention and tests call. */
  services: CarveServices;
  server: http.Server | https.Server;
  /** Re-reads the TLS certificate, key and CA files for new handshakes; established connections go on. */
  reloadTls(): Promise<void>;
  /** Stops accepting, lets in-flight requests finish (up to the grace period), then closes the store. */
  stop(): Promise<void>;
}

export interface StartOptions {
  config: Config;
  logger: Logger;
  /** Use this authorizer instead of the one built from `config.vault` (stop() still closes it). */
  authorizer?: Authorizer;
  now?: () => Date;
  /** Where the built web console is (default dist/console). */
  consoleDir?: string;
}

interface Listener {
  name: "main" | "responder";
  guard: ConnectionGuard;
  server: http.Server | https.Server;
  tls: TlsFiles | null;
  url: string;
  port: number;
}

function tlsFilesOf(config: Config, which: "main" | "responder"): TlsFiles | null {
  const { cert, key, clientCa } = config.server.tls;
  if (!cert || !key) return null;
  return { cert, key, clientCa: which === "main" ? clientCa : config.server.responder.tlsClientCa };
}

/**
 * Node answers a request timeout or an unparsable request itself, with an empty body, which osquery counts
 * as success: answer with a non-JSON body instead, so an agent retries or stops.
 */
function answerClientError(err: NodeJS.ErrnoException & { library?: string }, socket: Duplex): void {
  // TLS failures (a handshake timeout, an OpenSSL error) come here too: no HTTP can be spoken on that socket.
  if (!socket.writable || err.code === "ECONNRESET" || err.code?.startsWith("ERR_TLS") || err.library !== undefined) {
    socket.destroy();
    return;
  }
  const [status, code] =
    err.code === "ERR_HTTP_REQUEST_TIMEOUT"
      ? ["408 Request Timeout", "REQUEST_TIMEOUT: the request was not received in time"]
      : err.code === "HPE_HEADER_OVERFLOW"
        ? ["431 Request Header Fields Too Large", "HEADERS_TOO_LARGE: request headers too large"]
        : ["400 Bad Request", "BAD_REQUEST: malformed HTTP request"];
  const body = `refused: ${code}\n`;
  socket.end(
    `HTTP/1.1 ${status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

async function listen(server: http.Server, port: number, host: string): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  return (server.address() as AddressInfo).port;
}

/** Opens storage, builds the app and listens. Everything is validated and opened before the port opens. */
export async function startService(options: StartOptions): Promise<RunningService> {
  const { config, logger } = options;
  // The authorizer first: a bad CA file is a configuration error reported before storage is opened.
  const authorizer =
    options.authorizer ??
    (config.vault.address
      ? // loaded only when configured: node-vault and axios cost memory a Vault-less deployment never uses
        await (await import("./auth/vault/vault-authorizer.js")).VaultAuthorizer.create(config.vault, logger)
      : unconfiguredAuthorizer());
  if (!config.vault.address && !options.authorizer) logger.warn("VAULT_ADDR not set: the responder API answers 503");
  let services: CarveServices;
  try {
    const storage = await openStorage(config, logger, options.now);
    services = new CarveServices(storage, {
      logger: logger.child({ component: "carves" }),
      ...(options.now ? { now: options.now } : {}),
    });
    try {
      await services.recoverAtStart();
    } catch (err) {
      await services.close();
      throw err;
    }
  } catch (err) {
    await authorizer.close();
    throw err;
  }
  let shuttingDown = false;
  const carves = services.ingest({
    limits: {
      maxBlockSize: config.agent.maxBlockSize,
      maxCarveSize: config.agent.maxCarveSize,
      minFreeBytes: config.storage.filesystem.minFreeBytes,
      maxReceiving: config.agent.maxReceivingCarves,
      maxReceivingPerAgent: config.agent.maxReceivingCarvesPerAgent,
      activeWithinMs: expiryPolicyOf(config).abandonedAfterSeconds * 1000,
      firstBlockWithinMs: config.agent.firstBlockWithinSeconds * 1000,
    },
    requireSameCertificate: config.agent.requireSameCertificate,
  });
  const separateResponder = config.server.responder.port !== undefined;
  const metrics = new Metrics();
  const bodyWatch = new BodyWatch({
    idleMs: config.server.requestTimeoutSeconds * 1000,
    minBytesPerSecond: config.agent.minBodyBytesPerSecond,
    windowMs: config.agent.minBodyRateWindowSeconds * 1000,
    logger: logger.child({ component: "http" }),
  });
  const isTrustedProxy = proxyMatcher(config.server.trustedProxies);
  const appFor = (surfaces: { agent: boolean; responder: boolean }) =>
    createRequestHandler({
      config,
      logger,
      services: { reads: services.reads, custody: services.custody, imports: services.imports, audit: services.audit, status: services },
      carves,
      authorizer,
      isShuttingDown: () => shuttingDown,
      surfaces,
      metrics,
      bodyWatch,
      ...(options.now ? { now: options.now } : {}),
      ...(options.consoleDir ? { consoleDir: options.consoleDir } : {}),
    });

  const listeners: Listener[] = [];
  const open = async (
    name: Listener["name"],
    surfaces: { agent: boolean; responder: boolean },
    port: number,
    host: string,
  ): Promise<void> => {
    const app = appFor(surfaces);
    const tls = tlsFilesOf(config, name);
    // Header timeouts are checked every second (Node's default is every 30 s).
    const serverOptions = { connectionsCheckingInterval: 1000, handshakeTimeout: config.server.tlsHandshakeTimeoutSeconds * 1000 };
    const server = tls ? createTlsServer(app, tls, serverOptions) : http.createServer(serverOptions, app);
    server.on("clientError", (err: NodeJS.ErrnoException, socket) => answerClientError(err, socket));
    const guard = new ConnectionGuard({
      maxConnections: config.server.maxConnections,
      maxPerAddress: config.server.maxConnectionsPerAddress,
      isTrustedProxy,
      logger,
      listener: name,
    });
    guard.attach(server);
    server.prependListener("request", (req: http.IncomingMessage) => guard.noteRequest(req.socket));
    // Bodies are timed by progress (BodyWatch), not by Node's fixed request deadline: a large upload that
    // keeps moving is never cut off. Headers still have a fixed deadline.
    server.requestTimeout = 0;
    server.headersTimeout = config.server.headersTimeoutSeconds * 1000;
    // Longer than NGINX's upstream keepalive_timeout default (60 s) so NGINX closes idle connections first.
    server.keepAliveTimeout = 65_000;
    const bound = await listen(server, port, host);
    const shownHost = host.includes(":") ? `[${host}]` : host;
    const url = `${tls ? "https" : "http"}://${shownHost}:${bound}`;
    listeners.push({ name, guard, server, tls, url, port: bound });
    logger.info(
      {
        listener: name,
        host,
        port: bound,
        tls: Boolean(tls),
        clientCertificates: tls?.clientCa ? "required" : "not requested",
        serves: Object.entries(surfaces).filter(([, on]) => on).map(([k]) => k),
        storage: `${services.storage.blobs.kind}+${services.storage.catalog.kind}`,
      },
      "listening",
    );
  };

  try {
    await open("main", { agent: true, responder: !separateResponder }, config.server.port, config.server.host);
    if (separateResponder) {
      await open(
        "responder",
        { agent: false, responder: true },
        config.server.responder.port as number,
        config.server.responder.host ?? config.server.host,
      );
    }
  } catch (err) {
    for (const l of listeners) l.server.close();
    await services.close();
    await authorizer.close();
    throw err;
  }

  const reload = async (): Promise<void> => {
    for (const l of listeners) {
      if (!l.tls) continue;
      await reloadTls(l.server as https.Server, l.tls);
      logger.info({ listener: l.name }, "TLS certificate, key and CA reloaded");
    }
  };

  // Certificate rotation without a restart: on file change (optional), debounced, keeping the old
  // certificate when the new files do not load.
  const watchers: FSWatcher[] = [];
  if (config.server.tls.watch && config.server.tls.cert) {
    let timer: NodeJS.Timeout | null = null;
    const files = [config.server.tls.cert, config.server.tls.key, config.server.tls.clientCa, config.server.responder.tlsClientCa];
    for (const file of files) {
      if (!file) continue;
      const w = watch(file, () => {
        if (timer) clearTimeout(timer);
        timer = setTimeout(() => {
          reload().catch((err: unknown) =>
            logger.error({ err: safeErrorFields(err) }, "TLS reload failed: keeping the current certificate"),
          );
        }, 500);
        timer.unref();
      });
      w.unref();
      watchers.push(w);
    }
  }

  const retention = config.retention.enabled
    ? new RetentionJob({
        expiry: services.expiry,
        audit: services.audit,
        logger: logger.child({ component: "retention" }),
        options: retentionOptionsOf(config),
        metrics,
        ...(options.now ? { now: options.now } : {}),
      })
    : null;
  retention?.start();

  let stopping: Promise<void> | null = null;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      shuttingDown = true;
      logger.info("shutting down: no new connections, waiting for in-flight requests");
      // No retention run may start while the connections drain; one in progress is awaited below.
      const retentionStopped = retention?.stop();
      for (const w of watchers) w.close();
      const closed = Promise.all(listeners.map((l) => new Promise<void>((resolve) => l.server.close(() => resolve()))));
      // Keep-alive connections become idle as their last request finishes: close them as they do.
      const sweepAll = (): void =>
        listeners.forEach((l) => {
          l.server.closeIdleConnections();
          l.guard.destroyNeverUsed(); // idle before or in the TLS handshake: HTTP does not know them
        });
      sweepAll();
      const sweep = setInterval(sweepAll, 100);
      const grace = config.server.shutdownGraceSeconds * 1000;
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), grace);
        timer.unref();
      });
      if ((await Promise.race([closed, timedOut])) === "timeout") {
        logger.warn({ graceSeconds: config.server.shutdownGraceSeconds }, "grace period over: closing connections");
        listeners.forEach((l) => {
          l.server.closeAllConnections();
          l.guard.destroyAll();
        });
        await closed;
      }
      clearTimeout(timer);
      clearInterval(sweep);
      bodyWatch.stop();
      await retentionStopped; // a run in progress finishes its current carve first
      await services.close();
      await authorizer.close();
      logger.info("stopped");
    })();
    return stopping;
  };
  const main = listeners[0] as Listener;
  return {
    url: main.url,
    port: main.port,
    responderUrl: listeners[1]?.url ?? null,
    services,
    server: main.server,
    reloadTls: reload,
    stop,
  };
}
