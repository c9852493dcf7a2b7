#!/usr/bin/env bash
# Benchmark (not a test): bake rootless against bake as root, rootless
# buildah (`--isolation chroot`, as a user) and rootless Podman (Debian's
# podman 4, crun, as a user), in one hyperfine run per scenario:
#
#   - trivial:  a `run "true"` step on busybox (`RUN true`), --no-cache
#   - c-cold:   examples/hello-c (gcc:12 compiler stage -> debian:bookworm-slim),
#               --no-cache
#
# The user is scripts/test-rootless.sh's (bake-tester, with subordinate ids);
# its commands start through `setpriv` (one exec, no PAM), with a clean
# environment, and root's the same way. The base images are the offline fixtures, pushed to a
# throwaway local registry: bake (root and user) pulls them from it (a
# mirror of docker.io for hello-c), buildah and Podman pull them once
# before the runs (they share the user's containers-storage).
#
#   scripts/bench-rootless.sh     (as root; prints Markdown tables of medians)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
./scripts/install-deps.sh --bench
command -v podman >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman >/dev/null
./scripts/fixtures.sh
./scripts/test-rootless.sh setup
cargo build --release --locked -q -p bake-cli

user=${BAKE_TEST_USER:-bake-tester}
uid=$(id -u "$user")
gid=$(id -g "$user")
user_home=$(getent passwd "$user" | cut -d: -f6)

work=$(mktemp -d)
eval "$(./scripts/registry.sh start)"
trap 'scripts/registry.sh stop "$REGISTRY" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
chmod 0755 "$work"
install -m 0755 target/release/bake "$work/bake"
bake=$work/bake

echo "== base images to $REGISTRY" >&2
BAKE="$bake" ./scripts/fixtures.sh publish "$REGISTRY" busybox debian gcc >/dev/null 2>&1
printf 'registry "docker.io" {\n    mirror "%s"\n}\n' "$REGISTRY" >"$work/config.kdl"

# The contexts: readable by everyone, written by nobody.
mkdir -p "$work/trivial" "$work/c"
printf 'image "trivial" from="%s/library/busybox:latest" {\n    run "true"\n}\n' "$REGISTRY" >"$work/trivial/build.kdl"
printf 'FROM %s/library/busybox:latest\nRUN true\n' "$REGISTRY" >"$work/trivial/Dockerfile"
cp examples/hello-c/* "$work/c/"
cat >"$work/c/Dockerfile" <<DOCKERFILE
FROM $REGISTRY/library/gcc:12 AS compiler
WORKDIR /src
COPY hello.c Makefile ./
RUN make hello

FROM $REGISTRY/library/debian:bookworm-slim
COPY --from=compiler /src/hello /usr/local/bin/hello
CMD ["/usr/local/bin/hello"]
DOCKERFILE
chmod -R a+rX "$work"

# Each side's own store; the user's is the user's.
mkdir -p "$work/root-home" "$work/user-home"
chown "$user:" "$work/user-home"
as_user="setpriv --reuid=$uid --regid=$gid --init-groups env -i HOME=$user_home USER=$user PATH=/usr/local/bin:/usr/bin:/bin"
# Root's commands go through the same setpriv and env as the user's.
as_root="setpriv --reuid=0 --regid=0 --init-groups env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin BAKE_HOME=$work/root-home BAKE_CONFIG=$work/config.kdl"
user_bake="$as_user BAKE_HOME=$work/user-home BAKE_CONFIG=$work/config.kdl $bake"
for image in busybox:latest gcc:12 debian:bookworm-slim; do
  $as_user buildah pull --tls-verify=false -q "$REGISTRY/library/$image" >/dev/null
done

results=$work/results
mkdir -p "$results"
bench() { # NAME DIR RUNS
  local name=$1 dir=$2 runs=$3 tag=bench-rootless-$1
  echo "== $name" >&2
  (cd "$dir" && hyperfine --style basic --warmup 2 --runs "$runs" --export-json "$results/$name.json" \
    -n 'bake (root)' "$as_root $bake build --no-cache --progress plain" \
    -n 'bake (rootless)' "$user_bake build --no-cache --progress plain" \
    -n 'buildah (rootless, chroot)' "$as_user buildah bud --isolation chroot --no-cache -q -t $tag ." \
    -n 'podman (rootless)' "$as_user podman build --no-cache -q -t $tag ." >&2)
}
bench trivial "$work/trivial" "${RUNS:-20}"
bench c-cold "$work/c" "${RUNS_COLD:-5}"

python3 - "$results" <<'PY'
import json, os, sys
d = sys.argv[1]
tools = ["bake (root)", "bake (rootless)", "buildah (rootless, chroot)", "podman (rootless)"]
print("| scenario | " + " | ".join(tools) + " | rootless / root | buildah / bake rootless | podman / bake rootless |")
print("| --- |" + " ---: |" * (len(tools) + 3))
for name in ["trivial", "c-cold"]:
    path = os.path.join(d, name + ".json")
    if not os.path.exists(path):
        continue
    r = {x["command"]: x["median"] for x in json.load(open(path))["results"]}
    fmt = lambda s: f"{s * 1000:.0f} ms" if s < 10 else f"{s:.1f} s"
    rootless = r["bake (rootless)"]
    print(f"| {name} | " + " | ".join(fmt(r[t]) for t in tools)
          + f" | {rootless / r['bake (root)']:.2f}x | {r[tools[2]] / rootless:.1f}x | {r[tools[3]] / rootless:.1f}x |")
PY
