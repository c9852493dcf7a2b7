//! `bake import` and `bake check` on Dockerfiles: the build.kdl an import
//! writes (snapshots), that `bake check` accepts it, and the check rules'
//! warnings.

use crate::harness::{Run, bake, settings};

const GO: &str = "# syntax=docker/dockerfile:1
ARG GO_VERSION=1.22
# Build the binary.
FROM golang:${GO_VERSION} AS build
ARG VERSION=dev
WORKDIR /src
ENV CGO_ENABLED=0 PATH=/go/bin:$PATH
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/.cache/go-build \\
    --mount=type=secret,id=token go build -ldflags \"-X main.v=${VERSION}\" -o /out/app .

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/app /app
COPY --link --from=0 /src/LICENSE /
EXPOSE 8080
HEALTHCHECK --interval=30s CMD [\"/app\", \"-healthcheck\"]
ONBUILD RUN echo hi
ENTRYPOINT /app --port 8080
";

const NODE: &str = "FROM node:20-alpine
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci
COPY . .
RUN <<EOF
npm run build
echo \"built ${NODE_ENV:-dev}\" > /app/BUILT
EOF

FROM nginx:1.27-alpine
COPY --from=0 /app/dist /usr/share/nginx/html
CMD nginx -g 'daemon off;'
";

/// Imports `dockerfile` in a fresh folder (printed, and with -o), then
/// checks the written build.kdl.
fn import_and_check(name: &str, dockerfile: &str) -> (Run, Run) {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("write");
    let written = bake(dir.path(), home.path(), &["import", "Dockerfile", "-o", "build.kdl"]);
    assert_eq!(written.code, 0, "{name}: {}", written.render());
    let kdl = std::fs::read_to_string(dir.path().join("build.kdl")).expect("build.kdl written");
    let printed = bake(dir.path(), home.path(), &["import", "Dockerfile"]);
    assert_eq!(printed.stdout, kdl, "stdout and -o give the same text");
    let check = bake(dir.path(), home.path(), &["check"]);
    (printed, check)
}

#[test]
fn imports_of_go_and_node_dockerfiles_are_valid_build_kdl() {
    for (name, text) in [("go", GO), ("node", NODE)] {
        let (import, check) = import_and_check(name, text);
        settings().bind(|| insta::assert_snapshot!(format!("import-{name}"), import.render()));
        assert_eq!(check.code, 0, "{name}: bake check of the import:\n{}\n{}", import.stdout, check.render());
    }
}

#[test]
fn check_prints_buildkit_rules_as_warnings_and_fails_only_with_error_true() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let text = "FROM busybox:1.36 as Build\nENV A 1\nWORKDIR rel\nCMD echo one\nCMD [\"echo\", \"two\"]\n";
    std::fs::write(dir.path().join("Dockerfile"), text).expect("write");
    let run = bake(dir.path(), home.path(), &["-f", "Dockerfile", "check"]);
    settings().bind(|| insta::assert_snapshot!("check-dockerfile-warnings", run.render()));
    assert_eq!(run.code, 0);
    std::fs::write(dir.path().join("Dockerfile"), format!("# check=error=true\n{text}")).expect("write");
    let run = bake(dir.path(), home.path(), &["-f", "Dockerfile", "check"]);
    settings().bind(|| insta::assert_snapshot!("check-dockerfile-error-true", run.render()));
    assert_eq!(run.code, 1);
}
