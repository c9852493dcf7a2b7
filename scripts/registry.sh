#!/usr/bin/env bash
# Starts and stops throwaway OCI registries for scripts: Debian's
# docker-registry (distribution v2) on a free loopback port, storing into a
# temporary folder. (The Rust tests start their own through their harness.)
#
# Usage (no root needed):
#   scripts/registry.sh start          prints REGISTRY=127.0.0.1:PORT on stdout
#   scripts/registry.sh stop ADDR      stop that registry and delete its storage
#   scripts/registry.sh stop           stop every registry this script started
#   scripts/registry.sh list           the addresses of the ones still running
#
#   eval "$(scripts/registry.sh start)"
#   skopeo copy --dest-tls-verify=false oci:dir docker://$REGISTRY/library/x:1
#   scripts/registry.sh stop "$REGISTRY"
#
# Each registry lives in ${TMPDIR:-/tmp}/bake-registry.PORT/: config.yml,
# storage/, log, pid. No auth; deleting manifests and blobs is enabled.
# Loopback registries are plain HTTP, which bake and Docker accept without
# flags; skopeo needs --tls-verify=false.
set -euo pipefail

base=${TMPDIR:-/tmp}/bake-registry
timeout=20 # seconds to wait for /v2/ to answer

die() {
  echo "registry.sh: $*" >&2
  exit 1
}

# True when something accepts connections on 127.0.0.1:$1.
listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# True when the registry on port $1 answers GET /v2/ with 200.
answers() {
  local line
  {
    exec 3<>"/dev/tcp/127.0.0.1/$1" &&
      printf 'GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 &&
      read -r -t 2 line <&3 &&
      [[ $line == HTTP/1.?\ 200* ]]
  } 2>/dev/null
}

# The pid of the registry in folder $1, if it still runs.
pid_of() {
  local pid
  pid=$(cat "$1/pid" 2>/dev/null) || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == docker-registr* ]] || return 1
  echo "$pid"
}

start() {
  command -v docker-registry >/dev/null || die "no docker-registry: run scripts/install-deps.sh"
  local port dir pid i
  for _ in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 40000))
    listening "$port" && continue
    dir=$base.$port
    mkdir "$dir" 2>/dev/null || continue # another run took this port
    mkdir "$dir/storage"
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
EOF
    setsid docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/pid"
    for ((i = 0; i < timeout * 20; i++)); do
      if answers "$port"; then
        echo "REGISTRY=127.0.0.1:$port"
        return
      fi
      kill -0 "$pid" 2>/dev/null || break # most likely: the port was taken meanwhile
      sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      cat "$dir/log" >&2
      die "docker-registry did not answer on 127.0.0.1:$port within ${timeout}s"
    fi
    echo "registry.sh: docker-registry exited on port $port, trying another:" >&2
    tail -n 3 "$dir/log" >&2
    rm -rf "$dir"
  done
  die "could not start docker-registry on a free port"
}

stop_dir() {
  local dir=$1 pid i
  if pid=$(pid_of "$dir"); then
    kill -TERM "$pid"
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -rf "$dir"
}

case ${1:-} in
start) start ;;
stop)
  if [[ $# -ge 2 ]]; then
    port=${2##*:}
    [[ $port =~ ^[0-9]+$ && -d $base.$port ]] || die "no registry started by this script at $2"
    stop_dir "$base.$port"
  else
    for dir in "$base".*/; do
      if [[ -d $dir ]]; then stop_dir "${dir%/}"; fi
    done
  fi
  ;;
list)
  for dir in "$base".*/; do
    dir=${dir%/}
    if [[ -d $dir ]] && pid_of "$dir" >/dev/null; then echo "127.0.0.1:${dir##*.}"; fi
  done
  ;;
-h | --help | help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" ;;
*) die "usage: $0 start | stop [ADDR] | list (try --help)" ;;
esac
