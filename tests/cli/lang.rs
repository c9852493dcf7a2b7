//! Language fixtures: `tests/lang/<case>/build.kdl`, each checked with
//! `bake check`, the rendered diagnostics snapshotted per case.

use crate::harness::{bake, root, settings};

#[test]
fn fixtures() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cases: Vec<_> = std::fs::read_dir(root().join("tests/lang"))
        .expect("tests/lang")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("build.kdl").is_file())
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "fixtures missing");
    for case in cases {
        let name = case.file_name().expect("name").to_string_lossy().into_owned();
        let run = bake(&case, home.path(), &["check"]);
        // Only `ok-*` cases load; every other case is a mistake bake must report.
        if name.starts_with("ok-") {
            assert_eq!(run.code, 0, "{name}: {}", run.stderr);
        } else {
            assert_eq!(run.code, 2, "{name} should fail with a configuration error:\n{}", run.render());
        }
        assert!(!run.stderr.contains("panicked"), "{name} panicked:\n{}", run.stderr);
        settings().bind(|| insta::assert_snapshot!(format!("lang-{name}"), run.render()));
    }
}
