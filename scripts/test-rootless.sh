#!/usr/bin/env bash
# Runs the CLI end-to-end tests and the sandbox tests again as a user that is
# not root: bake rootless (book/src/rootless.md). scripts/test.sh calls it
# after the root run, with the test binaries that run built.
#
# Usage: scripts/test-rootless.sh setup
#          only the setup below (scripts/test.sh runs it before the root run:
#          the tests named as_root_* build as the test user too)
#        scripts/test-rootless.sh [TEST-ARGS...]
#          the setup, then the tests as the user; TEST-ARGS go to the CLI
#          test binary (filters, --skip NAME); the as_root_* tests are left
#          out (they need root)
#
# As root, and idempotent (a second run changes nothing):
#   - installs `uidmap` (newuidmap, newgidmap);
#   - creates the user `bake-tester` (BAKE_TEST_USER) with subordinate
#     ranges in /etc/subuid and /etc/subgid (useradd writes them; an existing
#     user without any gets a free range), in the `docker` group so the tests
#     that load images into Docker run as the user too;
#   - makes /dev/net/tun usable by users (0666, what udev's default rules
#     set; a machine without udev leaves it root's), for slirp4netns;
#   - gives the user its own copy of what the tests read: the checkout's
#     sources (not target/ nor .git), the bake binary and the test binaries,
#     and the fixture root filesystems (scripts/fixtures.sh), owned by the
#     user. bake copies files from a build context with their modes and
#     root as owner, so the user's copy of a fixture makes the same image as
#     root's; the fixtures' store (built by root) is not copied: the user's
#     tests publish from a store of their own.
# Then runs, as the user, the sandbox tests (engine/tests/sandbox.rs) and the
# CLI tests (tests/cli), each binary as cargo built it for the root run.
set -euo pipefail
cd "$(dirname "$0")/.."

user=${BAKE_TEST_USER:-bake-tester}
fixtures=${BAKE_FIXTURES:-/var/cache/bake-fixtures}
target=${CARGO_TARGET_DIR:-$PWD/target}

if [[ $(id -u) != 0 ]]; then
  echo "test-rootless: run it as root (it creates the test user)" >&2
  exit 2
fi

command -v newuidmap >/dev/null && command -v newgidmap >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq uidmap >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq uidmap >/dev/null
  }
}

# The first id after every range already handed out (at least 100000).
free_start() {
  awk -F: 'BEGIN { m = 100000 } { e = $2 + $3; if (e > m) m = e } END { print m }' "$1"
}
id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
touch /etc/subuid /etc/subgid
grep -q "^$user:" /etc/subuid || usermod --add-subuids "$(free_start /etc/subuid)-$(($(free_start /etc/subuid) + 65535))" "$user"
grep -q "^$user:" /etc/subgid || usermod --add-subgids "$(free_start /etc/subgid)-$(($(free_start /etc/subgid) + 65535))" "$user"
# Foreign-architecture steps (the platform tests) need qemu registered,
# which only root can do; the user's fixtures.sh only checks it.
./scripts/fixtures.sh emulation
getent group docker >/dev/null && usermod --append --groups docker "$user"
[[ -c /dev/net/tun ]] || modprobe tun 2>/dev/null || true
[[ -c /dev/net/tun ]] && chmod 0666 /dev/net/tun

[[ ${1:-} == setup ]] && exit 0

home=$(getent passwd "$user" | cut -d: -f6)
work=$home/rootless-tests
mkdir -p "$work/bin" "$work/fixtures" "$work/run"

# The test binaries of the root run (cargo prints where they are).
executables=$(cargo test --locked --no-run --message-format=json -p bake-cli --test cli -p bake-engine --test sandbox 2>/dev/null |
  grep -o '"executable":"[^"]*"' | cut -d'"' -f4)
cli=$(grep '/cli-' <<<"$executables" | head -n1)
sandbox=$(grep '/sandbox-' <<<"$executables" | head -n1)
[[ -x $cli && -x $sandbox && -x $target/debug/bake ]] || {
  echo "test-rootless: build the tests first (cargo test --no-run)" >&2
  exit 2
}
install -m 0755 "$cli" "$work/bin/cli-tests"
install -m 0755 "$sandbox" "$work/bin/sandbox-tests"
install -m 0755 "$target/debug/bake" "$work/bin/bake"
rm -rf "$work/checkout" && mkdir "$work/checkout"
tar -C . --exclude=./target --exclude=./.git --exclude=./fuzz/target -cf - . | tar -C "$work/checkout" -xf -
# The root filesystems, as made (modes and times kept); the store is the
# user's own and stays between runs.
# Only the folders: a name like busybox-arm64 is a link to its folder, made
# again as a link below (copied through it, it would become a folder that
# fixtures.sh cannot point at another build).
for tree in "$fixtures"/*-*/; do
  tree=${tree%/}
  [[ -L $tree ]] && continue
  name=$(basename "$tree")
  # A venv holds absolute paths: the user runs root's (world-readable) one.
  if [[ $name == spdx-tools ]]; then
    [[ -d $work/fixtures/$name && ! -L $work/fixtures/$name ]] && rm -rf "$work/fixtures/$name"
    ln -sfn "$tree" "$work/fixtures/$name"
    continue
  fi
  [[ -d $work/fixtures/$name ]] || cp -a "$tree" "$work/fixtures/$name"
done
for link in "$fixtures"/*; do
  if [[ -L $link ]]; then
    dest=$work/fixtures/$(basename "$link")
    # A folder left where a link belongs (by an earlier version of this script).
    [[ -d $dest && ! -L $dest ]] && rm -rf "$dest"
    ln -sfn "$(readlink "$link")" "$dest"
  fi
done
# Not the store: its files belong to the user's subordinate ids already.
chown -R "$user:" "$work/bin" "$work/checkout" "$work"/fixtures/*-*
chown "$user:" "$work" "$work/fixtures" "$work/run"
chmod 0700 "$work/run"

as_user() {
  # -l: the user's own environment (HOME, PATH, no root's XDG folders);
  # XDG_RUNTIME_DIR as a login session would give it (skopeo looks there).
  su -l "$user" -c "cd '$work/checkout' && env XDG_RUNTIME_DIR='$work/run' BAKE_FIXTURES='$work/fixtures' BAKE_TEST_ROOT='$work/checkout' \
    BAKE_TEST_BIN='$work/bin/bake' INSTA_WORKSPACE_ROOT='$work/checkout' CI=true $*"
}
echo "test-rootless: sandbox tests as $user"
as_user "'$work/bin/sandbox-tests'"
echo "test-rootless: CLI tests as $user"
# Left out: what only root can do, whoever runs bake. The as_root_* tests
# switch users; a full disk is a tmpfs mounted by the test; the exports'
# stage makes a device node with mknod, which a user namespace cannot.
as_user "'$work/bin/cli-tests' --skip as_root_ --skip a_full_disk_names_the_folder_being_written \
  --skip exports::artifacts_lose_setuid_bits --skip exports::local_outputs_lose_setuid_bits $*"
