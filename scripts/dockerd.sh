#!/usr/bin/env bash
# Starts a real Docker engine for the tests that check bake's output with
# `docker load` / `docker run`, when none is answering already.
#
# Usage (as root):
#   scripts/dockerd.sh [start]   start dockerd unless one answers; prints
#                                DOCKER_HOST=unix:///... on stdout
#   scripts/dockerd.sh status    prints DOCKER_HOST=... if an engine answers
#   scripts/dockerd.sh stop      stop the dockerd this script started (only that
#                                one) and delete its log
#
# The engine is Debian's docker.io, started as
#   dockerd --iptables=false --bridge=none
# so it needs no iptables and makes no bridge: containers must be run with
# `--network host`. Its log goes to a temp file (printed when it fails to
# start); its data root is /var/lib/docker (BAKE_DOCKERD_DATA moves it) and its
# socket /var/run/docker.sock, where a plain `docker` looks. The pid and log
# path are kept in ${BAKE_DOCKERD_STATE:-/run/bake-dockerd}.
#
#   eval "export $(scripts/dockerd.sh)"
#   docker run --rm --network host IMAGE ...
set -euo pipefail

state=${BAKE_DOCKERD_STATE:-/run/bake-dockerd}
data=${BAKE_DOCKERD_DATA:-/var/lib/docker}
socket=/var/run/docker.sock
timeout=${BAKE_DOCKERD_TIMEOUT:-60} # seconds to wait for `docker info`

die() {
  echo "dockerd.sh: $*" >&2
  exit 1
}

answers() {
  DOCKER_HOST=$1 docker info >/dev/null 2>&1
}

# The pid of the dockerd this script started, if it still runs.
our_pid() {
  local pid
  pid=$(cat "$state/pid" 2>/dev/null) || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]] || return 1
  echo "$pid"
}

# Polls `docker info` every 0.1 s until it answers, dockerd exits, or $timeout.
wait_ready() {
  local pid=$1 log=$2 i
  for ((i = 0; i < timeout * 10; i++)); do
    answers "unix://$socket" && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$log" >&2
      die "dockerd exited while starting (log: $log)"
    fi
    sleep 0.1
  done
  tail -n 30 "$log" >&2
  die "dockerd did not answer within ${timeout}s (log: $log)"
}

start() {
  # An engine already answering (DOCKER_HOST, or the default socket) will do.
  if [[ -n ${DOCKER_HOST:-} ]] && answers "$DOCKER_HOST"; then
    echo "DOCKER_HOST=$DOCKER_HOST"
    return
  fi
  if answers "unix://$socket"; then
    echo "DOCKER_HOST=unix://$socket"
    return
  fi
  command -v dockerd >/dev/null || die "no dockerd: run scripts/install-deps.sh"
  ((EUID == 0)) || die "starting dockerd needs root"
  mkdir -p "$state"
  # Tests call this in parallel: one caller starts dockerd, the others wait
  # for it (two engines on one data root would corrupt each other's state).
  exec 9>"$state/lock"
  flock 9
  if answers "unix://$socket"; then
    echo "DOCKER_HOST=unix://$socket"
    return
  fi
  local pid log t0
  t0=$(date +%s%N)
  if pid=$(our_pid); then
    log=$(cat "$state/log") # started by an earlier call, still coming up
  else
    log=$(mktemp /tmp/bake-dockerd.XXXXXX.log)
    setsid dockerd --iptables=false --bridge=none --host="unix://$socket" \
      --data-root="$data" >"$log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$state/pid"
    echo "$log" >"$state/log"
  fi
  wait_ready "$pid" "$log"
  local ms=$((($(date +%s%N) - t0) / 1000000))
  printf 'dockerd.sh: dockerd (pid %s) answered after %d.%03ds; log: %s\n' \
    "$pid" $((ms / 1000)) $((ms % 1000)) "$log" >&2
  echo "DOCKER_HOST=unix://$socket"
}

stop() {
  local pid i
  if ! pid=$(our_pid); then
    rm -f "$state/pid" "$state/log"
    echo "dockerd.sh: no dockerd started by this script is running" >&2
    return
  fi
  kill -TERM "$pid"
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "dockerd.sh: dockerd (pid $pid) ignored SIGTERM for 30s; killing it" >&2
    kill -KILL "$pid"
  fi
  rm -f "$(cat "$state/log")" "$state/pid" "$state/log"
}

case ${1:-start} in
start) start ;;
stop) stop ;;
status)
  host=${DOCKER_HOST:-unix://$socket}
  answers "$host" || die "no Docker engine answers at $host"
  echo "DOCKER_HOST=$host"
  ;;
-h | --help | help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" ;;
*) die "unknown command: $1 (try --help)" ;;
esac
