#!/usr/bin/env bash
# Benchmark (not a test): two bake binaries side by side in one hyperfine
# run, on the generated monorepo of $SERVICES (default 12) Go services of
# scripts/bench-build.sh: the no-op build (nothing changed) and the
# incremental one (one service's source changed before each run, to a
# content never built before). For a change that must not slow bake down.
#
#   BEFORE=/path/to/old/bake scripts/bench-change.sh
#       AFTER defaults to this checkout's release build. Each binary has a
#       store of its own (the golang fixture image is built into each once),
#       so a change of store format does not favour either.
set -euo pipefail
# shellcheck source=scripts/bench-setup.sh
source "$(dirname "$0")/bench-setup.sh"
trap 'rm -rf "$work"' EXIT
before=${BEFORE:?BEFORE=/path/to/the/older/bake binary}
after=${AFTER:-$bake}
services=${SERVICES:-12}
runs=${RUNS:-20}

mono=$work/mono
make_monorepo "$mono" "$services"
golang=$repo/fixtures/golang/build.kdl
for side in before after; do
  bin=${!side}
  home=$work/home-$side
  mkdir -p "$home"
  # The toolchain image from the shared bench store's cache, then a full build.
  BAKE_HOME=$home "$bin" -f "$golang" build --progress plain >/dev/null 2>&1 ||
    { echo "bench-change: $side could not build the golang fixture" >&2; exit 1; }
  (cd "$mono" && BAKE_HOME=$home "$bin" build --progress plain >/dev/null 2>&1) ||
    { echo "bench-change: $side could not build the monorepo" >&2; exit 1; }
done

results=$work/results
mkdir -p "$results"
run() { # NAME PREPARE
  (cd "$mono" && hyperfine --style basic --warmup 2 --runs "$runs" --prepare "$2" \
    --export-json "$results/$1.json" \
    -n before "BAKE_HOME=$work/home-before $before build --progress plain" \
    -n after "BAKE_HOME=$work/home-after $after build --progress plain" >&2)
}
run noop true
run incremental "echo \"// \$(date +%s%N)\" >> $mono/services/svc01/main.go"

python3 - "$results" <<'PY'
import json, sys, pathlib
print("| scenario | before (median) | after (median) | after / before |")
print("|---|---|---|---|")
for name in ["noop", "incremental"]:
    r = {x["command"]: x["median"] for x in json.loads(pathlib.Path(sys.argv[1], name + ".json").read_text())["results"]}
    print(f"| {name} | {r['before'] * 1000:.1f} ms | {r['after'] * 1000:.1f} ms | {r['after'] / r['before']:.2f}x |")
PY
