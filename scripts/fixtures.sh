#!/usr/bin/env bash
# Builds the fixture base images' root filesystems, offline, and caches them
# outside the clone. The test machines have no Docker Hub, so the tests make
# their own `busybox` and `debian:bookworm` from Debian packages.
#
# Usage (as root; a cached fixture needs no root):
#   scripts/fixtures.sh [build [NAME...]]
#                                      build what is missing (a no-op when cached)
#   scripts/fixtures.sh verify         run a shell in each cached rootfs (chroot)
#   scripts/fixtures.sh path NAME      print NAME's folder (busybox | debian)
#   scripts/fixtures.sh inputs NAME    print what NAME's cache key is made of
#   scripts/fixtures.sh publish ADDR [IMAGE...]
#                                      bake the base images (busybox, debian,
#                                      gcc, golang: all by default) and push
#                                      them to the registry at ADDR (e.g.
#                                      127.0.0.1:5000) as ADDR/library/NAME:TAG
#   scripts/fixtures.sh emulation      install qemu-user-static and register
#                                      qemu-aarch64 with binfmt_misc (for
#                                      linux/arm64 `run` steps)
#   scripts/fixtures.sh gc             delete cached builds nothing points at
#
# busybox-arm64 and debian-arm64 are linux/arm64 trees, built only when
# named (`build busybox-arm64`) or when `publish` is asked for
# busybox-platforms or debian-platforms: the two-platform indexes pushed as
# library/busybox and library/debian in place of the single-platform ones.
#
# Cache layout, under ${BAKE_FIXTURES:-/var/cache/bake-fixtures}:
#   busybox-<key>/rootfs/       the root filesystem; never changed once made
#   busybox-<key>/build.kdl     copy of fixtures/busybox/build.kdl (refreshed)
#   busybox-<key>/inputs        the text <key> is the sha256 of
#   busybox -> busybox-<key>    what the last run of this script built or found
#   debian-<key>/...            the same for fixtures/debian
#   store/                      bake's store (BAKE_HOME) for `publish`: the
#                               images built from these trees and from
#                               fixtures/{gcc,golang}, kept between runs
# Bake an image with `bake -f "$BAKE_FIXTURES/busybox/build.kdl" build`: the
# build.kdl sits next to its rootfs, so the rootfs is inside the build context.
#
# <key> is the sha256 of everything the rootfs is made from: the recipe (the
# text of the shell functions below that make it, so editing a comment does
# not rebuild), the machine's architecture, the installed version of
# busybox-static or debootstrap, and for debian the mirror and suite. It does
# not track updates published on the mirror after the first build: delete the
# cache folder (or set BAKE_FIXTURES elsewhere) to take them.
#
# The Debian mirror is read at run time from apt's sources (sources.list,
# sources.list.d/*.list and deb822 *.sources): the first enabled `deb` entry
# for suite bookworm with component main. BAKE_DEBIAN_MIRROR overrides it.
# No mirror's host name is written in this repository.
set -euo pipefail
umask 022

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${BAKE_FIXTURES:-/var/cache/bake-fixtures}
[[ $cache == /* ]] || cache=$PWD/$cache
suite=bookworm
# Every file's mtime in a rootfs is set to this (Debian 12's release day), so
# the same inputs make the same tree, and so the same image layer.
epoch=1686355200
# Built by default; `known` adds the ones built only when named.
fixtures=(busybox debian)
known=(busybox debian busybox-arm64 debian-arm64)

die() {
  echo "fixtures: $*" >&2
  exit 1
}

# --- Debian mirror ----------------------------------------------------------

# Prints the URI of the first enabled apt source of Debian `$suite` `main`.
debian_mirror() {
  if [[ -n ${BAKE_DEBIAN_MIRROR:-} ]]; then
    echo "$BAKE_DEBIAN_MIRROR"
    return
  fi
  local files=() f
  # apt's own order: sources.list, then sources.list.d in name order.
  [[ -f /etc/apt/sources.list ]] && files+=(/etc/apt/sources.list)
  for f in /etc/apt/sources.list.d/*; do
    [[ -f $f && ($f == *.list || $f == *.sources) ]] && files+=("$f")
  done
  ((${#files[@]})) || die "no apt sources in /etc/apt"
  local uri
  uri=$(awk -v suite="$suite" '
    function has(list, word,   n, i, a) {
      n = split(list, a, /[ \t]+/)
      for (i = 1; i <= n; i++) if (a[i] == word) return 1
      return 0
    }
    function usable(uri) { return uri ~ /^(https?:\/\/|file:\/)/ }
    # deb822: evaluate the stanza collected so far, then forget it.
    function flush(   n, u) {
      if (has(f["types"], "deb") && tolower(f["enabled"]) != "no" &&
          has(f["suites"], suite) && has(f["components"], "main")) {
        n = split(f["uris"], u, /[ \t]+/)
        if (n >= 1 && usable(u[1])) { print u[1]; found = 1; exit }
      }
      delete f; key = ""
    }
    FNR == 1 && key != "" { flush() }
    FILENAME ~ /\.sources$/ {
      if ($0 ~ /^#/) next
      if ($0 ~ /^[ \t]*$/) { flush(); next }
      if ($0 ~ /^[ \t]/ && key != "") { f[key] = f[key] " " $0; next }
      i = index($0, ":"); if (!i) next
      key = tolower(substr($0, 1, i - 1))
      f[key] = substr($0, i + 1)
      gsub(/^[ \t]+|[ \t]+$/, "", f[key])
      next
    }
    {
      sub(/#.*/, "")
      if ($1 != "deb") next
      i = 2
      if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
      if ($(i + 1) != suite || !usable($i)) next
      for (j = i + 2; j <= NF; j++) if ($j == "main") { print $i; found = 1; exit }
    }
    END { if (!found && key != "") flush() }
  ' "${files[@]}")
  [[ -n $uri ]] || die "no apt source serves Debian $suite main (set BAKE_DEBIAN_MIRROR)"
  echo "$uri"
}

# --- recipes: what each rootfs is made of -----------------------------------
# The text of these functions is part of the cache key.

# Busybox: Debian's static binary, one symlink per applet, root and nobody.
make_busybox() {
  local root=$1 bin applet
  bin=$(readlink -f /bin/busybox)
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,home,var,dev,proc,sys}
  install -d -m 0700 "$root/root"
  install -d -m 1777 "$root/tmp"
  install -m 0755 "$bin" "$root/bin/busybox"
  for applet in $("$root/bin/busybox" --list-full); do
    [[ $applet == bin/busybox ]] && continue
    mkdir -p "$root/$(dirname "$applet")"
    ln -s /bin/busybox "$root/$applet"
  done
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' \
    'nobody:x:65534:65534:nobody:/home:/bin/false' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' >"$root/etc/group"
}

# qemu's user-mode emulators and their binfmt_misc registrations (root).
need_qemu() {
  if [[ $(dpkg-query -W -f='${Status}\n' qemu-user-static binfmt-support 2>/dev/null | grep -c 'ok installed') != 2 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support >/dev/null
  fi
}

# binfmt_misc mounted and qemu-aarch64 registered with the F flag, so arm64
# programs run in a chroot or a sandbox (root).
register_qemu() {
  need_qemu
  if [[ ! -e /proc/sys/fs/binfmt_misc/status ]]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
    update-binfmts --enable qemu-aarch64
  fi
  grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "qemu-aarch64 is registered without the F flag"
}

# Debian for linux/arm64: debootstrap's first stage here, its second stage
# inside the tree under qemu (binfmt_misc), then cleaned as make_debian does
# (written out again: make_debian's text is the amd64 tree's cache key).
make_debian_arm64() {
  local root=$1 mirror=$2 log=$3
  register_qemu
  interruptible debootstrap --variant=minbase --arch=arm64 --foreign \
    "$suite" "$root" "$mirror" >"$log" 2>&1 </dev/null || {
    tail -n 30 "$log" >&2
    die "debootstrap (first stage) failed (full log: $log)"
  }
  interruptible chroot "$root" /debootstrap/debootstrap --second-stage >>"$log" 2>&1 </dev/null || {
    tail -n 30 "$log" >&2
    die "debootstrap (second stage, under qemu) failed (full log: $log)"
  }
  find "$root/var/cache/apt" "$root/var/lib/apt/lists" -mindepth 1 -delete
  mkdir -p "$root/var/cache/apt/archives/partial"
  printf 'deb %s %s main\n' "$mirror" "$suite" >"$root/etc/apt/sources.list"
  rm -f "$root"/etc/{hostname,resolv.conf} "$root/var/lib/dbus/machine-id" \
    "$root/var/cache/ldconfig/aux-cache" "$root"/var/cache/debconf/*-old \
    "$root"/var/lib/dpkg/*-old "$root/var/log/bootstrap.log"
  if [[ -e $root/etc/machine-id ]]; then : >"$root/etc/machine-id"; fi
  find "$root/var/log" -type f -exec truncate -s 0 {} +
}

# Busybox for linux/arm64: Debian's arm64 busybox-static of the version the
# host has (fetched with apt, as a foreign architecture), its applets listed
# by running it under qemu-user-static.
make_busybox_arm64() {
  local root=$1 version=$2 tmp applet
  need_qemu
  tmp=$(mktemp -d)
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
  fi
  if ! apt-cache show "busybox-static:arm64=$version" >/dev/null 2>&1; then
    apt-get update -qq
  fi
  (cd "$tmp" && apt-get download -qq "busybox-static:arm64=$version") 2>&1 | grep -v unsandboxed >&2 || true
  dpkg-deb -x "$tmp"/busybox-static_*_arm64.deb "$tmp/x"
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,home,var,dev,proc,sys}
  install -d -m 0700 "$root/root"
  install -d -m 1777 "$root/tmp"
  install -m 0755 "$tmp/x/bin/busybox" "$root/bin/busybox"
  rm -rf "$tmp"
  for applet in $(qemu-aarch64-static "$root/bin/busybox" --list-full); do
    [[ $applet == bin/busybox ]] && continue
    mkdir -p "$root/$(dirname "$applet")"
    ln -s /bin/busybox "$root/$applet"
  done
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' \
    'nobody:x:65534:65534:nobody:/home:/bin/false' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' >"$root/etc/group"
}

# Debian: a minbase debootstrap, then cleaned the way base images are.
make_debian() {
  local root=$1 mirror=$2 log=$3
  interruptible debootstrap --variant=minbase --arch="$(dpkg --print-architecture)" \
    "$suite" "$root" "$mirror" >"$log" 2>&1 </dev/null || {
    tail -n 30 "$log" >&2
    die "debootstrap failed (full log: $log)"
  }
  # Package caches and indexes: `apt-get update` fetches them again.
  find "$root/var/cache/apt" "$root/var/lib/apt/lists" -mindepth 1 -delete
  mkdir -p "$root/var/cache/apt/archives/partial"
  printf 'deb %s %s main\n' "$mirror" "$suite" >"$root/etc/apt/sources.list"
  # Host and run specific: the runtime provides these, or they are logs.
  rm -f "$root"/etc/{hostname,resolv.conf} "$root/var/lib/dbus/machine-id" \
    "$root/var/cache/ldconfig/aux-cache" "$root"/var/cache/debconf/*-old \
    "$root"/var/lib/dpkg/*-old "$root/var/log/bootstrap.log"
  if [[ -e $root/etc/machine-id ]]; then : >"$root/etc/machine-id"; fi
  find "$root/var/log" -type f -exec truncate -s 0 {} +
}

# Common to every rootfs, after its smoke test: empty the folders a runtime
# mounts over, and clamp every mtime.
finish_rootfs() {
  local root=$1 dir
  for dir in dev proc sys tmp; do
    if [[ -d $root/$dir ]]; then
      find "$root/$dir" -mindepth 1 -delete
    fi
  done
  find "$root" -exec touch -h -d "@$epoch" {} +
}

# The smoke tests, run on the tree before it is cached and by `verify` (root).
# They run in a private mount namespace on a read-only view of the tree, with
# the host's /dev bound in: `cmd >/dev/null` in an empty /dev would otherwise
# leave a regular file behind. The mounts vanish with the namespace.
in_root() {
  local root=$1
  shift
  # shellcheck disable=SC2016 # the inner shell expands its own arguments
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C unshare --mount --propagation private -- /bin/sh -ec '
      root=$1; shift
      mount --bind "$root" "$root"
      mount -o remount,bind,ro "$root"
      mount --bind /dev "$root/dev"
      exec chroot "$root" "$@"' sh "$root" "$@"
}
check_busybox() {
  local out
  out=$(in_root "$1" /bin/sh -c 'echo ok; id -un; ls /') || return 1
  [[ $out == ok$'\n'root$'\n'* ]] || {
    echo "$out" >&2
    return 1
  }
}
# The arm64 tree's shell, run by qemu-user-static directly (no binfmt_misc
# needed to build the fixture), says it is an aarch64 machine.
check_busybox_arm64() {
  local out
  out=$(qemu-aarch64-static "$1/bin/busybox" sh -c 'echo ok; uname -m') || return 1
  [[ $out == ok$'\n'aarch64 ]] || {
    echo "$out" >&2
    return 1
  }
}
check_debian_arm64() {
  local out
  out=$(in_root "$1" /bin/bash -c 'apt-get --version; uname -m; cat /etc/os-release') || return 1
  [[ $out == apt\ * && $out == *$'\n'aarch64$'\n'* && $out == *VERSION_CODENAME=$suite* ]] || {
    echo "$out" >&2
    return 1
  }
}
check_debian() {
  local out
  out=$(in_root "$1" /bin/bash -c 'apt-get --version; cat /etc/os-release') || return 1
  [[ $out == apt\ * && $out == *VERSION_CODENAME=$suite* ]] || {
    echo "$out" >&2
    return 1
  }
}

# --- cache keys --------------------------------------------------------------

pkg_version() {
  dpkg-query -W -f='${Version}' "$1" 2>/dev/null || die "$1 is not installed (run scripts/install-deps.sh)"
}

# Prints the text whose sha256 is NAME's cache key.
# (Each value is read into a variable first: a failing $(...) inside an echo
# would not stop the script.)
inputs() {
  local arch version mirror
  arch=$(dpkg --print-architecture)
  echo "recipe: bake fixture v1"
  echo "arch: $arch"
  echo "epoch: $epoch"
  case $1 in
  busybox)
    version=$(pkg_version busybox-static)
    echo "busybox-static: $version"
    declare -f make_busybox finish_rootfs
    ;;
  busybox-arm64)
    # The same version as the host's busybox-static, so the key is known
    # offline and names exactly what is fetched.
    version=$(pkg_version busybox-static)
    echo "busybox-static:arm64: $version"
    declare -f make_busybox_arm64 finish_rootfs
    ;;
  debian-arm64)
    version=$(pkg_version debootstrap)
    mirror=$(debian_mirror)
    echo "debootstrap: $version"
    echo "suite: $suite"
    echo "mirror: $mirror"
    declare -f make_debian_arm64 finish_rootfs
    ;;
  debian)
    version=$(pkg_version debootstrap)
    mirror=$(debian_mirror)
    echo "debootstrap: $version"
    echo "suite: $suite"
    echo "mirror: $mirror"
    declare -f make_debian finish_rootfs
    ;;
  *) die "unknown fixture: $1 (one of: ${known[*]})" ;;
  esac
}

key() {
  inputs "$1" | sha256sum | cut -c1-64
}

# --- building ----------------------------------------------------------------

# Runs a command in the background in its own process group and waits for it.
# Bash runs a signal trap only once the foreground command is over; `wait`
# returns at once instead, so an interrupted build stops now, and cleanup
# stops the whole group (debootstrap, and dpkg under it).
child=
interruptible() {
  local rc=0
  setsid "$@" & # not a group leader, so setsid does not fork: $! is the group
  child=$!
  wait "$child" || rc=$?
  child=
  return "$rc"
}

build_dir=
cleanup() {
  local i
  if [[ -n $child ]]; then
    kill -TERM -- "-$child" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      kill -0 -- "-$child" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$child" 2>/dev/null || true
  fi
  [[ -n $build_dir && -d $build_dir ]] || return 0
  # debootstrap mounts proc and sys inside the target; never delete through them.
  awk -v d="$build_dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r |
    while read -r m; do umount -l "$m" || true; done
  rm -rf --one-file-system "$build_dir"
}
trap cleanup EXIT
trap "exit 130" INT TERM

# Makes NAME's rootfs for KEY in a temporary folder, checks it, then renames
# it into place: a cached folder is always complete.
build() {
  local name=$1 key=$2 start mirror log
  ((EUID == 0)) || die "$name is not cached in $cache; building it needs root"
  start=$SECONDS
  build_dir=$(mktemp -d "$cache/.build-$name-XXXXXX")
  mkdir "$build_dir/rootfs"
  inputs "$name" >"$build_dir/inputs"
  echo "fixtures: building $name (key ${key:0:12}) ..." >&2
  case $name in
  busybox) make_busybox "$build_dir/rootfs" ;;
  busybox-arm64) make_busybox_arm64 "$build_dir/rootfs" "$(pkg_version busybox-static)" ;;
  debian | debian-arm64)
    mirror=$(debian_mirror)
    # debootstrap downloads with wget, which reads the proxy from the environment.
    eval "$(apt-config shell http_proxy Acquire::http::Proxy https_proxy Acquire::https::Proxy)"
    export http_proxy https_proxy
    log=$(mktemp "${TMPDIR:-/tmp}/bake-debootstrap.XXXXXX.log") # kept if it fails
    "make_${name//-/_}" "$build_dir/rootfs" "$mirror" "$log"
    rm -f "$log"
    ;;
  esac
  "check_${name//-/_}" "$build_dir/rootfs" || die "$name: the smoke test in the new rootfs failed"
  finish_rootfs "$build_dir/rootfs"
  chmod 0755 "$build_dir"
  mv -T "$build_dir" "$cache/$name-$key"
  build_dir=
  echo "fixtures: built $name in $((SECONDS - start))s: $(summary "$cache/$name-$key/rootfs")" >&2
}

summary() {
  echo "$(find "$1" | wc -l) entries, $(du -sh --apparent-size "$1" | cut -f1) ($1)"
}

# Makes sure NAME is cached and current; prints nothing when it already is.
ensure() {
  local name=$1 key dir
  key=$(key "$name")
  dir=$cache/$name-$key
  if [[ ! -d $dir ]]; then
    mkdir -p "$cache"
    exec 9>>"$cache/.lock"
    flock 9
    [[ -d $dir ]] || build "$name" "$key"
    exec 9>&-
  fi
  # The build file is not part of the key: refresh it when the repo's changed.
  if ! cmp -s "$repo/fixtures/$name/build.kdl" "$dir/build.kdl"; then
    install -m 0644 "$repo/fixtures/$name/build.kdl" "$dir/build.kdl"
  fi
  if [[ $(readlink "$cache/$name" 2>/dev/null) != "$name-$key" ]]; then
    ln -sfn "$name-$key" "$cache/.$name.link"
    mv -T "$cache/.$name.link" "$cache/$name"
  fi
}

# --- publishing -----------------------------------------------------------

# The images `publish` makes, in build order: gcc and golang start from the
# debian image, which must be in the store first.
images=(busybox debian gcc golang)
# Published only when named: `busybox-platforms` (`debian-platforms`) is
# busybox (debian) as an index of linux/amd64 and linux/arm64, pushed as
# library/busybox (library/debian) in its place.
extra_images=(busybox-platforms debian-platforms)

# Bakes each image (all of them by default) into the fixture store and pushes
# it to the registry at $1, tagged $1/library/NAME:TAG. The store keeps every
# step between runs, so the toolchains' `apt-get install` runs once per
# machine (it is keyed by the debian image's digest and the command, like any
# bake step) and later runs only retag and push.
publish_all() {
  local addr=$1 name file
  shift
  local wanted=("${@:-${images[@]}}")
  for name in "${wanted[@]}"; do
    [[ " ${images[*]} ${extra_images[*]} " == *" $name "* ]] ||
      die "unknown image: $name (one of: ${images[*]} ${extra_images[*]})"
  done
  for name in "${fixtures[@]}"; do ensure "$name"; done
  if [[ " ${wanted[*]} " == *" busybox-platforms "* ]]; then ensure busybox-arm64; fi
  if [[ " ${wanted[*]} " == *" debian-platforms "* ]]; then ensure debian-arm64; fi
  local bake=${BAKE:-}
  if [[ -z $bake ]]; then
    cargo build --quiet --locked --manifest-path "$repo/Cargo.toml" -p bake-cli
    bake=${CARGO_TARGET_DIR:-$repo/target}/debug/bake
  fi
  export BAKE_HOME=$cache/store
  mkdir -p "$BAKE_HOME"
  # The toolchains are built on docker.io/library/debian:bookworm, which only
  # this store has: build it under that name first.
  if [[ " ${wanted[*]} " == *" gcc "* || " ${wanted[*]} " == *" golang "* ]]; then
    "$bake" -f "$cache/debian/build.kdl" build
  fi
  for name in "${images[@]}" "${extra_images[@]}"; do
    [[ " ${wanted[*]} " == *" $name "* ]] || continue
    local more=()
    case $name in
    busybox | debian) file=$cache/$name/build.kdl ;;
    # Reads both rootfs trees of the cache: allowed outside its workspace.
    busybox-platforms | debian-platforms)
      file=$repo/fixtures/$name/build.kdl more=(--allow-path "$cache" --set "FIXTURES=$cache")
      ;;
    *) file=$repo/fixtures/$name/build.kdl ;;
    esac
    echo "fixtures: publishing $name to $addr" >&2
    "$bake" -f "$file" build --push --set "REGISTRY=$addr" "${more[@]}"
  done
}

cmd=${1:-build}
case $cmd in
build)
  shift $(($# ? 1 : 0))
  for name in "${@:-${fixtures[@]}}"; do
    inputs "$name" >/dev/null
    ensure "$name"
  done
  ;;
verify)
  for name in "${fixtures[@]}"; do
    ensure "$name"
    "check_${name//-/_}" "$cache/$name/rootfs" || die "$name: smoke test failed"
    echo "$name: ok, $(summary "$(readlink -f "$cache/$name/rootfs")")"
  done
  ;;
path)
  [[ $# -eq 2 ]] || die "usage: $0 path NAME"
  inputs "$2" >/dev/null
  echo "$cache/$2"
  ;;
inputs)
  [[ $# -eq 2 ]] || die "usage: $0 inputs NAME"
  inputs "$2"
  ;;
emulation)
  # What foreign-architecture `run` steps need (root): qemu-user-static and
  # binfmt-support installed, binfmt_misc mounted, qemu-aarch64 registered
  # (with the F flag Debian's package sets). Idempotent.
  # A user (the rootless test run) only checks: scripts/test-rootless.sh
  # setup, as root, registered it.
  if ((EUID != 0)); then
    grep -qs '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
      || die "emulation needs root: run $0 emulation as root once (it registers qemu-aarch64)"
    exit 0
  fi
  register_qemu
  ;;
publish)
  # Bakes the fixture images in the fixture store and pushes them to ADDR,
  # e.g. 127.0.0.1:5000, as ADDR/library/busybox:latest ..., so that ADDR can
  # stand in for docker.io (see publish_all above).
  [[ $# -ge 2 ]] || die "usage: $0 publish REGISTRY_ADDR [NAME...]"
  addr=$2
  shift 2
  publish_all "$addr" "$@"
  ;;
gc)
  # Deletes cached builds that no `NAME` link points at (older keys), and
  # leftovers of interrupted builds; under the lock, so none is in progress.
  [[ -d $cache ]] || exit 0
  exec 9>>"$cache/.lock"
  flock 9
  keep=()
  for name in "${known[@]}"; do keep+=("$(readlink "$cache/$name" 2>/dev/null || true)"); done
  for dir in "$cache"/*-*/ "$cache"/.build-*/; do
    [[ -d $dir ]] || continue
    dir=${dir%/}
    [[ " ${keep[*]} " == *" ${dir##*/} "* ]] && continue
    echo "fixtures: deleting $dir" >&2
    rm -rf --one-file-system "$dir"
  done
  ;;
-h | --help | help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" ;;
*) die "unknown command: $cmd (try --help)" ;;
esac
