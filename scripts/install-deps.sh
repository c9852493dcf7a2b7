#!/usr/bin/env bash
# Installs the Debian packages bake's tests use, and nothing when they are all
# there already (one dpkg-query call, well under a second).
#
# Usage: scripts/install-deps.sh [--bench]
#   --bench   also what the benchmarks compare against: hyperfine, buildah, pigz
#
# What the packages are for:
#   docker-registry       a real OCI registry (distribution v2) to push to and pull from
#   skopeo, umoci         real clients that check bake's OCI output
#   busybox-static        the busybox fixture image's only binary (scripts/fixtures.sh)
#   debootstrap           the Debian fixture image's root filesystem
#   debian-archive-keyring, ca-certificates
#                         debootstrap checks the mirror's signature, over HTTP(S)
#   docker.io             a real Docker engine that loads and runs what bake built
#                         (scripts/dockerd.sh)
#   slirp4netns           the userspace NAT of a `run` step's private network (the
#                         default `network "private"`); bake itself needs it too
#   python3-venv          the venv scripts/test.sh installs spdx-tools into (the
#                         SBOM tests validate with its pyspdxtools)
#   openssl               makes the ECDSA P-256 keys the signing tests sign with
#
# Needs root (or sudo) only when something is missing. `apt-get update` runs
# only when a missing package has no install candidate, or when installing
# from the present package lists fails (stale lists). Non-interactive: fine
# with CI=true and no stdin. Prints nothing unless it installs something.
set -euo pipefail

packages=(
  docker-registry skopeo umoci busybox-static debootstrap
  debian-archive-keyring ca-certificates docker.io slirp4netns python3-venv openssl
)
for arg in "$@"; do
  case $arg in
  --bench) packages+=(hyperfine buildah pigz) ;;
  -h | --help)
    sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"
    exit 0
    ;;
  *)
    echo "install-deps: unknown argument: $arg (try --help)" >&2
    exit 2
    ;;
  esac
done

# One dpkg-query for all: it prints a line for each package it knows (and
# fails for the ones it has never heard of, hence `|| true`).
declare -A installed=()
while read -r name status; do
  if [[ $status == installed ]]; then installed[$name]=1; fi
done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${packages[@]}" 2>/dev/null || true)
missing=()
for p in "${packages[@]}"; do
  [[ -n ${installed[$p]:-} ]] || missing+=("$p")
done
((${#missing[@]})) || exit 0

sudo=()
if ((EUID != 0)); then
  command -v sudo >/dev/null || {
    echo "install-deps: missing ${missing[*]}; run as root to install them" >&2
    exit 1
  }
  sudo=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
apt_get() {
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" </dev/null
}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
run() {
  "$@" >>"$log" 2>&1 || {
    cat "$log" >&2
    echo "install-deps: failed: $*" >&2
    return 1
  }
}

echo "install-deps: installing ${missing[*]}" >&2
updated=false
for p in "${missing[@]}"; do
  # "Candidate: (none)" or no output at all: the lists do not know it yet.
  if ! apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [^(]'; then
    run apt_get update
    updated=true
    break
  fi
done
if ! apt_get install --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
  $updated && {
    cat "$log" >&2
    exit 1
  }
  # Most often the lists are older than the mirror (404 on a .deb): refresh, retry.
  run apt_get update
  run apt_get install --no-install-recommends "${missing[@]}"
fi
