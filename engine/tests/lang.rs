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
