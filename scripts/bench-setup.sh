# Shared set-up of the benchmarks that compare bake with BuildKit and
# buildah; sourced, not run. Sets `repo`, `bake` (a release build),
# `docker` (Debian's docker.io client), `work` (a temporary folder the caller
# removes) and BAKE_HOME (kept between runs: the fixture toolchains take
# minutes to make), and defines `load_bases` and `make_monorepo`.
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

# make_monorepo DIR SERVICES: a monorepo of SERVICES Go services that share
# one builder stage, each shipped on `scratch`: DIR/build.kdl (including
# DIR/services/*/build.kdl) and the same build as DIR/Dockerfile, whose last
# stage `all` copies every service (BuildKit's fastest form of one graph).
make_monorepo() {
  local mono=$1 services=$2 i s all=()
  mkdir -p "$mono/services"
  cat >"$mono/build.kdl" <<'KDL'
include "services/*/build.kdl"

stage "go-builder" from="golang:1.19" {
    workdir "/src"
    env "CGO_ENABLED" "0"
    run "go build std"
}
KDL
  {
    echo 'FROM golang:1.19 AS go-builder'
    echo 'WORKDIR /src'
    echo 'ENV CGO_ENABLED=0'
    echo 'RUN go build std'
  } >"$mono/Dockerfile"
  for i in $(seq -w 1 "$services"); do
    s=svc$i
    mkdir -p "$mono/services/$s"
    printf 'module example.com/%s\n\ngo 1.19\n' "$s" >"$mono/services/$s/go.mod"
    printf 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("%s")\n}\n' "$s" >"$mono/services/$s/main.go"
    cat >"$mono/services/$s/build.kdl" <<KDL
stage "$s-build" from="go-builder" {
    copy "go.mod" "main.go" to="./"
    run "go build -o /out/$s ."
}

image "$s" from="scratch" {
    copy "/out/$s" to="/$s" from="$s-build"
    entrypoint "/$s"
}
KDL
    cat >>"$mono/Dockerfile" <<DOCKERFILE

FROM go-builder AS $s-build
COPY services/$s/go.mod services/$s/main.go ./
RUN go build -o /out/$s .

FROM scratch AS $s
COPY --from=$s-build /out/$s /$s
ENTRYPOINT ["/$s"]
DOCKERFILE
    all+=("$s")
  done
  {
    echo
    echo 'FROM scratch AS all'
    for s in "${all[@]}"; do echo "COPY --from=$s /$s /$s"; done
  } >>"$mono/Dockerfile"
}
