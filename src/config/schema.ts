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

const logLevel = z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]);

export const MIN_BLOCK_SIZE = 1;
/** A block body is ~1.34 x the block size; beyond this a single request would hold too much memory. */
export const HARD_MAX_BLOCK_SIZE = 64 * 1024 * 1024;
export const HARD_MAX_CARVE_SIZE = 1024 ** 4;

export const configSchema = z
  .strictObject({
    server: z
      .strictObject({
        host: z.string().min(1).default("127.0.0.1"),
        port: port.default(8000),
        /** Seconds in-flight requests get to finish after SIGTERM/SIGINT before connections are cut. */
        shutdownGraceSeconds: z.coerce.number().int().min(0).max(3600).default(30),
        /** Seconds a client may take to send one request's headers and body (slow-loris guard). */
        requestTimeoutSeconds: z.coerce.number().int().min(1).max(3600).default(60),
        /**
         * Addresses (IPs or CIDRs) of the TLS proxies (NGINX) whose client-certificate headers and
         * X-Forwarded-For are believed. Requests from anywhere else have those headers ignored.
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
          .default(["127.0.0.1", "::1"]),
      })
      .prefault({}),
    agent: z
      .strictObject({
        startPath: endpointPath.default("/start_uploads"),
        continuePath: endpointPath.default("/upload_blocks"),
        maxBlockSize: byteSize(MIN_BLOCK_SIZE, HARD_MAX_BLOCK_SIZE).default(8 * 1024 * 1024),
        maxCarveSize: byteSize(1024, HARD_MAX_CARVE_SIZE).default(4 * 1024 ** 3),
        /** Refuse blocks that come with another client certificate than the session's start did. */
        requireSameCertificate: z.boolean().default(false),
      })
      .prefault({}),
    storage: z
      .strictObject({
        backend: z.enum(["filesystem", "gridfs"]).default("filesystem"),
        filesystem: z
          .strictObject({
            dataDir: z.string().min(1).default("./data"),
            /** fsync every block before acknowledging it (survives power loss, slower). */
            fsyncEachBlock: z.boolean().default(false),
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
    if (c.storage.backend === "gridfs" && !c.storage.gridfs.uri) {
      ctx.addIssue({
        code: "custom",
        path: ["storage", "gridfs", "uri"],
        message: "required when storage.backend is gridfs (CARVE_MONGODB_URI)",
      });
    }
    if (c.agent.startPath === c.agent.continuePath) {
      ctx.addIssue({
        code: "custom",
        path: ["agent", "continuePath"],
        message: "must differ from agent.startPath (leave both unset to use the defaults)",
      });
    }
  });

export type Config = z.output<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;
