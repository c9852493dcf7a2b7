#!/usr/bin/env bash
# Runs the benchmarks. They are not part of CI: speed goals are measured
# here, as medians, never asserted in tests.
#
#   scripts/bench.sh            every bench
#   scripts/bench.sh compile    one of: compile, context, layer
#
# compile  criterion: load + plan of a 1,000-stage, 200-file monorepo
# context  criterion: context hashing of 100,000 files, cold and warm index
# layer    layer packing of a 500 MB tree: bake gzip/zstd against
#          `tar | gzip -6`, `tar | pigz -6` and `tar | zstd -3`, same run
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --bench
benches=("$@")
[[ ${#benches[@]} -gt 0 ]] || benches=(compile context layer)
for bench in "${benches[@]}"; do
  echo "== bench: $bench"
  cargo bench --locked -p bake-engine --bench "$bench"
done
