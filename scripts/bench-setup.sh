# Shared set-up of the benchmarks that compare bake with BuildKit and
# buildah; sourced, not run. Sets `repo`, `bake` (a release build),
# `docker` (Debian's docker.io client), `work` (a temporary folder the caller
# removes) and BAKE_HOME (kept between runs: the fixture toolchains take
# minutes to make), and defines `load_bases`.
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
./scripts/install-deps.sh --bench
./scripts/fixtures.sh
cargo build --release --locked -q -p bake-cli
bake=$repo/target/release/bake
eval "export $(./scripts/dockerd.sh start)"
docker=/usr/bin/docker
export BAKE_HOME=${BAKE_BENCH_HOME:-/var/cache/bake-bench/home}
mkdir -p "$BAKE_HOME"
work=$(mktemp -d)

# load_bases TOOLS NAME...: builds the fixture images NAME (busybox, debian,
# gcc, golang) with bake and loads them into each of TOOLS ("docker",
# "docker buildah").
load_bases() {
  local tools=$1 name file
  shift
  for name in "$@"; do
    case $name in
      busybox | debian) file=$(./scripts/fixtures.sh path "$name")/build.kdl ;;
      *) file=fixtures/$name/build.kdl ;;
    esac
    "$bake" -f "$file" build --progress plain -o "type=docker,dest=$work/$name.tar" >/dev/null 2>&1
    [[ $tools == *docker* ]] && $docker load -i "$work/$name.tar" >/dev/null
    [[ $tools == *buildah* ]] && buildah pull -q "docker-archive:$work/$name.tar" >/dev/null
  done
  return 0
}
