import http from "node:http";
import type { AddressInfo } from "node:net";
import { unconfiguredAuthorizer, type Authorizer } from "./auth/authorizer.js";
import { VaultAuthorizer } from "./auth/vault/vault-authorizer.js";
import { CarveService } from "./carves/carve-service.js";
import { RetentionJob } from "./jobs/retention.js";
import { retentionOptionsOf } from "./jobs/retention-config.js";
import type { Config } from "./config/schema.js";
import { createApp } from "./http/app.js";
import type { Logger } from "./logger.js";
import type { CarveStore } from "./storage/carve-store.js";
import { openStore } from "./storage/factory.js";

export interface RunningService {
  url: string;
  port: number;
  store: CarveStore;
  server: http.Server;
  /** Stops accepting, lets in-flight requests finish (up to the grace period), then closes the store. */
  stop(): Promise<void>;
}

export interface StartOptions {
  config: Config;
  logger: Logger;
  /** Use this store instead of opening the configured one (the caller then still gets it closed by stop). */
  store?: CarveStore;
  /** Use this authorizer instead of the one built from `config.vault` (stop() still closes it). */
  authorizer?: Authorizer;
  now?: () => Date;
}

/** Opens storage, builds the app and listens. Everything is validated and opened before the port opens. */
export async function startService(options: StartOptions): Promise<RunningService> {
  const { config, logger } = options;
  // The authorizer first: a bad CA file is a configuration error reported before storage is opened.
  const authorizer =
    options.authorizer ??
    (config.vault.address ? await VaultAuthorizer.create(config.vault, logger) : unconfiguredAuthorizer());
  if (!config.vault.address && !options.authorizer) logger.warn("VAULT_ADDR not set: the responder API answers 503");
  let store: CarveStore;
  try {
    store = options.store ?? (await openStore(config, logger, options.now));
  } catch (err) {
    await authorizer.close();
    throw err;
  }
  let shuttingDown = false;
  const carves = new CarveService({
    store,
    limits: { maxBlockSize: config.agent.maxBlockSize, maxCarveSize: config.agent.maxCarveSize },
    requireSameCertificate: config.agent.requireSameCertificate,
    logger: logger.child({ component: "carves" }),
  });
  const app = createApp({
    config,
    logger,
    store,
    carves,
    authorizer,
    isShuttingDown: () => shuttingDown,
    ...(options.now ? { now: options.now } : {}),
  });
  const server = http.createServer(app);
  server.requestTimeout = config.server.requestTimeoutSeconds * 1000;
  server.headersTimeout = Math.min(30_000, server.requestTimeout);
  // Longer than NGINX's upstream keepalive_timeout default (60 s) so NGINX closes idle connections first.
  server.keepAliveTimeout = 65_000;

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(config.server.port, config.server.host, () => {
      server.off("error", reject);
      resolve();
    });
  }).catch(async (err: unknown) => {
    await store.close();
    await authorizer.close();
    throw err;
  });
  const { port } = server.address() as AddressInfo;
  const host = config.server.host.includes(":") ? `[${config.server.host}]` : config.server.host;
  logger.info({ host: config.server.host, port, storage: store.backend }, "listening");

  const retention = config.retention.enabled
    ? new RetentionJob({
        store,
        logger: logger.child({ component: "retention" }),
        options: retentionOptionsOf(config),
        ...(options.now ? { now: options.now } : {}),
      })
    : null;
  retention?.start();

  let stopping: Promise<void> | null = null;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      shuttingDown = true;
      logger.info("shutting down: no new connections, waiting for in-flight requests");
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // Keep-alive connections become idle as their last request finishes: close them as they do.
      server.closeIdleConnections();
      const sweep = setInterval(() => server.closeIdleConnections(), 100);
      const grace = config.server.shutdownGraceSeconds * 1000;
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), grace);
        timer.unref();
      });
      if ((await Promise.race([closed, timedOut])) === "timeout") {
        logger.warn({ graceSeconds: config.server.shutdownGraceSeconds }, "grace period over: closing connections");
        server.closeAllConnections();
        await closed;
      }
      clearTimeout(timer);
      clearInterval(sweep);
      await retention?.stop(); // a run in progress finishes its current carve first
      await store.close();
      await authorizer.close();
      logger.info("stopped");
    })();
    return stopping;
  };
  return { url: `http://${host}:${port}`, port, store, server, stop };
}
