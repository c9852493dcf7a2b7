#!/usr/bin/env bash
# Installs what the tests need and runs every check CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the checks need: the toolchain's own components.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

# System packages, and the fixture base images' root filesystems (the tests
# have no Docker Hub): both are no-ops in well under a second once done.
export BAKE_FIXTURES=${BAKE_FIXTURES:-/var/cache/bake-fixtures}
./scripts/install-deps.sh
./scripts/fixtures.sh
# The unprivileged test user (with subordinate ids) some tests build as.
./scripts/test-rootless.sh setup
# spdx-tools (PyPI) in a venv beside the fixtures, outside the clone: the SBOM
# tests validate what bake attaches with its pyspdxtools (tests/cli/attest.rs).
# Debian's python3, not whatever is first on PATH: the rootless run executes
# it as the test user, who cannot reach an interpreter under /root.
spdx=$BAKE_FIXTURES/spdx-tools
if [[ ! -x $spdx/bin/pyspdxtools || $(readlink -f "$spdx/bin/python3") != /usr/bin/* ]]; then
  rm -rf "$spdx"
  /usr/bin/python3 -m venv "$spdx"
  "$spdx/bin/pip" install --quiet 'spdx-tools==0.8.*'
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Benches are compiled by clippy above and run by scripts/bench.sh, not here.
cargo test --workspace --locked
# bake rootless: the sandbox and CLI tests again, as that user (Docker's
# tests too: the user is in the `docker` group).
./scripts/test-rootless.sh
# bake's own image (the root build.kdl), built by bake from the debug binary
# the tests just built, and `bake --version` run in it by Docker.
./scripts/release-image.sh debug
