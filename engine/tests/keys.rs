//! Golden tests for cache keys: stable, and changing exactly where an input
//! changes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use bake_engine::graph::{KeyOptions, Plan};
use bake_engine::lang::{self, LoadOptions};
use petgraph::Direction;

const BUILD: &str = r#"
arg "GO_VERSION" default="1.19"
arg "MSG" default="hi"

stage "deps" from="golang:${GO_VERSION}" {
    workdir "/src"
    copy "go.mod" to="./"
    run "go mod download"
}

stage "build" from="deps" {
    copy "src" to="src" exclude="*.md"
    run "go build -o /out/app ./src"
}

stage "other" from="busybox" {
    copy "other.txt" to="/"
    run "echo ${MSG} > /msg"
}

stage "unused" from="busybox" {
    copy "unused.txt" to="/"
}

image "app" from="scratch" {
    copy "/out/app" to="/app" from="build"
    copy "/msg" to="/msg" from="other"
    entrypoint "/app"
}
"#;

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    std::fs::write(p.join("build.kdl"), BUILD).expect("write");
    std::fs::write(p.join("go.mod"), "module x\n").expect("write");
    std::fs::create_dir_all(p.join("src/tmp")).expect("mkdir");
    std::fs::write(p.join("src/main.go"), "package main\n").expect("write");
    std::fs::write(p.join("src/README.md"), "docs\n").expect("write");
    std::fs::write(p.join("src/tmp/scratch.txt"), "ignored\n").expect("write");
    std::fs::write(p.join("src/debug.log"), "ignored\n").expect("write");
    std::fs::write(p.join("other.txt"), "other\n").expect("write");
    std::fs::write(p.join("unused.txt"), "unused\n").expect("write");
    std::fs::write(p.join(".dockerignore"), "src/*.log\nsrc/tmp\n").expect("write");
    dir
}

/// Every node's key (pruned ones too), by node id, and each node's descendants.
struct Keys {
    keys: BTreeMap<String, String>,
    descendants: BTreeMap<String, BTreeSet<String>>,
}

fn keys(dir: &Path, index: &Path, set: &[(&str, &str)]) -> Keys {
    let options = LoadOptions {
        set: set.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect(),
        ..LoadOptions::default()
    };
    let ws = lang::load(&dir.join("build.kdl"), &options).expect("load");
    let mut plan = Plan::build(&ws, &[]).expect("plan");
    let key_options =
        KeyOptions { index_dir: Some(index.to_path_buf()), include_pruned: true, ..KeyOptions::default() };
    plan.compute_keys(&ws, &key_options).expect("keys");
    let mut keys = BTreeMap::new();
    let mut descendants = BTreeMap::new();
    for n in plan.graph.node_indices() {
        let node = &plan.graph[n];
        keys.insert(node.id.clone(), node.key.expect("every node keyed").to_hex());
        let mut seen = BTreeSet::new();
        let mut stack = vec![n];
        while let Some(m) = stack.pop() {
            for c in plan.graph.neighbors_directed(m, Direction::Outgoing) {
                if seen.insert(plan.graph[c].id.clone()) {
                    stack.push(c);
                }
            }
        }
        descendants.insert(node.id.clone(), seen);
    }
    Keys { keys, descendants }
}

/// Ids whose key differs.
fn changed(a: &Keys, b: &Keys) -> BTreeSet<String> {
    a.keys.iter().filter(|(id, k)| b.keys.get(*id) != Some(k)).map(|(id, _)| id.clone()).collect()
}

/// The nodes and all their descendants.
fn subtree(k: &Keys, roots: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for r in roots {
        out.insert((*r).to_owned());
        out.extend(k.descendants[*r].iter().cloned());
    }
    out
}

#[test]
fn same_inputs_same_keys_in_fresh_indexes_and_warm_ones() {
    let dir = fixture();
    let a = keys(dir.path(), &dir.path().join(".index-a"), &[]);
    let b = keys(dir.path(), &dir.path().join(".index-b"), &[]);
    let warm = keys(dir.path(), &dir.path().join(".index-a"), &[]);
    assert_eq!(a.keys, b.keys);
    assert_eq!(a.keys, warm.keys);
}

#[test]
fn keys_do_not_depend_on_where_the_context_lives() {
    let one = fixture();
    let two = fixture();
    let index = tempfile::tempdir().expect("tempdir");
    assert_eq!(keys(one.path(), index.path(), &[]).keys, keys(two.path(), index.path(), &[]).keys);
}

#[test]
fn editing_a_copied_file_changes_that_copy_and_its_descendants_only() {
    let dir = fixture();
    let index = tempfile::tempdir().expect("tempdir");
    let before = keys(dir.path(), index.path(), &[]);
    std::fs::write(dir.path().join("src/main.go"), "package main // edited\n").expect("write");
    let after = keys(dir.path(), index.path(), &[]);
    assert_eq!(changed(&before, &after), subtree(&before, &["build/0"]));
    assert!(changed(&before, &after).contains("image:app"));
    assert!(!changed(&before, &after).contains("deps/2"));
}

#[test]
fn touching_mtime_without_changing_content_changes_nothing() {
    let dir = fixture();
    let index = tempfile::tempdir().expect("tempdir");
    let before = keys(dir.path(), index.path(), &[]);
    let file = std::fs::File::options().write(true).open(dir.path().join("src/main.go")).expect("open");
    file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_mins(1)).expect("touch");
    drop(file);
    let after = keys(dir.path(), index.path(), &[]);
    assert_eq!(changed(&before, &after), BTreeSet::new());
}

#[test]
fn editing_ignored_or_excluded_files_changes_nothing() {
    let dir = fixture();
    let index = tempfile::tempdir().expect("tempdir");
    let before = keys(dir.path(), index.path(), &[]);
    std::fs::write(dir.path().join("src/debug.log"), "more logs\n").expect("write");
    std::fs::write(dir.path().join("src/tmp/scratch.txt"), "changed\n").expect("write");
    std::fs::write(dir.path().join("src/tmp/new.txt"), "new\n").expect("write");
    std::fs::write(dir.path().join("src/README.md"), "excluded by the copy\n").expect("write");
    let after = keys(dir.path(), index.path(), &[]);
    assert_eq!(changed(&before, &after), BTreeSet::new());
}

#[test]
fn a_new_file_under_a_copied_folder_changes_the_copy() {
    let dir = fixture();
    let index = tempfile::tempdir().expect("tempdir");
    let before = keys(dir.path(), index.path(), &[]);
    std::fs::write(dir.path().join("src/extra.go"), "package main\n").expect("write");
    let after = keys(dir.path(), index.path(), &[]);
    assert_eq!(changed(&before, &after), subtree(&before, &["build/0"]));
}

#[test]
fn changing_an_arg_changes_only_the_subtree_of_what_uses_it() {
    let dir = fixture();
    let index = tempfile::tempdir().expect("tempdir");
    let before = keys(dir.path(), index.path(), &[]);
    let msg = keys(dir.path(), index.path(), &[("MSG", "hello")]);
    assert_eq!(changed(&before, &msg), subtree(&before, &["other/1"]));
    // GO_VERSION picks the base image: everything built on it changes.
    let go = keys(dir.path(), index.path(), &[("GO_VERSION", "1.20")]);
    let changed_go = changed(&before, &go);
    // The pull node's id names the reference, so it is a new node: compare the rest.
    assert!(changed_go.contains("deps/1") && changed_go.contains("image:app"));
    assert!(!changed_go.iter().any(|id| id.starts_with("other") || id.starts_with("unused")));
}

#[test]
fn keys_are_golden() {
    // Fixed inputs give fixed keys on every machine: a change here means every
    // user's cache is invalidated, so it must come with a KEY_VERSION bump.
    let dir = fixture();
    let index = tempfile::tempdir().expect("tempdir");
    let k = keys(dir.path(), index.path(), &[]);
    insta::assert_json_snapshot!("golden-keys", k.keys);
}
