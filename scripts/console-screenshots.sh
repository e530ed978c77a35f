#!/usr/bin/env bash
# console-screenshots.sh - regenerates docs/console-list.png and docs/console-carve.png, the README's pictures
# of the web console: builds, then drives headless Chromium (/usr/bin/chromium, apt-get install chromium)
# against a live service with the Vault double and emulated agents (test/console/screenshots.ts).
#
# Usage: scripts/console-screenshots.sh      (or npm run screenshots)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
node_modules/.bin/vitest run --config test/console/screenshots.config.ts
