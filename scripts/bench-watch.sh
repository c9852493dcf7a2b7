#!/usr/bin/env bash
# Benchmark (not a test): the development loop on examples/devloop. The time
# from saving a file to the restarted container serving the change, for a
# template edit (a copy, no compile) and a Go edit (a recompile):
#
#   - bake:     `bake watch --run devloop` running in the background; each
#               measured command edits the file and polls the server;
#   - BuildKit: each measured command edits the file, runs `docker build`
#               (Debian's docker.io 20.10, DOCKER_BUILDKIT=1) and replaces
#               the container (`docker rm -f`, `docker run -d --network
#               host`), then polls, as a watch script around Docker would.
#
# The Dockerfile is the same build as build.kdl, with a BuildKit cache mount
# for Go's build cache. Every edit writes a new value, so every run is a change.
#
#   scripts/bench-watch.sh        (as root; prints a Markdown table of medians)
set -euo pipefail
# shellcheck source=scripts/bench-setup.sh
source "$(dirname "$0")/bench-setup.sh"
watch_pid=
cleanup() {
  [ -n "$watch_pid" ] && kill "$watch_pid" 2>/dev/null || true
  $docker rm -f bench-devloop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

load_bases docker golang

for tool in bake docker; do
  mkdir -p "$work/$tool"
  cp -r examples/devloop/. "$work/$tool/"
done
cat >"$work/docker/Dockerfile" <<'DOCKERFILE'
FROM golang:1.19 AS build
WORKDIR /src
ENV CGO_ENABLED=0
COPY go.mod main.go ./
RUN --mount=type=cache,target=/root/.cache/go-build go build -o /out/server .

FROM scratch
COPY --from=build /out/server /server
COPY templates /templates
EXPOSE 8080
ENTRYPOINT ["/server", "-templates", "/templates"]
CMD ["-port", "8080"]
DOCKERFILE

# edit.sh DIR KIND: a new value in a template or in main.go; prints it.
cat >"$work/edit.sh" <<'SH'
#!/bin/sh
set -e
value="v$(date +%s%N)"
case "$2" in
  template) sed -i "s|<h1[^>]*>|<h1 data-v=\"$value\">|" "$1/templates/index.html" ;;
  go) sed -i "s|^const greeting = .*|const greeting = \"Hello $value\"|" "$1/main.go" ;;
esac
echo "$value"
SH
# wait.sh PORT VALUE: polls until the page shows VALUE (60 s at most).
cat >"$work/wait.sh" <<'SH'
#!/bin/sh
i=0
until curl -fs "http://127.0.0.1:$1/" 2>/dev/null | grep -q "$2"; do
  i=$((i + 1)); [ "$i" -gt 6000 ] && exit 1
  sleep 0.01
done
SH
chmod +x "$work/edit.sh" "$work/wait.sh"

# bake watch in the background, on port 18081.
(cd "$work/bake" && exec "$bake" watch --run devloop -- -port 18081) >"$work/watch.log" 2>&1 &
watch_pid=$!
"$work/wait.sh" 18081 "devloop" || { cat "$work/watch.log"; exit 1; }

# Docker's first build and container, on port 18082.
(cd "$work/docker" && DOCKER_BUILDKIT=1 $docker build --network host -q -t bench-devloop . >/dev/null)
$docker run -d --name bench-devloop --network host bench-devloop -port 18082 >/dev/null
"$work/wait.sh" 18082 "devloop"

docker_cycle="cd $work/docker && DOCKER_BUILDKIT=1 $docker build --network host -q -t bench-devloop . >/dev/null && $docker rm -f bench-devloop >/dev/null && $docker run -d --name bench-devloop --network host bench-devloop -port 18082 >/dev/null"
results=$work/results
mkdir -p "$results"
for kind in template go; do
  hyperfine --style basic --warmup 1 --runs "${RUNS:-10}" --export-json "$results/$kind.json" \
    -n bake "$work/wait.sh 18081 \$($work/edit.sh $work/bake $kind)" \
    -n 'BuildKit + docker run' "v=\$($work/edit.sh $work/docker $kind) && $docker_cycle && $work/wait.sh 18082 \$v" >&2
done

python3 - "$results" <<'PY'
import json, os, sys
d = sys.argv[1]
print("| change | bake watch | BuildKit + docker run | ratio |")
print("| --- | ---: | ---: | ---: |")
for kind, label in [("template", "template (copy only)"), ("go", "Go source (recompile)")]:
    r = {x["command"]: x["median"] for x in json.load(open(os.path.join(d, kind + ".json")))["results"]}
    b, k = r["bake"], r["BuildKit + docker run"]
    print(f"| {label} | {b * 1000:.0f} ms | {k * 1000:.0f} ms | {k / b:.1f}x |")
PY
