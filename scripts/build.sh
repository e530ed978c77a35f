#!/usr/bin/env bash
# build.sh - compiles src/ and scripts/ into dist/ (tsc -p tsconfig.build.json) and records when.
#
# Usage:
#   scripts/build.sh             # always compile (npm run build, npm test)
#   scripts/build.sh --if-stale  # compile only when something under src/ or scripts/, a tsconfig or the
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
  changed=$(find src scripts tsconfig.json tsconfig.build.json package-lock.json -newer "$stamp" -print -quit 2>/dev/null || true)
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
if node_modules/.bin/tsc -p tsconfig.build.json; then
  # The package's commands (package.json "bin") run as programs: tsc keeps their #! line, not an execute bit.
  if [ -f dist/src/cli/carvectl.js ]; then chmod +x dist/src/cli/carvectl.js; fi
  mv "$started" "$stamp"
else
  rm -f "$started"
  exit 1
fi
