//! The scheduler and the caches end to end, judged from the JSON events
//! (`--progress json`): parallelism by event timestamps, what runs and what
//! is reused, the registry cache against a real registry, early cutoff,
//! `explain`, and two processes (or a killed one) on one store.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Run, bake, bake_cmd};
use crate::registry::TestRegistry;
use crate::run::{home_with_busybox, project};

/// `bake build --progress json ARGS`: the run and its events.
fn build_json(dir: &Path, home: &Path, args: &[&str]) -> (Run, Vec<Value>) {
    let mut all = vec!["build", "--progress", "json"];
    all.extend_from_slice(args);
    let run = bake(dir, home, &all);
    let events = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{}", run.render())))
        .collect();
    (run, events)
}

fn of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

fn nodes(events: &[Value], kind: &str) -> Vec<String> {
    of(events, kind).iter().map(|e| e["node"].as_str().unwrap_or_default().to_owned()).collect()
}

fn ts(events: &[Value], kind: &str, node: &str) -> u64 {
    of(events, kind)
        .iter()
        .find(|e| e["node"] == node)
        .and_then(|e| e["ts"].as_u64())
        .unwrap_or_else(|| panic!("no {kind} for {node} in {events:#?}"))
}

fn image_digest(events: &[Value], name: &str) -> String {
    of(events, "image")
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["digest"].as_str())
        .unwrap_or_else(|| panic!("no image {name} in {events:#?}"))
        .to_owned()
}

#[test]
fn independent_builders_overlap_and_an_unchanged_rebuild_runs_nothing() {
    let home = home_with_busybox();
    let p = project(
        r#"
stage "left" from="busybox" {
    run "sleep 2; echo left > /out"
}
stage "right" from="busybox" {
    run "sleep 2; echo right > /out"
}
image "both" from="busybox" {
    copy "/out" to="/left" from="left"
    copy "/out" to="/right" from="right"
}
"#,
    );
    let (run, events) = build_json(p.path(), home.path(), &["--jobs", "2"]);
    assert_eq!(run.code, 0, "{}", run.render());
    let (l0, l1) = (ts(&events, "started", "left/0"), ts(&events, "finished", "left/0"));
    let (r0, r1) = (ts(&events, "started", "right/0"), ts(&events, "finished", "right/0"));
    assert!(l0 < r1 && r0 < l1, "the builders did not overlap: left {l0}..{l1}, right {r0}..{r1}");
    let summary = of(&events, "summary")[0];
    assert_eq!(summary["executed"], 4, "{summary}");

    let (again, events) = build_json(p.path(), home.path(), &[]);
    assert_eq!(again.code, 0, "{}", again.render());
    assert!(of(&events, "started").is_empty(), "{events:#?}");
    assert_eq!(of(&events, "planned")[0]["run"], 0);
    assert_eq!(of(&events, "summary")[0]["cached"], 4);
}

#[test]
fn a_test_stage_runs_only_when_named_and_shared_stages_build_once() {
    let home = home_with_busybox();
    let p = project(
        r#"
stage "builder" from="busybox" {
    run "echo built > /artifact"
}
stage "test" from="builder" {
    run "grep -q built /artifact && echo tested"
}
image "one" from="busybox" {
    copy "/artifact" to="/one" from="builder"
}
image "two" from="busybox" {
    copy "/artifact" to="/two" from="builder"
}
target "default" "one" "two"
"#,
    );
    let (run, events) = build_json(p.path(), home.path(), &[]);
    assert_eq!(run.code, 0, "{}", run.render());
    let mut started = nodes(&events, "started");
    started.sort();
    assert_eq!(started, ["builder/0", "one/0", "two/0"]);
    let (run, events) = build_json(p.path(), home.path(), &["test"]);
    assert_eq!(run.code, 0, "{}", run.render());
    assert_eq!(nodes(&events, "started"), ["test/0"]);
    assert!(nodes(&events, "cached").contains(&"builder/0".to_owned()), "{events:#?}");
}

#[test]
fn keep_going_finishes_the_independent_branch() {
    let home = home_with_busybox();
    let p = project(
        r#"
stage "broken" from="busybox" {
    run "exit 4"
}
stage "after-broken" from="broken" {
    run "echo never"
}
stage "fine" from="busybox" {
    run "sleep 1; echo fine > /fine"
}
target "all" "after-broken" "fine"
"#,
    );
    let (run, events) = build_json(p.path(), home.path(), &["all", "--keep-going"]);
    assert_eq!(run.code, 1, "{}", run.render());
    assert!(run.stderr.contains("exit code 4"), "{}", run.render());
    assert_eq!(nodes(&events, "finished"), ["fine/0"], "{events:#?}");
    assert!(!nodes(&events, "started").contains(&"after-broken/0".to_owned()));

    // Without it, the failure stops the sibling.
    let (run, events) = build_json(p.path(), home.path(), &["all", "--no-cache"]);
    assert_eq!(run.code, 1, "{}", run.render());
    assert!(nodes(&events, "finished").is_empty(), "{events:#?}");
}

#[test]
fn a_builder_that_rebuilds_to_the_same_file_leaves_the_final_steps_alone() {
    let home = home_with_busybox();
    let p = project(
        r#"
stage "builder" from="busybox" {
    copy "notes.txt" to="/notes.txt"
    run "wc -l /notes.txt > /dev/null; echo constant > /app"
}
image "final" from="busybox" {
    copy "/app" to="/app" from="builder"
    run "cat /app > /checked"
}
"#,
    );
    std::fs::write(p.path().join("notes.txt"), "one\n").expect("write");
    let (run, first) = build_json(p.path(), home.path(), &[]);
    assert_eq!(run.code, 0, "{}", run.render());
    std::fs::write(p.path().join("notes.txt"), "one\ntwo\n").expect("write");

    let explained = bake(p.path(), home.path(), &["explain"]);
    assert_eq!(explained.code, 0, "{}", explained.render());
    assert!(explained.stdout.contains("files changed: notes.txt"), "{}", explained.stdout);
    assert!(explained.stdout.contains("it builds on builder/0, which changes"), "{}", explained.stdout);

    let (run, events) = build_json(p.path(), home.path(), &[]);
    assert_eq!(run.code, 0, "{}", run.render());
    let started = nodes(&events, "started");
    assert!(started.contains(&"builder/1".to_owned()), "{events:#?}");
    assert!(!started.contains(&"final/1".to_owned()), "the step after the copy ran again: {events:#?}");
    let cut = of(&events, "cached").into_iter().find(|e| e["node"] == "final/1").expect("final/1 cached");
    assert_eq!(cut["cutoff"], true, "{cut}");
    assert_eq!(image_digest(&events, "final"), image_digest(&first, "final"));
}

#[test]
fn explain_names_the_arg_and_the_definition_that_changed() {
    let home = home_with_busybox();
    let p = project(
        r#"
arg "GREETING" default="hello"
image "app" from="busybox" {
    run "echo ${GREETING} > /greeting"
    run "cat /greeting"
}
"#,
    );
    let first = bake(p.path(), home.path(), &["explain"]);
    assert!(first.stdout.contains("never built before"), "{}", first.render());
    assert_eq!(bake(p.path(), home.path(), &["build"]).code, 0);
    let none = bake(p.path(), home.path(), &["explain"]);
    assert!(none.stdout.contains("nothing to rebuild"), "{}", none.render());
    let changed = bake(p.path(), home.path(), &["explain", "--set", "GREETING=bye"]);
    assert!(changed.stdout.contains("arg GREETING: hello -> bye"), "{}", changed.render());
    assert!(changed.stdout.contains("2 steps will run (1 of them because a parent does)"), "{}", changed.render());
    let (run, events) = build_json(p.path(), home.path(), &["--set", "GREETING=bye", "--explain"]);
    assert_eq!(run.code, 0, "{}", run.render());
    assert_eq!(of(&events, "explain").len(), 2, "{events:#?}");
}

const CACHED_APP: &str = r#"
stage "builder" from="busybox" {
    run "sleep 1; mkdir -p /out && echo compiled > /out/app"
}
image "app" from="busybox" {
    copy "/out/app" to="/app" from="builder"
    run "cat /app"
    tag "ADDR/bake-test/app:1"
}
"#;

#[test]
fn a_registry_cache_rebuilds_nothing_in_a_fresh_store_and_a_dead_one_is_a_warning() {
    let cache = TestRegistry::start();
    let addr = cache.addr.clone();
    let cache_ref = format!("{addr}/bake-test/cache");
    let p = project(&CACHED_APP.replace("ADDR", &addr));

    let home = home_with_busybox();
    let (run, first) = build_json(p.path(), home.path(), &["--cache-to", &cache_ref]);
    assert_eq!(run.code, 0, "{}", run.render());
    assert_eq!(nodes(&first, "started").len(), 3, "{first:#?}");
    assert!(!of(&first, "cache_exported").is_empty(), "{first:#?}");

    // A fresh store: every step comes from the registry, the digest is the same.
    let fresh = home_with_busybox();
    let (run, events) = build_json(p.path(), fresh.path(), &["--cache-from", &cache_ref]);
    assert_eq!(run.code, 0, "{}", run.render());
    assert!(nodes(&events, "started").is_empty(), "{events:#?}");
    assert_eq!(image_digest(&events, "app"), image_digest(&first, "app"));
    // Only the final image's layers came down, from the cache.
    let fetched: Vec<&str> = of(&events, "transfer").iter().filter_map(|e| e["what"].as_str()).collect();
    assert!(!fetched.is_empty() && fetched.iter().all(|w| w.starts_with("cache ")), "{events:#?}");

    // Pushing to the same registry mounts the cached layers: nothing is pulled.
    let pusher = home_with_busybox();
    let (run, events) = build_json(p.path(), pusher.path(), &["--cache-from", &cache_ref, "--push"]);
    assert_eq!(run.code, 0, "{}", run.render());
    assert!(nodes(&events, "started").is_empty(), "{events:#?}");
    assert!(of(&events, "transfer").iter().all(|e| e["direction"] == "push"), "{events:#?}");
    // The image's tag, and its referrers tag (provenance is on by default).
    let pushed: Vec<&str> = of(&events, "pushed").iter().filter_map(|e| e["tag"].as_str()).collect();
    assert_eq!(pushed.len(), 2, "{events:#?}");
    assert!(pushed[1].contains(":sha256-"), "{pushed:?}");

    // The cache registry dies: a warning, and a local build.
    cache.kill();
    let alone = home_with_busybox();
    let (run, events) = build_json(p.path(), alone.path(), &["--cache-from", &cache_ref, "--cache-to", &cache_ref]);
    assert_eq!(run.code, 0, "{}", run.render());
    assert_eq!(nodes(&events, "started").len(), 3, "{events:#?}");
    let warnings: Vec<&str> = of(&events, "warning").iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(warnings.iter().any(|w| w.contains("registry cache")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("could not export the build cache")), "{warnings:?}");
    assert_eq!(image_digest(&events, "app"), image_digest(&first, "app"));
}

#[test]
fn the_cache_can_be_declared_in_build_kdl() {
    let cache = TestRegistry::start();
    let addr = cache.addr.clone();
    let declared = format!("cache-from \"{addr}/bake-test/kdl-cache\"\ncache-to \"{addr}/bake-test/kdl-cache\"\n");
    let p = project(&format!("{declared}{}", CACHED_APP.replace("ADDR", &addr)));
    let (run, _) = build_json(p.path(), home_with_busybox().path(), &[]);
    assert_eq!(run.code, 0, "{}", run.render());
    let (run, events) = build_json(p.path(), home_with_busybox().path(), &[]);
    assert_eq!(run.code, 0, "{}", run.render());
    assert!(nodes(&events, "started").is_empty(), "{events:#?}");
}

#[test]
fn two_processes_build_overlapping_targets_on_one_store() {
    let home = home_with_busybox();
    let p = project(
        r#"
stage "shared" from="busybox" {
    run "sleep 1; echo shared > /shared"
}
image "a" from="shared" {
    run "echo a > /a"
}
image "b" from="shared" {
    run "echo b > /b"
}
image "c" from="busybox" {
    copy "/shared" to="/c" from="shared"
}
"#,
    );
    let spawn = |targets: &[&str]| {
        bake_cmd(p.path(), home.path())
            .arg("build")
            .args(targets)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bake")
    };
    let one = spawn(&["a", "b"]);
    let two = spawn(&["b", "c"]);
    for child in [one, two] {
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let (run, events) = build_json(p.path(), home.path(), &["a", "b", "c"]);
    assert_eq!(run.code, 0, "{}", run.render());
    assert!(nodes(&events, "started").is_empty(), "{events:#?}");
}

#[test]
fn a_build_after_a_sigkill_reuses_what_finished() {
    let home = home_with_busybox();
    let p = project(
        r#"
image "app" from="busybox" {
    run "echo first > /first"
    run "sleep SLEEP; echo second > /second"
}
"#
        .replace("SLEEP", "60")
        .as_str(),
    );
    let mut child = bake_cmd(p.path(), home.path())
        .args(["build", "--progress", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn bake");
    let stdout = child.stdout.take().expect("stdout");
    let deadline = Instant::now() + Duration::from_mins(1);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read");
        if line.contains(r#""event":"started""#) && line.contains("app/1") {
            break;
        }
        assert!(Instant::now() < deadline, "the second step never started");
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");

    std::fs::write(
        p.path().join("build.kdl"),
        std::fs::read_to_string(p.path().join("build.kdl")).expect("read").replace("sleep 60", "sleep 0"),
    )
    .expect("write");
    let (run, events) = build_json(p.path(), home.path(), &[]);
    assert_eq!(run.code, 0, "{}", run.render());
    assert_eq!(nodes(&events, "cached"), ["app/0"], "{events:#?}");
    assert_eq!(nodes(&events, "started"), ["app/1"], "{events:#?}");
}

#[test]
fn cache_mounts_shared_locked_and_private() {
    let home = home_with_busybox();
    let stage = |name: &str, sharing: &str| {
        format!(
            "stage \"{name}\" from=\"busybox\" {{\n    run \"echo {name} > /c/{name}; sleep 1; ls /c | tr '\\\\n' ' '\" {{\n        cache \"/c\" id=\"{sharing}\" sharing=\"{sharing}\"\n    }}\n}}\n"
        )
    };
    // The private steps meet in a shared cache before they look, so they
    // surely run at once (a loaded machine could otherwise run them one
    // after the other, and a later private step may reuse a folder).
    let private = |name: &str, other: &str| {
        format!(
            "stage \"{name}\" from=\"busybox\" {{\n    run \"echo {name} > /c/{name}; touch /sync/{name}; i=0; until [ -e /sync/{other} ] || [ $i -ge 600 ]; do sleep 0.1; i=$((i+1)); done; ls /c | tr '\\\\n' ' '\" {{\n        cache \"/c\" id=\"private\" sharing=\"private\"\n        cache \"/sync\" id=\"sync\" sharing=\"shared\"\n    }}\n}}\n"
        )
    };
    let kdl = [
        stage("locked1", "locked"),
        stage("locked2", "locked"),
        private("private1", "private2"),
        private("private2", "private1"),
        "target \"all\" \"locked1\" \"locked2\" \"private1\" \"private2\"\n".to_owned(),
    ]
    .concat();
    let p = project(&kdl);
    let (run, events) = build_json(p.path(), home.path(), &["all", "--jobs", "4"]);
    assert_eq!(run.code, 0, "{}", run.render());
    // Locked: one after the other.
    let (a0, a1) = (ts(&events, "started", "locked1/0"), ts(&events, "finished", "locked1/0"));
    let (b0, b1) = (ts(&events, "started", "locked2/0"), ts(&events, "finished", "locked2/0"));
    assert!(a1 - a0 >= 1000 && b1 - b0 >= 1000, "{events:#?}");
    // (`started` comes before the step waits for the lock: the span of both
    // is what shows they took turns.)
    assert!(a1.max(b1) - a0.min(b0) >= 2000, "locked steps overlapped: {events:#?}");
    // Private: running at once, each in its own folder.
    let said = |node: &str| -> String {
        of(&events, "output")
            .iter()
            .filter(|e| e["node"] == node)
            .filter_map(|e| e["line"].as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (p1, p2) = (said("private1/0"), said("private2/0"));
    assert!(!(p1.contains("private1") && p1.contains("private2")), "{p1}");
    assert!(!(p2.contains("private1") && p2.contains("private2")), "{p2}");
}

/// Every blob the registry stores whose bytes start with `magic`.
fn blobs_starting_with(dir: &Path, magic: &[u8], out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            blobs_starting_with(&path, magic, out);
        } else if path.file_name().is_some_and(|n| n == "data")
            && std::fs::read(&path).is_ok_and(|bytes| bytes.starts_with(magic))
        {
            out.push(path);
        }
    }
}

#[test]
fn a_registry_cache_that_lost_its_layers_is_built_around() {
    let cache = TestRegistry::start();
    let addr = cache.addr.clone();
    let cache_ref = format!("{addr}/bake-test/cache");
    let p = project(&CACHED_APP.replace("ADDR", &addr));
    let (run, first) = build_json(p.path(), home_with_busybox().path(), &["--cache-to", &cache_ref]);
    assert_eq!(run.code, 0, "{}", run.render());

    // The registry still serves every manifest and config, but no layer.
    let mut layers = Vec::new();
    blobs_starting_with(&cache.storage(), &[0x1f, 0x8b], &mut layers);
    assert!(!layers.is_empty(), "no gzip layer in the registry's storage");
    for layer in &layers {
        std::fs::remove_file(layer).expect("remove layer");
    }

    let fresh = home_with_busybox();
    let out = p.path().join("app.tar");
    let dest = format!("type=oci,dest={}", out.display());
    let (run, events) = build_json(p.path(), fresh.path(), &["--cache-from", &cache_ref, "-o", &dest]);
    assert_eq!(run.code, 0, "{}", run.render());
    let warnings: Vec<&str> = of(&events, "warning").iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(warnings.iter().any(|w| w.contains("could not be fetched")), "{warnings:?}");
    assert!(!nodes(&events, "started").is_empty(), "nothing was built here: {events:#?}");
    assert_eq!(image_digest(&events, "app"), image_digest(&first, "app"));
    assert!(out.is_file());
}
