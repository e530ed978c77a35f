# syntax=docker/dockerfile:1
# osquery-carve-server container image.
#
#   docker build -t osquery-carve-server .
#   docker run --rm -p 127.0.0.1:8000:8000 osquery-carve-server          # filesystem storage in /data
#
# Agents must reach it only through the mutual-TLS front (nginx/, docker-compose.yml): the service trusts the
# client-certificate headers of the addresses in CARVE_TRUSTED_PROXIES and of nothing else.

ARG NODE_IMAGE=node:20-bookworm-slim

# --- build: all dependencies, compile TypeScript ------------------------------------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY scripts ./scripts
COPY console ./console
RUN npm run build

# --- deps: production dependencies only -----------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

# --- runtime: compiled service + production node_modules, as the unprivileged "node" user --------------------------
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production \
    CARVE_HOST=0.0.0.0 \
    CARVE_PORT=8000 \
    CARVE_DATA_DIR=/data
WORKDIR /app
COPY --from=deps --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /app/dist/src ./dist/src
COPY --from=build --chown=root:root /app/dist/console ./dist/console
COPY --chown=root:root package.json ./
COPY --chown=root:root conf/carve-server.yml ./conf/carve-server.yml
# The code is root-owned and read-only to the service; only the data directory is its own.
RUN mkdir -p /data && chown node:node /data
VOLUME ["/data"]
USER node
EXPOSE 8000
# GET /status is liveness (GET /ready would also report storage health).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.CARVE_PORT || 8000) + '/status').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# node as PID 1 handles SIGTERM itself (graceful shutdown, CARVE_SHUTDOWN_GRACE_SECONDS). --optimize-for-size
# on the command line: V8 sizes its young generation when it starts (src/main.ts).
CMD ["node", "--optimize-for-size", "dist/src/main.js"]
