//! Language fixtures: `tests/lang/<case>/build.kdl`, each checked with
//! `bake check`, the rendered diagnostics snapshotted per case.
//!
//! Each folder is a test of its own (`lang::stage_cycle`), so a failure names
//! its case and the others still run. `every_fixture_has_a_test` fails when
//! a folder is added without a line in `cases!`.

use std::collections::BTreeSet;

use crate::harness::{bake, root, settings};

/// One `#[test]` per fixture folder, and the list of folders they cover.
macro_rules! cases {
    ($($test:ident => $dir:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check($dir);
            }
        )*
        /// The fixture folders that have a test.
        const CASES: &[&str] = &[$($dir),*];
    };
}

cases! {
    arg_limits => "arg-limits",
    args => "args",
    arguments_and_types => "arguments-and-types",
    context_escape => "context-escape",
    duplicate_across_include => "duplicate-across-include",
    duplicate_name => "duplicate-name",
    exec_form => "exec-form",
    include_missing => "include-missing",
    many_errors => "many-errors",
    missing_from => "missing-from",
    nesting_comments => "nesting-comments",
    ok_full => "ok-full",
    outside_artifact => "outside-artifact",
    outside_context => "outside-context",
    outside_include => "outside-include",
    outside_symlink => "outside-symlink",
    run_options => "run-options",
    stage_cycle => "stage-cycle",
    stage_options => "stage-options",
    syntax_error => "syntax-error",
    targets => "targets",
    unknown_node_and_property => "unknown-node-and-property",
    unknown_stage => "unknown-stage",
}

/// `bake check` in `tests/lang/NAME`: `ok-*` cases load, every other case is
/// a mistake bake must report as a configuration error (exit 2).
fn check(name: &str) {
    let home = tempfile::tempdir().expect("tempdir");
    let case = root().join("tests/lang").join(name);
    let run = bake(&case, home.path(), &["check"]);
    if name.starts_with("ok-") {
        assert_eq!(run.code, 0, "{name}: {}", run.stderr);
    } else {
        assert_eq!(run.code, 2, "{name} should fail with a configuration error:\n{}", run.render());
    }
    assert!(!run.stderr.contains("panicked"), "{name} panicked:\n{}", run.stderr);
    settings().bind(|| insta::assert_snapshot!(format!("lang-{name}"), run.render()));
}

#[test]
fn every_fixture_has_a_test() {
    let folders: BTreeSet<String> = std::fs::read_dir(root().join("tests/lang"))
        .expect("tests/lang")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("build.kdl").is_file())
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = CASES.iter().map(|c| (*c).to_owned()).collect();
    assert!(folders.len() >= 10, "fixtures missing");
    assert_eq!(folders, listed, "add each new tests/lang folder to `cases!` (and remove deleted ones)");
}
