//! Language behaviour that diagnostics snapshots do not show: values as the
//! engine sees them.

use bake_engine::lang::{InstructionKind, LoadOptions, Workspace, load_str};

fn load(text: &str) -> Workspace {
    let dir = tempfile::tempdir().expect("tempdir");
    load_str("build.kdl", dir.path(), text, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{:?}", miette::Report::new(e)))
}

#[test]
fn chmod_digits_are_octal_like_the_chmod_command() {
    let ws = load(
        r#"
image "a" from="scratch" {
    copy "f" to="/a" chmod=755
    copy "f" to="/b" chmod=0o755
    copy "f" to="/c" chmod="0755"
    copy "f" to="/d" chmod=4755
}
"#,
    );
    let modes: Vec<Option<u32>> = ws.stages[0]
        .instructions
        .iter()
        .map(|i| match &i.kind {
            InstructionKind::Copy(c) => c.chmod,
            _ => None,
        })
        .collect();
    assert_eq!(modes, [Some(0o755), Some(0o755), Some(0o755), Some(0o4755)]);
}

#[test]
fn cmd_with_spaces_is_fine_when_an_entrypoint_takes_it() {
    load(
        r#"
image "a" from="busybox" {
    entrypoint "/bin/sh" "-c"
    cmd "echo base"
}
image "b" from="busybox" {
    cmd "echo inherited entrypoint may take it"
}
"#,
    );
}

#[test]
fn run_with_exec_true_is_argv_and_two_strings_without_it_are_an_error() {
    let ws = load(
        r#"
stage "a" from="busybox" {
    run "/bin/mkdir" "-p" "/opt/my tools" exec=#true
    run "echo one string"
}
"#,
    );
    let runs: Vec<_> = ws.stages[0]
        .instructions
        .iter()
        .filter_map(|i| match &i.kind {
            InstructionKind::Run(r) => Some((r.script.clone(), r.exec.clone())),
            _ => None,
        })
        .collect();
    let argv = ["/bin/mkdir", "-p", "/opt/my tools"].map(str::to_owned).to_vec();
    assert_eq!(runs, [("/bin/mkdir -p /opt/my tools".to_owned(), Some(argv)), ("echo one string".to_owned(), None)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let err = load_str(
        "build.kdl",
        dir.path(),
        "stage \"a\" from=\"busybox\" { run \"echo\" \"two\"; }",
        &LoadOptions::default(),
    )
    .expect_err("two strings");
    let shown = format!("{:?}", miette::Report::new(err));
    assert!(shown.contains("a `run` script is one string") && shown.contains("exec=#true"), "{shown}");
}

#[test]
fn run_binds_from_the_context_a_stage_or_an_image_and_a_cycle_through_one_is_reported() {
    use bake_engine::lang::CopySource;
    let ws = load(
        r#"
stage "tools" from="busybox" { run "true"; }
stage "a" from="busybox" {
    run "make" {
        bind "src" target="/src"
        bind "/opt" target="/opt" from="tools" rw=#true
        bind "/bin/busybox" target="/bb" from="busybox:1.35"
        tmpfs "/tmp"
    }
}
"#,
    );
    let InstructionKind::Run(run) = &ws.stages[1].instructions[0].kind else { panic!("a run") };
    let froms: Vec<(&str, &CopySource, bool)> =
        run.binds.iter().map(|b| (b.source.as_str(), &b.from, b.readonly)).collect();
    assert_eq!(froms[0], ("src", &CopySource::Context, true));
    assert_eq!(froms[1], ("/opt", &CopySource::Stage(0), false));
    assert!(matches!(froms[2], ("/bin/busybox", CopySource::Image(_), true)));
    assert_eq!(run.tmpfs, ["/tmp"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let cycle = r#"stage "a" from="busybox" { run "x" { bind "/" target="/b" from="b"; }; }
stage "b" from="a" { }"#;
    let err = load_str("build.kdl", dir.path(), cycle, &LoadOptions::default()).expect_err("a cycle");
    let shown = format!("{:?}", miette::Report::new(err));
    assert!(shown.contains("a -> b -> a") || shown.contains("b -> a -> b"), "{shown}");
}

fn load_for(text: &str, platforms: &[&str]) -> Result<Workspace, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LoadOptions {
        platforms: platforms.iter().map(|p| p.parse().expect("platform")).collect(),
        build_platform: Some("linux/amd64".parse().expect("platform")),
        ..LoadOptions::default()
    };
    load_str("build.kdl", dir.path(), text, &options).map_err(|e| format!("{:?}", miette::Report::new(e)))
}

/// Each stage instance as `instance platform`.
fn instances(ws: &Workspace) -> Vec<String> {
    ws.stages.iter().map(|s| format!("{} {}", s.instance, s.platform)).collect()
}

const PLATFORMS: &str = r#"
platforms "linux/amd64" "linux/arm64"

stage "tools" from="golang:1.19" platform="${BUILDPLATFORM}" {
    run "go install tool"
}
stage "cross" from="tools" {
    run "GOOS=${TARGETOS} GOARCH=${TARGETARCH} go build -o /app"
}
stage "base" from="debian:bookworm-slim" {
    run "uname -m"
}
stage "files" from="scratch" {
    copy "f" to="/f"
}
image "app" from="scratch" {
    copy "/app" to="/app" from="cross"
    copy "/f" to="/f" from="files"
}
"#;

#[test]
fn a_stage_is_instantiated_per_target_only_when_it_depends_on_it() {
    let ws = load_for(PLATFORMS, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        instances(&ws),
        [
            "tools linux/amd64",
            // Pinned through its base, but uses TARGETARCH.
            "cross[linux/amd64] linux/amd64",
            "cross[linux/arm64] linux/amd64",
            "base[linux/amd64] linux/amd64",
            "base[linux/arm64] linux/arm64",
            "files linux/amd64",
            "app[linux/amd64] linux/amd64",
            "app[linux/arm64] linux/arm64",
        ]
    );
    let cross_arm = &ws.stages[2];
    assert_eq!(cross_arm.args_used.get("TARGETARCH").map(String::as_str), Some("arm64"));
    assert!(matches!(&cross_arm.instructions[0].kind, InstructionKind::Run(r) if r.script.contains("GOARCH=arm64")));
    // Each image instance copies from its own platform's `cross`.
    let app_arm = &ws.stages[7];
    assert!(
        matches!(&app_arm.instructions[0].kind, InstructionKind::Copy(c) if c.from == bake_engine::lang::CopySource::Stage(2))
    );
    assert_eq!(app_arm.image.as_ref().map(|i| i.build_for.len()), Some(2));
}

#[test]
fn the_command_line_wins_and_one_platform_keeps_plain_names() {
    let ws = load_for(PLATFORMS, &["linux/arm64"]).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = ws.stages.iter().map(|s| s.instance.as_str()).collect();
    assert_eq!(names, ["tools", "cross", "base", "files", "app"]);
    assert_eq!(ws.stages[4].platform.to_string(), "linux/arm64");
    // No platform anywhere: the build machine's, and no instance names.
    let plain = load_for("stage \"a\" from=\"busybox\" { run \"echo ${TARGETPLATFORM} ${BUILDARCH}\" }", &[])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(&plain.stages[0].instructions[0].kind, InstructionKind::Run(r) if r.script == "echo linux/amd64 amd64")
    );
    assert_eq!(plain.stages[0].instance, "a");
}

#[test]
fn a_base_may_name_a_stage_per_target() {
    let ws = load_for(
        r#"
stage "amd64" from="scratch" { copy "a" to="/a" }
stage "arm64" from="scratch" { copy "b" to="/b" }
image "x" from="${TARGETARCH}" { platforms "linux/amd64" "linux/arm64" }
"#,
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let bases: Vec<String> = ws.stages[2..]
        .iter()
        .map(|s| match &s.from {
            bake_engine::lang::Base::Stage(p) => format!("{} {}", ws.stages[*p].name, s.platform),
            other => format!("{other:?}"),
        })
        .collect();
    // The image says its own platform, not the shared stage's.
    assert_eq!(bases, ["amd64 linux/amd64", "arm64 linux/arm64"]);
}

#[test]
fn platform_mistakes_are_reported() {
    let err = load_for("image \"a\" from=\"scratch\" { platforms \"linux/z80\" }", &[]).expect_err("bad platform");
    assert!(err.contains("`linux/z80` is not a platform") && err.contains("unknown architecture"), "{err}");
    let err = load_for("stage \"a\" from=\"busybox\" platform=\"linux\\\\amd64\" {}", &[]).expect_err("bad pin");
    assert!(err.contains("is not a platform"), "{err}");
    let many: Vec<String> = (0..17).map(|i| format!("\"linux/arm/v{}\"", i + 10)).collect();
    let err = load_for(&format!("platforms {}\nimage \"a\" from=\"scratch\" {{}}", many.join(" ")), &[])
        .expect_err("too many");
    assert!(err.contains("too many target platforms"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LoadOptions { set: vec![("TARGETARCH".to_owned(), "x".to_owned())], ..LoadOptions::default() };
    let err = load_str("build.kdl", dir.path(), "stage \"a\" from=\"scratch\" {}", &options).expect_err("set");
    assert!(format!("{:?}", miette::Report::new(err)).contains("cannot change a predefined arg"));
}
