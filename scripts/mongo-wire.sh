#!/usr/bin/env bash
# mongo-wire.sh - install, start and stop a local MongoDB-wire-protocol server for the tests.
#
# The server is mongo-java-server (de.bwaldvogel, BSD licence) with its H2 (MVStore) backend, taken
# from Maven Central and run by a small launcher compiled here. FerretDB v1.x was the first choice,
# but the Go module proxy refuses the module github.com/FerretDB/FerretDB outright (HTTP 403 "This
# module version is not available" for @v/list and for v1.24.1), so it cannot be installed here.
#
# Usage:
#   scripts/mongo-wire.sh install          # idempotent; prints the path of the server launcher
#   scripts/mongo-wire.sh start DIR PORT   # starts one instance, state in DIR; prints mongodb://127.0.0.1:PORT/
#   scripts/mongo-wire.sh stop DIR         # stops that instance (TERM, then KILL); idempotent
#   scripts/mongo-wire.sh status DIR       # exit 0 and print the pid if the instance runs
#
# Files under DIR: data.mv.db (H2 store, kept across restarts), server.log, server.pid.
#
# Environment:
#   MONGO_WIRE_HOME          install root (default: $HOME/.cache/osquery-carve-server)
#   MONGO_WIRE_BACKEND       h2 (default, on disk in DIR) or memory (nothing kept after stop)
#   MONGO_WIRE_XMX           JVM heap limit (default 1g)
#   MONGO_WIRE_JAVA_OPTS     extra JVM options (unquoted, split on spaces)
#   MONGO_WIRE_START_TIMEOUT seconds to wait for the port (default 30)
#   MONGO_WIRE_STOP_TIMEOUT  seconds between SIGTERM and SIGKILL (default 5)
set -euo pipefail

# --- versions and paths -------------------------------------------------------------------------
MJS_VERSION="1.47.0"          # de.bwaldvogel:mongo-java-server-*; the launcher announces MongoDB 5.0 (wire 13)
SLF4J_VERSION="2.0.17"        # same slf4j-api as mongo-java-server-core; slf4j-simple logs to stderr
MONGO_WIRE_HOME="${MONGO_WIRE_HOME:-$HOME/.cache/osquery-carve-server}"
PREFIX="$MONGO_WIRE_HOME/mongo-java-server-$MJS_VERSION"   # versioned so an upgrade reinstalls
BIN_DIR="$MONGO_WIRE_HOME/bin"
LAUNCHER="$BIN_DIR/mongo-wire-server"                       # what `install` prints
LAUNCHER_CLASS="CarveMongoWireServer"

log() { printf 'mongo-wire: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

# --- install ------------------------------------------------------------------------------------

# Make sure java (17+), javac and mvn exist; on a bare Debian machine (we run as root there) install them.
ensure_toolchain() {
  local missing=()
  command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
  command -v javac >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
      log "installing ${missing[*]} with apt-get"
      apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    else
      die "need java 17+, javac and mvn on PATH (missing: ${missing[*]})"
    fi
  fi
}

# The launcher: binds mongo-java-server to HOST:PORT, writes its pid once listening, prints READY,
# and shuts down cleanly (flushing the H2 store) on SIGTERM via a shutdown hook.
write_launcher_source() {
  cat <<'JAVA'
import de.bwaldvogel.mongo.MongoBackend;
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.ServerVersion;
import de.bwaldvogel.mongo.backend.h2.H2Backend;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import de.bwaldvogel.mongo.bson.Document;
import io.netty.channel.Channel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.List;

/** Usage: CarveMongoWireServer HOST PORT h2|memory DIR */
public final class CarveMongoWireServer {
    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: CarveMongoWireServer HOST PORT h2|memory DIR");
            System.exit(2);
        }
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        Path dir = Path.of(args[3]).toAbsolutePath();
        Files.createDirectories(dir);

        MongoBackend backend;
        switch (args[2]) {
            case "h2": backend = new CommittingH2Backend(dir.resolve("data.mv.db").toString()); break;
            case "memory": backend = new MemoryBackend(); break;
            default: throw new IllegalArgumentException("unknown backend " + args[2]);
        }
        // The mongodb Node driver 7.x refuses servers below wire version 9 (MongoDB 4.4), and the
        // library's own MONGO_5_0 constant announces wire version 8, so announce MongoDB 5.0 with
        // its real wire version (13). The emulated semantics are those of the MONGO_5_0 mode.
        backend.version(new MongoVersion() {
            @Override public List<Integer> getVersionArray() { return ServerVersion.MONGO_5_0.getVersionArray(); }
            @Override public int getWireVersion() { return 13; }
        });

        MongoServer server = new MongoServer(backend);
        server.bind(host, port); // throws (and the JVM exits non-zero) if the port is taken

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.err.println("mongo-wire: shutting down");
            server.shutdownNow(); // closes clients and the backend (H2 store is committed and closed)
            System.err.println("mongo-wire: stopped");
        }, "shutdown"));

        // Write the pid atomically so the shell script never reads a half-written file.
        Path pidTmp = dir.resolve("server.pid.tmp");
        Files.writeString(pidTmp, ProcessHandle.current().pid() + "\n");
        Files.move(pidTmp, dir.resolve("server.pid"), StandardCopyOption.REPLACE_EXISTING,
                StandardCopyOption.ATOMIC_MOVE);
        System.err.println("mongo-wire: READY " + server.getConnectionString() + " backend=" + args[2]
                + " dir=" + dir);
        Thread.currentThread().join(); // netty threads serve; main just waits for the shutdown hook
    }

    /**
     * Left alone, the H2 backend only wrote its MVStore at shutdown: a SIGKILL lost every write since
     * start. Committing after each command makes every acknowledged write survive a crash of this
     * process (it reaches the OS, no fsync). A commit with nothing changed is a no-op.
     */
    static final class CommittingH2Backend extends H2Backend {
        CommittingH2Backend(String file) {
            super(file);
        }

        @Override
        public Document handleCommand(Channel channel, String database, String command, Document query) {
            try {
                return super.handleCommand(channel, database, command, query);
            } finally {
                commit();
            }
        }
    }
}
JAVA
}

# The executable `install` prints (and `start` runs): exec keeps the JVM's pid. slf4j-simple logs at INFO
# with timestamps to stderr, which `start` sends to DIR/server.log. C1-only JIT: faster start-up, and no
# slower for this workload. MONGO_WIRE_JAVA_OPTS adds JVM options at run time.
write_wrapper() {
  cat <<SH
#!/usr/bin/env bash
# Generated by scripts/mongo-wire.sh install: runs mongo-java-server $MJS_VERSION.
# Usage: mongo-wire-server HOST PORT h2|memory DIR
exec java -Xmx"\${MONGO_WIRE_XMX:-1g}" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \\
  -Dorg.slf4j.simpleLogger.defaultLogLevel=info -Dorg.slf4j.simpleLogger.showDateTime=true \\
  -Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd\'T\'HH:mm:ss.SSSZ \\
  \${MONGO_WIRE_JAVA_OPTS:-} -cp "$PREFIX/classes:$PREFIX/lib/*" $LAUNCHER_CLASS "\$@"
SH
}

# Fingerprint of what an install produces: a changed launcher or version triggers a rebuild.
install_stamp() {
  { echo "$MJS_VERSION $SLF4J_VERSION"; write_launcher_source; write_wrapper; } | sha256sum | cut -d' ' -f1
}

do_install() {
  local stamp
  stamp="$(install_stamp)"
  # Fast path: a previous install of exactly this launcher and version is there.
  if [[ -x "$LAUNCHER" && -f "$PREFIX/.installed" && "$(cat "$PREFIX/.installed")" == "$stamp" ]]; then
    echo "$LAUNCHER"
    return 0
  fi
  # Serialize concurrent installs (e.g. two `start`s at once on a fresh machine), then re-check.
  mkdir -p "$MONGO_WIRE_HOME"
  exec 9>"$MONGO_WIRE_HOME/.install.lock"
  flock 9
  if [[ -x "$LAUNCHER" && -f "$PREFIX/.installed" && "$(cat "$PREFIX/.installed")" == "$stamp" ]]; then
    echo "$LAUNCHER"
    return 0
  fi
  ensure_toolchain

  local build="$PREFIX/build"
  rm -rf "$PREFIX"
  mkdir -p "$build" "$PREFIX/lib" "$PREFIX/classes" "$BIN_DIR"

  # A throw-away pom lets Maven resolve the whole runtime dependency closure from Maven Central and copy it.
  cat >"$build/pom.xml" <<POM
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.osquery-carve-server</groupId>
  <artifactId>mongo-wire-deps</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>de.bwaldvogel</groupId><artifactId>mongo-java-server-h2-backend</artifactId><version>$MJS_VERSION</version></dependency>
    <dependency><groupId>de.bwaldvogel</groupId><artifactId>mongo-java-server-memory-backend</artifactId><version>$MJS_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId><version>$SLF4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
  log "resolving mongo-java-server $MJS_VERSION from Maven Central"
  local out
  out="$(mvn -B -q -Dstyle.color=never -f "$build/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$PREFIX/lib" 2>&1)" \
    || { printf '%s\n' "$out" >&2; die "mvn dependency:copy-dependencies failed"; }

  # Compile the launcher against the copied jars.
  write_launcher_source >"$build/$LAUNCHER_CLASS.java"
  javac -d "$PREFIX/classes" -cp "$PREFIX/lib/*" "$build/$LAUNCHER_CLASS.java" >&2 \
    || die "javac failed"

  write_wrapper >"$LAUNCHER.tmp"
  chmod +x "$LAUNCHER.tmp"
  mv -f "$LAUNCHER.tmp" "$LAUNCHER"
  rm -rf "$build"
  echo "$stamp" >"$PREFIX/.installed"
  echo "$LAUNCHER"
}

# --- start / stop -------------------------------------------------------------------------------

# True if PID exists and is not a zombie (an unreaped zombie still answers kill -0).
pid_alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# Print the pid recorded in DIR/server.pid if that process is alive and really is our server for DIR.
running_pid() {
  local dir="$1" pid
  [[ -f "$dir/server.pid" ]] || return 1
  pid="$(tr -dc '0-9' <"$dir/server.pid")"
  [[ -n "$pid" ]] || return 1
  pid_alive "$pid" || return 1
  # Guard against a recycled pid: the command line must name our launcher class and this DIR.
  local cmdline
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *" $LAUNCHER_CLASS "*" $dir "* ]] || return 1
  echo "$pid"
}

# True if something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

do_start() {
  local dir="${1:-}" port="${2:-}"
  [[ -n "$dir" && -n "$port" ]] || usage
  if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
    die "bad port: $port"
  fi
  local backend="${MONGO_WIRE_BACKEND:-h2}"
  [[ "$backend" == h2 || "$backend" == memory ]] || die "MONGO_WIRE_BACKEND must be h2 or memory"
  local timeout="${MONGO_WIRE_START_TIMEOUT:-30}"

  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd -P)"   # absolute, so the pid check and the server agree on it

  local pid
  if pid="$(running_pid "$dir")"; then
    die "an instance already runs for $dir (pid $pid); stop it first"
  fi
  rm -f "$dir/server.pid"
  if port_open "$port"; then
    die "127.0.0.1:$port is already in use"
  fi

  local launcher
  launcher="$(do_install)"

  # Detach: own session (a Ctrl-C or process-group kill aimed at the caller does not reach it), no stdin,
  # all output into DIR/server.log (appended across restarts). This script runs without job control, so
  # the background job is no process-group leader and setsid execs in place: $! is the server's pid.
  {
    printf '\n=== %s start port=%s backend=%s\n' "$(date -Is)" "$port" "$backend"
  } >>"$dir/server.log"
  setsid "$launcher" 127.0.0.1 "$port" "$backend" "$dir" </dev/null >>"$dir/server.log" 2>&1 &
  local child=$!

  # Wait until the server wrote its pid (it does so right after bind) and the port accepts connections.
  local deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    if ! pid_alive "$child"; then
      wait "$child" 2>/dev/null || true
      log "server exited during start-up; last lines of $dir/server.log:"
      tail -n 30 "$dir/server.log" >&2
      exit 1
    fi
    if running_pid "$dir" >/dev/null && port_open "$port"; then
      echo "mongodb://127.0.0.1:$port/"
      return 0
    fi
    sleep 0.2
  done
  log "server did not accept connections on 127.0.0.1:$port within ${timeout}s; last lines of $dir/server.log:"
  tail -n 30 "$dir/server.log" >&2
  kill -KILL "$child" 2>/dev/null || true
  rm -f "$dir/server.pid"
  exit 1
}

do_stop() {
  local dir="${1:-}"
  [[ -n "$dir" ]] || usage
  [[ -d "$dir" ]] || return 0           # nothing was ever started there
  dir="$(cd "$dir" && pwd -P)"
  local pid
  if ! pid="$(running_pid "$dir")"; then
    rm -f "$dir/server.pid"              # stale or absent: already stopped
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local waited=0 limit=$((${MONGO_WIRE_STOP_TIMEOUT:-5} * 10))
  while pid_alive "$pid" && ((waited < limit)); do
    sleep 0.1
    waited=$((waited + 1))
  done
  if pid_alive "$pid"; then
    log "pid $pid ignored SIGTERM for ${MONGO_WIRE_STOP_TIMEOUT:-5}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while pid_alive "$pid"; do sleep 0.1; done
  fi
  rm -f "$dir/server.pid"
}

do_status() {
  local dir="${1:-}"
  [[ -n "$dir" ]] || usage
  [[ -d "$dir" ]] || exit 1
  dir="$(cd "$dir" && pwd -P)"
  running_pid "$dir"
}

# --- main ---------------------------------------------------------------------------------------
cmd="${1:-}"
shift || true
case "$cmd" in
  install) do_install ;;
  start) do_start "$@" ;;
  stop) do_stop "$@" ;;
  status) do_status "$@" ;;
  *) usage ;;
esac
