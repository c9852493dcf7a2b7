#!/usr/bin/env bash
# Runs bake's main job on every example: check it, then build it.
#
# There is no Docker Hub here, so the base images the examples name
# (busybox, debian:bookworm-slim, gcc:12, golang:1.19) are made offline
# (scripts/fixtures.sh, fixtures/README.md) and pushed to a throwaway local
# registry, under their Docker Hub names; bake is given a config file that
# serves docker.io from that registry, so every example's build.kdl reads
# exactly as it would on a machine with internet access. The examples are
# built into your usual store (BAKE_HOME), which keeps the base images they
# pulled: later builds of the examples need no registry.
#
# As root: `run` steps use namespaces and overlayfs, and the fixtures need
# debootstrap the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/fixtures.sh
cargo build --locked --quiet -p bake-cli
bake=${CARGO_TARGET_DIR:-$PWD/target}/debug/bake

work=$(mktemp -d "${TMPDIR:-/tmp}/bake-examples.XXXXXX")
registry=
cleanup() {
  if [[ -n $registry ]]; then ./scripts/registry.sh stop "$registry" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
registry=$(./scripts/registry.sh start | sed -n 's/^REGISTRY=//p')

echo "== base images, published to $registry as a mirror of docker.io"
BAKE=$bake ./scripts/fixtures.sh publish "$registry" >"$work/publish.log" 2>&1 || {
  cat "$work/publish.log" >&2
  exit 1
}
printf 'registry "docker.io" {\n    mirror "%s"\n}\n' "$registry" >"$work/config.kdl"
export BAKE_CONFIG=$work/config.kdl

for dir in examples/*/; do
  echo "== ${dir}"
  "$bake" -C "$dir" check
  "$bake" -C "$dir" build
done
