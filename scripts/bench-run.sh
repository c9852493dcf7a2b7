#!/usr/bin/env bash
# Benchmark (not a test): a trivial `run "true"` step end to end (sandbox,
# snapshot, diff, layer) with bake, buildah (--isolation chroot) and BuildKit
# (Debian's docker.io client /usr/bin/docker, whose BuildKit is built in;
# DOCKER_BUILDKIT=1, --network host), in one hyperfine
# run. Every tool starts from the same busybox base image, made offline by
# scripts/fixtures.sh and built by bake, and every run uses --no-cache, so
# the step really runs each time.
#
# bake runs the step twice: on its default private network (a namespace of
# its own served by slirp4netns) and with `network "host"`, to show what the
# private network costs. BASELINE=/path/to/an/older/bake adds that binary
# (with the same build file as the default run), to measure a change.
#
#   scripts/bench-run.sh            (as root; prints hyperfine's table)
#   BAKE_ONLY=1 scripts/bench-run.sh   (bake alone, without Docker and buildah)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
./scripts/install-deps.sh --bench
./scripts/fixtures.sh build busybox
cargo build --release --locked -q -p bake-cli
bake=$repo/target/release/bake
others=${BAKE_ONLY:-}
[[ -n $others ]] || eval "export $(./scripts/dockerd.sh start)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export BAKE_HOME=$work/home
fixture=$(./scripts/fixtures.sh path busybox)
"$bake" -f "$fixture/build.kdl" build -o "type=docker,dest=$work/busybox.tar" >/dev/null 2>&1
if [[ -z $others ]]; then
  docker load -i "$work/busybox.tar" >/dev/null
  buildah pull -q "docker-archive:$work/busybox.tar" >/dev/null
fi

mkdir -p "$work/ctx"
cat >"$work/ctx/build.kdl" <<'KDL'
image "trivial" from="busybox" {
    run "true"
}
KDL
cat >"$work/ctx/host.kdl" <<'KDL'
image "trivial" from="busybox" {
    run "true" {
        network "host"
    }
}
KDL
cat >"$work/ctx/Dockerfile" <<'DOCKERFILE'
FROM busybox:latest
RUN true
DOCKERFILE

cd "$work/ctx"
commands=(-n bake "$bake build --no-cache" -n 'bake (network host)' "$bake -f host.kdl build --no-cache")
if [[ -n ${BASELINE:-} ]]; then
  commands+=(-n 'bake (baseline)' "$BASELINE build --no-cache")
fi
if [[ -z $others ]]; then
  commands+=(-n 'buildah (chroot)' "buildah bud --isolation chroot --no-cache -q -t bench-trivial .")
  commands+=(-n 'BuildKit' "DOCKER_BUILDKIT=1 /usr/bin/docker build --no-cache --network host -q -t bench-trivial .")
fi
hyperfine --warmup 3 --runs "${RUNS:-30}" --export-json "$work/result.json" "${commands[@]}"
# Medians and their ratios to bake's.
python3 - "$work/result.json" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
base = next(r["median"] for r in results if r["command"] == "bake")
print("| tool | median | ratio to bake |")
print("| --- | ---: | ---: |")
for r in results:
    print(f"| {r['command']} | {r['median'] * 1000:.1f} ms | {r['median'] / base:.1f}x |")
PY
