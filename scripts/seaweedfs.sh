#!/usr/bin/env bash
# seaweedfs.sh - build and cache the SeaweedFS `weed` binary the S3 tests run (`weed mini`, S3 on loopback).
#
# SeaweedFS (Apache-2.0) is built from its Go module: `go install` refuses it because its go.mod has a
# replace directive, so the module is downloaded with `go mod download`, copied to a writable place and
# built there with `go build ./weed`. The first build takes 10 to 30 minutes on two cores; the binary is
# then kept under the install root and every later `install` returns at once.
#
# Usage:
#   scripts/seaweedfs.sh install     # idempotent; prints the path of the weed binary
#   scripts/seaweedfs.sh path        # prints that path if installed, else exits 1
#
# The test helper test/support/seaweedfs.ts starts and stops instances itself (each with its own ports).
#
# Environment:
#   SEAWEEDFS_HOME   install root (default: $HOME/.cache/osquery-carve-server)
#   SEAWEEDFS_WEED   use this weed binary instead of building one (must run `weed version`)
set -euo pipefail

# --- versions and paths -------------------------------------------------------------------------
SEAWEEDFS_MODULE="github.com/seaweedfs/seaweedfs"
SEAWEEDFS_VERSION="v0.0.0-20261109003541-7506e5f91cd6"
SEAWEEDFS_HOME="${SEAWEEDFS_HOME:-$HOME/.cache/osquery-carve-server}"
PREFIX="$SEAWEEDFS_HOME/seaweedfs/$SEAWEEDFS_VERSION"   # versioned so an upgrade rebuilds
WEED="$PREFIX/weed"
# An earlier manual build of the same version (same recipe) that may already sit on a machine.
PREP_WEED="$SEAWEEDFS_HOME/seaweedfs-prep/weed"

log() { printf 'seaweedfs: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

# True if the binary runs (a truncated copy or a binary for another platform does not).
weed_runs() {
  [[ -x "$1" ]] && "$1" version >/dev/null 2>&1
}

installed() {
  [[ -f "$PREFIX/.installed" && "$(cat "$PREFIX/.installed")" == "$SEAWEEDFS_VERSION" ]] && weed_runs "$WEED"
}

# Go is needed only to build. Debian's golang-go is older than the module's go directive, but the go
# command then fetches the toolchain it asks for from the Go module proxy (GOTOOLCHAIN=auto).
ensure_go() {
  command -v go >/dev/null 2>&1 && return 0
  [[ -x /usr/local/go/bin/go ]] && { export PATH="$PATH:/usr/local/go/bin"; return 0; }
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing golang-go with apt-get"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >&2
  else
    die "need the go command on PATH to build SeaweedFS"
  fi
}

# Put a binary in place atomically: a concurrent reader sees the old one or the whole new one.
place() {
  cp -f "$1" "$WEED.tmp"
  chmod +x "$WEED.tmp"
  mv -f "$WEED.tmp" "$WEED"
  echo "$SEAWEEDFS_VERSION" >"$PREFIX/.installed"
}

do_install() {
  if [[ -n "${SEAWEEDFS_WEED:-}" ]]; then
    weed_runs "$SEAWEEDFS_WEED" || die "SEAWEEDFS_WEED=$SEAWEEDFS_WEED does not run"
    echo "$SEAWEEDFS_WEED"
    return 0
  fi
  if installed; then
    echo "$WEED"
    return 0
  fi
  # Serialize concurrent installs (two test files on a fresh machine), then re-check.
  mkdir -p "$PREFIX"
  exec 9>"$PREFIX/.install.lock"
  flock 9
  if installed; then
    echo "$WEED"
    return 0
  fi
  if weed_runs "$PREP_WEED"; then
    log "reusing the earlier build at $PREP_WEED"
    place "$PREP_WEED"
    echo "$WEED"
    return 0
  fi

  ensure_go
  local started=$SECONDS build="$PREFIX/build" json dir
  rm -rf "$build"
  mkdir -p "$build"
  log "downloading $SEAWEEDFS_MODULE@$SEAWEEDFS_VERSION from the Go module proxy"
  json="$(cd "$build" && go mod download -json "$SEAWEEDFS_MODULE@$SEAWEEDFS_VERSION")" \
    || { printf '%s\n' "$json" >&2; die "go mod download failed"; }
  dir="$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' | head -n1)"
  [[ -n "$dir" && -f "$dir/go.mod" ]] || { printf '%s\n' "$json" >&2; die "no module directory in the download reply"; }
  # The module cache is read-only, and go honours replace directives only in the main module: the copy is
  # writable and is its own main module.
  cp -r "$dir" "$build/src"
  chmod -R u+w "$build/src"
  log "building weed (10 to 30 minutes the first time; log in $build/build.log)"
  (cd "$build/src" && GOFLAGS=-buildvcs=false go build -o "$build/weed" ./weed) \
    >"$build/build.log" 2>&1 || { tail -n 40 "$build/build.log" >&2; die "go build ./weed failed"; }
  weed_runs "$build/weed" || die "the built weed does not run"
  place "$build/weed"
  rm -rf "$build"
  log "built in $((SECONDS - started))s"
  echo "$WEED"
}

do_path() {
  if [[ -n "${SEAWEEDFS_WEED:-}" ]]; then
    weed_runs "$SEAWEEDFS_WEED" && { echo "$SEAWEEDFS_WEED"; return 0; }
    exit 1
  fi
  installed || exit 1
  echo "$WEED"
}

# --- main ---------------------------------------------------------------------------------------
cmd="${1:-}"
shift || true
case "$cmd" in
  install) do_install ;;
  path) do_path ;;
  *) usage ;;
esac
