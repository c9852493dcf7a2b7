//! `bake import` and `bake check` on Dockerfiles: the build.kdl an import
//! writes (snapshots), that `bake check` accepts it, and the check rules'
//! warnings.

use crate::docker;
use crate::dockerfile::{Case, compare};
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

/// The import round trip on a case of `tests/dockerfiles/`: builds
/// `dockerfile` with bake, imports it (`bake import -o imported.kdl`),
/// builds the import with bake, and returns the differences between the two
/// images' files and config ([`crate::dockerfile::compare`]), empty when
/// they agree. `args` (`--build-arg`, `--secret`) go to both builds.
///
/// Files and config rather than digests: the history and the config's
/// `author` and `OnBuild` of the two differ on purpose (the import notes what
/// it could not carry). The imported file and the ignore file it needs sit
/// in the context, so a `.bakeignore` leaves both out, and takes the
/// Dockerfile's own ignore file's rules in place of `.dockerignore`'s when
/// it has one, as the import's note asks.
pub(crate) fn import_round_trip(case: &Case, dockerfile: &str, args: &[&str]) -> Vec<String> {
    let direct = case.build_with_bake(dockerfile, args);
    let imported_tag = format!("bake-df/{}:imported", case.name);
    let import = case.bake(&["import", dockerfile, "-o", "imported.kdl", "-t", &imported_tag]);
    assert_eq!(import.code, 0, "{}", import.render());
    let mut bakeignore = String::new();
    let own = case.dir.path().join(format!("{dockerfile}.dockerignore"));
    if own.is_file() {
        // The Dockerfile's own ignore file replaces `.dockerignore`: undo
        // the latter's rules (simple patterns, one a line), then add its own.
        let shared = std::fs::read_to_string(case.dir.path().join(".dockerignore")).unwrap_or_default();
        for line in shared.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            match line.strip_prefix('!') {
                Some(kept) => bakeignore.push_str(kept),
                None => {
                    bakeignore.push('!');
                    bakeignore.push_str(line);
                }
            }
            bakeignore.push('\n');
        }
        bakeignore.push_str(&std::fs::read_to_string(&own).expect("read the ignore file"));
        bakeignore.push('\n');
    }
    bakeignore.push_str("imported.kdl\n.bakeignore\n");
    case.write(".bakeignore", &bakeignore);
    let out = tempfile::tempdir().expect("tempdir");
    let archive = out.path().join("imported.tar");
    let dest = format!("type=docker,dest={}", archive.display());
    let mut all = vec!["-f", "imported.kdl", "build", "-o", &dest];
    all.extend_from_slice(args);
    let built = case.bake(&all);
    let kdl = std::fs::read_to_string(case.dir.path().join("imported.kdl")).unwrap_or_default();
    assert_eq!(built.code, 0, "the import builds:\n{kdl}\n{}", built.render());
    docker::load(&archive);
    let diff = compare(&imported_tag, &direct, &[]);
    let _ = docker::output(&["rmi", "-f", &imported_tag]);
    if !diff.is_empty() {
        eprintln!("imported build.kdl:\n{kdl}");
    }
    diff
}

#[test]
fn an_imported_c_multistage_dockerfile_builds_the_same_image() {
    let case = Case::new("c-multistage", &["busybox", "gcc"], &["busybox:1.35", "gcc:12"]);
    let token = case.secret_file("s3cr3t-value");
    let secret = format!("id=token,src={}", token.display());
    let diff =
        import_round_trip(&case, "Dockerfile", &["--secret", &secret, "--set", "VERSION=1.2.3", "--set", "OPT=-O1"]);
    assert!(diff.is_empty(), "the import differs:\n{}", diff.join("\n"));
}

#[test]
fn an_imported_config_dockerfile_builds_the_same_image() {
    let case = Case::new("busybox-config", &["busybox"], &["busybox:1.35"]);
    let diff = import_round_trip(&case, "app.Dockerfile", &["--set", "SUFFIX=two"]);
    // The differences the import notes (`// bake import:`) because build.kdl
    // cannot say them yet: `COPY --from` keeps the owner (12:34, from the
    // stage's `--chown`) where bake's `copy from=` makes it root's; `ADD` of
    // a local archive is not carried (no `add` node yet); WORKDIR after
    // `USER 1000` makes its folders the user's, build.kdl's `workdir` root's.
    let expected = [
        ("data/copy-of-a.txt: ", "uid: 12, gid: 34"),
        ("opt/pkg: only in BuildKit's image", ""),
        ("opt/pkg/link: only in BuildKit's image", ""),
        ("opt/pkg/readme: only in BuildKit's image", ""),
        ("opt/pkg/secret.txt: only in BuildKit's image", ""),
        ("srv: ", "uid: 1000, gid: 1000"),
        ("srv/data: ", "uid: 1000, gid: 1000"),
    ];
    assert_eq!(diff.len(), expected.len(), "the import differs:\n{}", diff.join("\n"));
    for (line, (start, has)) in diff.iter().zip(expected) {
        assert!(line.starts_with(start) && line.contains(has), "expected {start}..{has}, got {line}");
    }
}
