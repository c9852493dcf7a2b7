#!/usr/bin/env bash
# Runs bake's main job on every example: load, check and plan each build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet -p bake-cli
bake=target/debug/bake
for dir in examples/*/; do
  echo "== ${dir}"
  "$bake" -C "$dir" check
  "$bake" -C "$dir" build --dry-run
done
