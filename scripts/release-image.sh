#!/usr/bin/env bash
# Builds bake's own image from the root build.kdl, with bake, and runs
# `bake --version` inside it with a real Docker engine.
#
# Usage (as root, like the tests):
#   scripts/release-image.sh [debug|release]     default: release
#
# `debug` packs the binary `cargo test` already built (CI uses it: a release
# build of the workspace takes minutes on a small machine); `release` runs
# `cargo build --release -p bake-cli` first. The base image,
# debian:bookworm-slim, comes from a throwaway local registry that stands in
# for docker.io (scripts/fixtures.sh publish), as in the examples' tests.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${1:-release}
case $profile in
debug) cargo build --locked --quiet -p bake-cli ;;
release) cargo build --locked --quiet --release -p bake-cli ;;
*)
  echo "release-image: unknown profile: $profile (debug or release)" >&2
  exit 2
  ;;
esac
# build.kdl copies target/PROFILE/bake from its folder. When cargo builds
# elsewhere (CARGO_TARGET_DIR), build a copy of it in a folder that holds the
# binary at that path instead.
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
bake=$target/$profile/bake
version=$("$bake" --version | cut -d' ' -f2)
docker=docker
[[ -x /usr/bin/docker ]] && docker=/usr/bin/docker

work=$(mktemp -d "${TMPDIR:-/tmp}/bake-release-image.XXXXXX")
registry=
cleanup() {
  if [[ -n $registry ]]; then scripts/registry.sh stop "$registry" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

context=$PWD
if [[ $target != "$PWD/target" ]]; then
  context=$work/context
  mkdir -p "$context/target/$profile"
  cp build.kdl "$context/"
  ln "$bake" "$context/target/$profile/bake" 2>/dev/null || cp "$bake" "$context/target/$profile/bake"
fi

registry=$(scripts/registry.sh start | sed -n 's/^REGISTRY=//p')
BAKE=$bake scripts/fixtures.sh publish "$registry" debian >"$work/publish.log" 2>&1 || {
  cat "$work/publish.log" >&2
  exit 1
}
printf 'registry "docker.io" {\n    mirror "%s"\n}\n' "$registry" >"$work/config.kdl"

start=$SECONDS
BAKE_HOME=$work/home BAKE_CONFIG=$work/config.kdl "$bake" -C "$context" build \
  --set "PROFILE=$profile" --set "VERSION=$version" -o "type=docker,dest=$work/bake.tar"
eval "export $(scripts/dockerd.sh start)"
"$docker" load -i "$work/bake.tar" >/dev/null
said=$("$docker" run --rm --network host "bake:$version" --version)
[[ $said == "bake $version" ]] || {
  echo "release-image: \`bake --version\` in bake:$version said: $said" >&2
  exit 1
}
echo "release-image: bake:$version ($profile) says \"$said\"; built and checked in $((SECONDS - start))s"
