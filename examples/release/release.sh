#!/usr/bin/env bash
# The release pipeline a CI system runs for this project, on every tag:
#
#   1. check    load and lint build.kdl
#   2. test     build the `test` stage (vet + unit tests); keep the report
#   3. release  build the image and push it as VERSION and latest
#
# with the build cache shared between CI machines through the registry:
# every build reads it (--cache-from) and adds to it (--cache-to), so a
# runner that has never built this project still reuses what others did.
#
# Usage:
#   REGISTRY=registry.example.com VERSION=1.2.3 ./release.sh
#
# Environment:
#   REGISTRY  where the image goes: REGISTRY/acme/app:VERSION and :latest
#   VERSION   the release's version
#   CACHE     the remote cache reference (default REGISTRY/acme/app-cache:build);
#             set it empty to build with the local cache only
#   BAKE      the bake binary (default: bake on PATH)
#   SIGN_KEY  a PEM ECDSA P-256 private key: sign the pushed image with it
#             (sigstore format, under the image's sha256-<hex>.sig tag)
set -euo pipefail
cd "$(dirname "$0")"

: "${REGISTRY:?set REGISTRY, e.g. REGISTRY=registry.example.com}"
: "${VERSION:?set VERSION, e.g. VERSION=1.2.3}"
bake=${BAKE:-bake}
cache_ref=${CACHE-$REGISTRY/acme/app-cache:build}

args=(--set "REGISTRY=$REGISTRY" --set "VERSION=$VERSION")
cache=()
if [[ -n $cache_ref ]]; then
  cache=(--cache-from "$cache_ref" --cache-to "$cache_ref")
fi
sign=()
if [[ -n ${SIGN_KEY:-} ]]; then
  sign=(--sign "key=$SIGN_KEY")
fi

echo "--- check"
"$bake" check "${args[@]}"

echo "--- test"
"$bake" build test-report "${args[@]}" "${cache[@]}"
cat dist/test-report.txt

echo "--- release $VERSION"
"$bake" build app --push "${args[@]}" "${cache[@]}" "${sign[@]}"
