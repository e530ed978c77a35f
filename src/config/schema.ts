import net from "node:net";
import { z } from "zod";
import { parseByteSize } from "./sizes.js";

const byteSize = (min: number, max: number) =>
  z
    .union([z.number(), z.string()])
    .transform((v, ctx) => {
      const n = parseByteSize(v);
      if (n === undefined) {
        ctx.addIssue({ code: "custom", message: `not a byte size: ${JSON.stringify(v)} (use 8388608 or 8MiB)` });
        return z.NEVER;
      }
      return n;
    })
    .refine((n) => n >= min && n <= max, { message: `must be between ${min} and ${max} bytes` });

const port = z.coerce.number().int().min(0).max(65535);

/** An HTTP path the agent endpoints are mounted on: what `--carver_start_endpoint` etc. are set to. */
const endpointPath = z
  .string()
  .regex(/^\/[A-Za-z0-9._~\-/]*$/, "must start with / and contain only URL-safe path characters")
  .refine((p) => p !== "/", { message: "\"/\" is always served (body-routed); choose a distinct path" });

/** A list given as YAML sequence or as a comma-separated string (environment). */
const stringList = z
  .union([z.array(z.string()), z.string()])
  .transform((v) => (Array.isArray(v) ? v : v.split(",")).map((s) => s.trim()).filter((s) => s !== ""));

/** A Vault policy name (sanitized by Vault to lower case). */
const policyName = z
  .string()
  .regex(/^[a-z0-9][a-z0-9_.-]{0,127}$/, "a Vault policy name: lower-case letters, digits, _ . -");

/** A Vault logical path (no leading slash), optionally with the {carve_id} placeholder. */
const vaultPath = z
  .string()
  .transform((p) => p.replace(/^\/+/, ""))
  .pipe(z.string().regex(/^[A-Za-z0-9_.\-/]*(\{carve_id\}[A-Za-z0-9_.\-/]*)?$/, "letters, digits, _ . - / and {carve_id} only").min(1));

const logLevel = z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]);

export const MIN_BLOCK_SIZE = 1;
/** A block body is ~1.34 x the block size; beyond this a single request would hold too much memory. */
export const HARD_MAX_BLOCK_SIZE = 64 * 1024 * 1024;
export const HARD_MAX_CARVE_SIZE = 1024 ** 4;
/** Defaults of `vault.importPolicy` and `vault.importPath`; the Vault authorizer falls back to them too. */
export const DEFAULT_IMPORT_POLICY = "osquery-carve-import";
export const DEFAULT_IMPORT_PATH = "osquery-carves-import/import";

/** Who is believed as a proxy by default when the service speaks plain HTTP (NGINX on the same host). */
export const LOOPBACK_PROXIES: readonly string[] = ["127.0.0.1", "::1"];

export const configSchema = z
  .strictObject({
    server: z
      .strictObject({
        host: z.string().min(1).default("127.0.0.1"),
        port: port.default(8000),
        /** Seconds in-flight requests get to finish after SIGTERM/SIGINT before connections are cut. */
        shutdownGraceSeconds: z.coerce.number().int().min(0).max(3600).default(30),
        /**
         * Seconds a request may go without a byte arriving before it is cut off (non-JSON 408). Progress-based:
         * an upload that keeps moving is never cut off, however long it takes.
         */
        requestTimeoutSeconds: z.coerce.number().int().min(1).max(3600).default(60),
        /** Seconds a client gets to send a request's headers, from its connection or its previous request. */
        headersTimeoutSeconds: z.coerce.number().int().min(1).max(3600).default(20),
        /** Seconds a client gets to complete the TLS handshake (direct-TLS mode). */
        tlsHandshakeTimeoutSeconds: z.coerce.number().int().min(1).max(600).default(10),
        /** Open connections per listener; beyond it new connections are closed at once. */
        maxConnections: z.coerce.number().int().min(1).max(1_000_000).default(4096),
        /** Open connections per client address and listener (trusted proxies are exempt). */
        maxConnectionsPerAddress: z.coerce.number().int().min(1).max(1_000_000).default(128),
        /**
         * Addresses (IPs or CIDRs) of the TLS proxies (NGINX) whose client-certificate headers and
         * X-Forwarded-For are believed. Requests from anywhere else have those headers ignored. Unset: loopback
         * (127.0.0.1, ::1) when the service speaks plain HTTP behind a local NGINX, and nobody when it
         * terminates TLS itself (any local process could otherwise forge an agent's identity).
         */
        trustedProxies: stringList
          .refine(
            (list) =>
              list.every((e) => {
                const [ip, bits, extra] = e.split("/");
                const family = net.isIP(ip ?? "");
                if (family === 0 || extra !== undefined) return false;
                if (bits === undefined) return true;
                const n = Number(bits);
                return /^\d+$/.test(bits) && n >= 0 && n <= (family === 4 ? 32 : 128);
              }),
            { message: "each entry must be an IP address or CIDR (10.0.0.0/8, ::1)" },
          )
          .optional(),
        /**
         * HTTPS served by the service itself (no NGINX): PEM certificate and key. With a client CA, agents
         * must present a certificate from it: others are refused during the TLS handshake.
         */
        tls: z
          .strictObject({
            cert: z.string().min(1).optional(),
            key: z.string().min(1).optional(),
            clientCa: z.string().min(1).optional(),
            /** Reload certificate, key and CA when their files change (SIGHUP always reloads). */
            watch: z.boolean().default(false),
          })
          .prefault({}),
        /**
         * A second listener for the responder API only (the main one then serves agents only), with its own
         * optional client CA, as the NGINX design separates them.
         */
        responder: z
          .strictObject({
            port: port.optional(),
            host: z.string().min(1).optional(),
            tlsClientCa: z.string().min(1).optional(),
          })
          .prefault({}),
      })
      .prefault({}),
    agent: z
      .strictObject({
        startPath: endpointPath.default("/start_uploads"),
        continuePath: endpointPath.default("/upload_blocks"),
        maxBlockSize: byteSize(MIN_BLOCK_SIZE, HARD_MAX_BLOCK_SIZE).default(8 * 1024 * 1024),
        maxCarveSize: byteSize(1024, HARD_MAX_CARVE_SIZE).default(4 * 1024 ** 3),
        /**
         * Bytes of agent request bodies admitted at once (each also holds ~2.5 x its body while processed);
         * requests beyond it wait, unread, so memory does not grow with the number of agents.
         */
        inflightBytes: byteSize(1024 * 1024, 4 * 1024 ** 3).default(16 * 1024 * 1024),
        /**
         * An agent body must bring at least this many bytes per second, measured over each window of
         * `minBodyRateWindowSeconds`; a slower one is cut off (non-JSON 408). 0 disables the check.
         */
        minBodyBytesPerSecond: z.coerce.number().int().min(0).max(1024 ** 3).default(500),
        minBodyRateWindowSeconds: z.coerce.number().int().min(1).max(3600).default(20),
        /** Carves being received at once (0: no limit); a start beyond it gets a JSON 429. */
        maxReceivingCarves: z.coerce.number().int().min(0).max(1_000_000).default(1000),
        /** Carves being received at once from one agent (its certificate, else its address; never the node key). */
        maxReceivingCarvesPerAgent: z.coerce.number().int().min(0).max(100_000).default(20),
        /** A carve with no block this many seconds after its start no longer counts towards the two caps. */
        firstBlockWithinSeconds: z.coerce.number().int().min(1).max(86_400).default(600),
        /** Refuse blocks that come with another client certificate than the session's start did. */
        requireSameCertificate: z.boolean().default(false),
      })
      .prefault({}),
    import: z
      .strictObject({
        /** Largest archive a responder may import (POST /api/v1/carves/import); larger ones get 413, nothing kept. */
        maxSize: byteSize(1, HARD_MAX_CARVE_SIZE).default(4 * 1024 ** 3),
      })
      .prefault({}),
    audit: z
      .strictObject({
        /**
         * Requests without a valid token are audited once per client address and window: the first as it
         * happens, the rest as one `auth.failures` event with their count. 0 audits every one.
         */
        unauthenticatedWindowSeconds: z.coerce.number().int().min(0).max(86_400).default(60),
      })
      .prefault({}),
    listing: z
      .strictObject({
        /** The files endpoint lists at most this many members of an archive (truncatedReason max-members). */
        maxMembers: z.coerce.number().int().min(1).max(1_000_000).default(100_000),
        /** ... and reads at most this many (decompressed) bytes of it (truncatedReason max-bytes-examined). */
        maxBytesExamined: byteSize(1024, HARD_MAX_CARVE_SIZE * 16).default(8 * 1024 ** 3),
      })
      .prefault({}),
    storage: z
      .strictObject({
        backend: z.enum(["filesystem", "gridfs"]).default("filesystem"),
        /**
         * Where completed archives go: "local" keeps them in the backend's own blob store (the data directory or
         * GridFS); "s3" puts them in an S3 bucket, blocks being staged in that local store until completion.
         */
        blobs: z.enum(["local", "s3"]).default("local"),
        filesystem: z
          .strictObject({
            dataDir: z.string().min(1).default("./data"),
            /** fsync every block before acknowledging it (survives power loss, slower). */
            fsyncEachBlock: z.boolean().default(false),
            /** A new carve is refused (507) unless this much disk stays free after it. */
            minFreeBytes: byteSize(0, HARD_MAX_CARVE_SIZE * 1024).default(1024 ** 3),
          })
          .prefault({}),
        gridfs: z
          .strictObject({
            /** mongodb:// or mongodb+srv:// connection string; required when backend is gridfs. */
            uri: z.string().regex(/^mongodb(\+srv)?:\/\//, "must be a mongodb:// or mongodb+srv:// URI").optional(),
            database: z.string().regex(/^[A-Za-z0-9_-]{1,63}$/, "plain latin letters, digits, _ and -").default("osquery_carves"),
            bucket: z.string().regex(/^[A-Za-z0-9_-]{1,63}$/, "plain latin letters, digits, _ and -").default("carves"),
          })
          .prefault({}),
        s3: z
          .strictObject({
            /** S3-compatible endpoint (MinIO, Ceph, SeaweedFS); unset: AWS S3 of the region. */
            endpoint: z
              .string()
              .regex(/^https?:\/\/[^\s/?#]+\/?$/, "must be an http:// or https:// URL without path or query")
              .transform((e) => e.replace(/\/+$/, ""))
              .optional(),
            /** Unset: the AWS chain's (AWS_REGION, the shared config file's profile). */
            region: z.string().regex(/^[a-z0-9-]{1,32}$/, "an AWS region name such as eu-west-1").optional(),
            bucket: z
              .string()
              .regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, "an S3 bucket name: 3-63 lower-case letters, digits, . and -")
              .optional(),
            /** Prepended to every object key: <prefix><carve_id>.tar[.zst]. */
            prefix: z
              .string()
              .max(512)
              .regex(/^(?!\/)[A-Za-z0-9!_.*'()/-]*$/, "letters, digits and ! _ . * ' ( ) / - only, not starting with /")
              .default("carves/"),
            /** Bucket in the path (http://host/bucket/key) rather than the host name: most S3-compatible servers. */
            forcePathStyle: z.boolean().default(false),
            /** Server-side encryption asked for every object: SSE-S3 (AES256) or SSE-KMS (aws:kms). */
            sse: z.enum(["none", "AES256", "aws:kms"]).default("none"),
            /** KMS key for aws:kms (unset: the bucket's or account's default key). */
            sseKmsKeyId: z.string().min(1).optional(),
            /** Size of the multipart upload parts a completion sends (raised for archives above 10,000 parts). */
            partSize: byteSize(8 * 1024 * 1024, 64 * 1024 * 1024).default(8 * 1024 * 1024),
          })
          .prefault({}),
      })
      .prefault({}),
    vault: z
      .strictObject({
        /** Vault's address (https://vault.example.com:8200). Without it the responder API answers 503. */
        address: z
          .string()
          .regex(/^https?:\/\/[^\s/?#]+(\/[^\s?#]*)?$/, "must be an http:// or https:// URL without query")
          .transform((a) => a.replace(/\/+$/, ""))
          .optional(),
        /** Vault Enterprise / OpenBao namespace the tokens and policies live in (X-Vault-Namespace). */
        namespace: z
          .string()
          .regex(/^[A-Za-z0-9_.\-/]*$/, "letters, digits, _ . - and / only")
          .transform((n) => n.replace(/^\/+|\/+$/g, ""))
          .optional(),
        /** PEM file with the CA(s) that signed Vault's TLS certificate. */
        caFile: z.string().min(1).optional(),
        /** Each Vault request (lookup-self, capabilities-self) gives up after this long: 503. */
        timeoutMs: z.coerce.number().int().min(100).max(60_000).default(5000),
        /** Policy that allows listing, reading metadata, listing files and downloading carves. */
        policy: policyName.default("osquery-carve-download"),
        /** Policy that allows deleting carves and reading the audit trail. */
        adminPolicy: policyName.default("osquery-carve-admin"),
        /** policy: token or identity policies must contain the policy; capabilities: ask sys/capabilities-self. */
        authMode: z.enum(["policy", "capabilities"]).default("policy"),
        /** capabilities mode: the Vault path checked for read/delete of one carve. */
        pathTemplate: vaultPath
          .refine((p) => p.split("{carve_id}").length === 2, { message: "must contain {carve_id} exactly once" })
          .default("osquery-carves/{carve_id}"),
        /** capabilities mode: the Vault path checked (read) for reading the audit trail. */
        auditPath: vaultPath
          .refine((p) => !p.includes("{"), { message: "must not contain placeholders" })
          .default("osquery-carves-admin/audit"),
        /** policy mode: policy that allows importing archives collected out of band. */
        importPolicy: policyName.default(DEFAULT_IMPORT_POLICY),
        /** capabilities mode: the Vault path checked ("create") for importing an archive. */
        importPath: vaultPath
          .refine((p) => !p.includes("{"), { message: "must not contain placeholders" })
          .default(DEFAULT_IMPORT_PATH),
        /** Seconds a Vault decision is reused (never past the token's own ttl); 0 disables caching. */
        cacheSeconds: z.coerce.number().int().min(0).max(60).default(30),
      })
      .prefault({}),
    retention: z
      .strictObject({
        /** Run the retention job inside the service (off: only `npm run cleanup` from cron deletes). */
        enabled: z.boolean().default(true),
        /** Complete carves are deleted this many days after completion (legal holds exempt). */
        days: z.coerce.number().min(0).max(36_500).default(30),
        /** Incomplete carves with no block for this many hours are abandoned and deleted. */
        abandonedAfterHours: z.coerce.number().min(0.01).max(8760).default(6),
        /** Minutes between in-service runs (counted from the end of a run, so runs never overlap). */
        intervalMinutes: z.coerce.number().min(0.01).max(10_080).default(60),
        /** Carves per batch and batches per run: a run always ends, the rest waits for the next run. */
        batchSize: z.coerce.number().int().min(1).max(10_000).default(100),
        maxBatchesPerRun: z.coerce.number().int().min(1).max(10_000).default(20),
        /** A deletion begun this many minutes ago and unfinished (its process died) is finished. */
        staleDeleteAfterMinutes: z.coerce.number().min(0.01).max(1440).default(10),
      })
      .prefault({}),
    logging: z
      .strictObject({
        level: logLevel.default("info"),
      })
      .prefault({}),
  })
  .superRefine((c, ctx) => {
    if (c.agent.maxBlockSize > c.agent.maxCarveSize) {
      ctx.addIssue({
        code: "custom",
        path: ["agent", "maxBlockSize"],
        message: "must not exceed agent.maxCarveSize",
      });
    }
    const tls = c.server.tls;
    if (Boolean(tls.cert) !== Boolean(tls.key)) {
      ctx.addIssue({ code: "custom", path: ["server", "tls"], message: "cert and key go together (CARVE_TLS_CERT, CARVE_TLS_KEY)" });
    }
    if (tls.clientCa && !tls.cert) {
      ctx.addIssue({ code: "custom", path: ["server", "tls", "clientCa"], message: "client verification needs cert and key" });
    }
    if (c.server.responder.tlsClientCa && !tls.cert) {
      ctx.addIssue({ code: "custom", path: ["server", "responder", "tlsClientCa"], message: "needs server.tls cert and key" });
    }
    if (c.server.responder.tlsClientCa && c.server.responder.port === undefined) {
      ctx.addIssue({ code: "custom", path: ["server", "responder", "port"], message: "required with a responder client CA" });
    }
    if (c.storage.backend === "gridfs" && !c.storage.gridfs.uri) {
      ctx.addIssue({
        code: "custom",
        path: ["storage", "gridfs", "uri"],
        message: "required when storage.backend is gridfs (CARVE_MONGODB_URI)",
      });
    }
    if (c.storage.blobs === "s3" && !c.storage.s3.bucket) {
      ctx.addIssue({
        code: "custom",
        path: ["storage", "s3", "bucket"],
        message: "required when storage.blobs is s3 (CARVE_S3_BUCKET)",
      });
    }
    if (c.storage.s3.sseKmsKeyId && c.storage.s3.sse !== "aws:kms") {
      ctx.addIssue({ code: "custom", path: ["storage", "s3", "sseKmsKeyId"], message: "only with sse aws:kms (CARVE_S3_SSE)" });
    }
    if (c.agent.startPath === c.agent.continuePath) {
      ctx.addIssue({
        code: "custom",
        path: ["agent", "continuePath"],
        message: "must differ from agent.startPath (leave both unset to use the defaults)",
      });
    }
  })
  .transform((c) => ({
    ...c,
    server: { ...c.server, trustedProxies: c.server.trustedProxies ?? (c.server.tls.cert ? [] : LOOPBACK_PROXIES) },
  }));

export type Config = z.output<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;
