#!/usr/bin/env bash
# build.sh - compiles src/ and scripts/ into dist/ (tsc -p tsconfig.build.json), bundles the web console
# (console/, Preact + src/client/api-client.ts, with esbuild) into dist/console/, and records when.
#
# Usage:
#   scripts/build.sh             # always compile (npm run build, npm test)
#   scripts/build.sh --if-stale  # compile only when something under src/, scripts/ or console/, a tsconfig or the
#                                # lock file changed since the last successful build (npm start, npm run
#                                # emulate, npm run cleanup, npm run import-seed): a fresh dist/ costs no time
#
# The record is dist/.build-stamp, written only after tsc succeeded; its time is the moment the build
# STARTED, so a file edited during a build makes the next run compile again. A clean clone has no dist/,
# hence no stamp: the first run always compiles.
set -euo pipefail
cd "$(dirname "$0")/.."

stamp=dist/.build-stamp
if [ "${1:-}" = "--if-stale" ] && [ -f "$stamp" ]; then
  changed=$(find src scripts console tsconfig.json tsconfig.build.json package-lock.json -newer "$stamp" -print -quit 2>/dev/null || true)
  if [ -z "$changed" ]; then
    echo "build: dist/ is up to date" >&2
    exit 0
  fi
  echo "build: $changed changed since the last build: compiling" >&2
else
  echo "build: compiling" >&2
fi
mkdir -p dist
started=$(mktemp dist/.build-started.XXXXXX)
# The console: one ES module and one stylesheet, minified, no source maps (the service serves exactly the files
# in dist/console; test/console/console-assets.test.ts holds them under 150 KB gzipped).
build_console() {
  [ -d console ] || return 0 # a tree without the console (test/cli/build-freshness.test.ts builds a small copy)
  rm -rf dist/console
  mkdir -p dist/console
  node_modules/.bin/esbuild console/src/main.tsx --bundle --minify --format=esm --platform=browser --target=es2022 \
    --tsconfig=console/tsconfig.json --outfile=dist/console/app.js --log-level=warning
  node_modules/.bin/esbuild console/console.css --minify --outfile=dist/console/console.css --log-level=warning
  cp console/index.html dist/console/index.html
}
if node_modules/.bin/tsc -p tsconfig.build.json && build_console; then
  # The package's commands (package.json "bin") run as programs: tsc keeps their #! line, not an execute bit.
  if [ -f dist/src/cli/carvectl.js ]; then chmod +x dist/src/cli/carvectl.js; fi
  mv "$started" "$stamp"
else
  rm -f "$started"
  exit 1
fi
