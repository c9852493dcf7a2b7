//! `bake graph` and `bake build --dry-run` on real folders.

use crate::harness::{bake, root, settings};

#[test]
fn dry_run_shows_every_node_with_key_and_selection() {
    let home = tempfile::tempdir().expect("tempdir");
    let dir = root().join("tests/lang/ok-full");
    let run = bake(&dir, home.path(), &["build", "--dry-run"]);
    assert_eq!(run.code, 0, "{}", run.render());
    settings().bind(|| insta::assert_snapshot!("dry-run-default", run.render()));
    let ci = bake(&dir, home.path(), &["build", "--dry-run", "ci"]);
    assert_eq!(ci.code, 0, "{}", ci.render());
    settings().bind(|| insta::assert_snapshot!("dry-run-ci", ci.render()));
}

#[test]
fn graph_formats() {
    let home = tempfile::tempdir().expect("tempdir");
    let dir = root().join("tests/lang/ok-full");
    for format in ["dot", "mermaid", "json"] {
        let run = bake(&dir, home.path(), &["graph", "--format", format]);
        assert_eq!(run.code, 0, "{}", run.render());
        settings().bind(|| insta::assert_snapshot!(format!("graph-{format}"), run.render()));
    }
    let run = bake(&dir, home.path(), &["graph", "--format", "json", "test"]);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    let needed: Vec<&str> = doc["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["needed"] == true)
        .map(|n| n["id"].as_str().expect("id"))
        .collect();
    assert!(needed.contains(&"stage:test"));
    assert!(!needed.contains(&"image:app"), "app is pruned when only test is asked for");
}

#[test]
fn usage_errors_exit_2() {
    let home = tempfile::tempdir().expect("tempdir");
    let dir = root().join("tests/lang/ok-full");
    let unknown = bake(&dir, home.path(), &["build", "--dry-run", "tset"]);
    assert_eq!(unknown.code, 2);
    let set = bake(&dir, home.path(), &["check", "--set", "VERSON=1"]);
    assert_eq!(set.code, 2);
    let nofile = bake(home.path(), home.path(), &["check"]);
    assert_eq!(nofile.code, 2);
    let badflag = bake(&dir, home.path(), &["build", "--frobnicate"]);
    assert_eq!(badflag.code, 2);
    settings().bind(|| {
        insta::assert_snapshot!("usage-unknown-target", unknown.render());
        insta::assert_snapshot!("usage-unknown-set", set.render());
    });
}

#[test]
fn context_errors_point_at_the_source_that_failed() {
    let home = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    std::fs::write(
        p.join("build.kdl"),
        "stage \"s\" from=\"busybox\" {\n    copy \"main.go\" \"mian.go\" to=\"/\"\n    copy \"app.log\" to=\"/\"\n    copy \"src\" to=\"/\" exclude=\"[x\"\n}\n",
    )
    .expect("write");
    std::fs::write(p.join("main.go"), "package main\n").expect("write");
    std::fs::write(p.join("app.log"), "log\n").expect("write");
    std::fs::create_dir(p.join("src")).expect("mkdir");
    std::fs::write(p.join(".dockerignore"), "*.log\n").expect("write");
    let run = bake(p, home.path(), &["build", "--dry-run"]);
    assert_eq!(run.code, 1, "{}", run.render());
    settings().bind(|| insta::assert_snapshot!("context-errors", run.render()));
}
