#!/usr/bin/env bash
# Runs bake's main job on every example: check it, then build it.
#
# There is no Docker Hub here, so the base images the examples name
# (busybox, debian:bookworm-slim, gcc:12, golang:1.19) are made offline first
# and built by bake into the local store, under those names (see
# fixtures/README.md). Building runs `run` steps in bake's sandbox: as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/fixtures.sh
cargo build --locked --quiet -p bake-cli
bake=$PWD/target/debug/bake

echo "== base images (fixtures)"
for name in busybox debian; do
  "$bake" -f "$(./scripts/fixtures.sh path "$name")/build.kdl" build
done
for name in gcc golang; do
  "$bake" -f "fixtures/$name/build.kdl" build
done

for dir in examples/*/; do
  echo "== ${dir}"
  "$bake" -C "$dir" check
  "$bake" -C "$dir" build
done
