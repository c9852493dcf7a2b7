#!/usr/bin/env bash
# Benchmark (not a test): whole builds with bake, BuildKit and buildah, side
# by side in one hyperfine run per scenario.
#
#   - c:    examples/hello-c (gcc:12 compiler stage -> debian:bookworm-slim)
#   - mono: a generated monorepo of $SERVICES (default 12) Go services that
#           share one builder stage, each shipped on `scratch`
#
# For each: cold (every step runs: --no-cache), no-op (nothing changed) and
# incremental (one source file changed before each run, to a content never built
# before: the store is content-addressed, so a content seen in an earlier run
# would be a cache hit). The base images are
# the offline fixtures, built by bake and loaded into Docker and buildah.
# BuildKit is Debian's docker.io 20.10 (/usr/bin/docker, DOCKER_BUILDKIT=1,
# --network host); it builds the monorepo as one graph (a last stage copies
# every service), which is its fastest form without buildx bake. buildah uses
# --layers (its cache), --jobs 2 and chroot isolation.
#
#   scripts/bench-build.sh        (as root; prints Markdown tables of medians)
set -euo pipefail
# shellcheck source=scripts/bench-setup.sh
source "$(dirname "$0")/bench-setup.sh"
trap 'rm -rf "$work"' EXIT
services=${SERVICES:-12}

echo "== base images" >&2
load_bases "docker buildah" busybox debian gcc golang

# ---- the C example --------------------------------------------------------
mkdir -p "$work/c"
cp examples/hello-c/* "$work/c/"
cat >"$work/c/Dockerfile" <<'DOCKERFILE'
FROM gcc:12 AS compiler
WORKDIR /src
COPY hello.c Makefile ./
RUN make hello

FROM debian:bookworm-slim
COPY --from=compiler /src/hello /usr/local/bin/hello
CMD ["/usr/local/bin/hello"]
DOCKERFILE

# ---- the monorepo ---------------------------------------------------------
mono=$work/mono
make_monorepo "$mono" "$services"

# ---- runs -----------------------------------------------------------------
results=$work/results
mkdir -p "$results"
bench() { # NAME DIR RUNS PREPARE BAKE BUILDKIT BUILDAH
  local name=$1 dir=$2 runs=$3 prepare=$4
  echo "== $name" >&2
  (cd "$dir" && hyperfine --style basic --warmup 1 --runs "$runs" --prepare "$prepare" \
    --export-json "$results/$name.json" -n bake "$5" -n BuildKit "$6" -n buildah "$7" >&2)
}
bk="DOCKER_BUILDKIT=1 $docker build --network host -q"
ba="buildah bud --layers --isolation chroot --jobs 2 -q"

bench c-cold "$work/c" "${RUNS_COLD:-5}" true \
  "$bake build --no-cache --progress plain" "$bk --no-cache -t bench-c ." "$ba --no-cache -t bench-c ."
bench c-noop "$work/c" "${RUNS:-10}" true \
  "$bake build --progress plain" "$bk -t bench-c ." "$ba -t bench-c ."
bench c-incremental "$work/c" "${RUNS:-10}" "echo \"// \$(date +%s%N)\" >> $work/c/hello.c" \
  "$bake build --progress plain" "$bk -t bench-c ." "$ba -t bench-c ."

bench mono-cold "$mono" "${RUNS_COLD:-3}" true \
  "$bake build --no-cache --progress plain" "$bk --no-cache --target all -t bench-mono ." \
  "$ba --no-cache --target all -t bench-mono ."
bench mono-noop "$mono" "${RUNS:-10}" true \
  "$bake build --progress plain" "$bk --target all -t bench-mono ." "$ba --target all -t bench-mono ."
bench mono-incremental "$mono" "${RUNS:-10}" "echo \"// \$(date +%s%N)\" >> $mono/services/svc01/main.go" \
  "$bake build --progress plain" "$bk --target all -t bench-mono ." "$ba --target all -t bench-mono ."

python3 - "$results" <<'PY'
import json, os, sys
d = sys.argv[1]
print("| scenario | bake | BuildKit | buildah | BuildKit / bake | buildah / bake |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for name in ["c-cold", "c-noop", "c-incremental", "mono-cold", "mono-noop", "mono-incremental"]:
    path = os.path.join(d, name + ".json")
    if not os.path.exists(path):
        continue
    r = {x["command"]: x["median"] for x in json.load(open(path))["results"]}
    def fmt(s):
        return f"{s * 1000:.0f} ms" if s < 10 else f"{s:.1f} s"
    print(f"| {name} | {fmt(r['bake'])} | {fmt(r['BuildKit'])} | {fmt(r['buildah'])} "
          f"| {r['BuildKit'] / r['bake']:.1f}x | {r['buildah'] / r['bake']:.1f}x |")
PY
