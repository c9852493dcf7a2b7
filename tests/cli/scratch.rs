//! `bake cache prune` and the scratch that killed builds leave behind.

use std::path::Path;
use std::time::Duration;

use crate::harness::{bake, bake_cmd, wait_until};
use crate::run::{home_with_busybox, mounts_under, processes_with, project};

/// The names in `dir` that start with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir).map_or_else(
        |_| Vec::new(),
        |rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        },
    )
}

/// This process's start time in clock ticks since boot, as bake names its
/// scratch folders' owners.
fn own_start_time() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 1..];
    rest.split_whitespace().nth(19).expect("starttime").parse().expect("number")
}

#[test]
fn cache_prune_removes_the_scratch_of_a_killed_build_and_keeps_a_live_ones() {
    let home = home_with_busybox();
    let marker = format!("5151{}", std::process::id());
    let p = project(&format!(
        r#"
stage "first" from="busybox" {{
    run "echo done > /first"
}}
stage "long" from="first" {{
    run "mkdir -p /big && head -c 100000 /dev/zero > /big/zeros && sleep {marker}"
}}
"#
    ));
    let mut child = bake_cmd(p.path(), home.path())
        .args(["build", "long"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn bake");
    let sleeping = || processes_with(&format!("sleep {marker}"));
    wait_until(Duration::from_mins(1), "the step starts", || !sleeping().is_empty());
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    // The step's own processes end with their helper; wait for them.
    wait_until(Duration::from_secs(30), "the step ends with bake", || sleeping().is_empty());
    let tmp = home.path().join("tmp");
    assert_eq!(named(&tmp, "run-").len(), 1, "the killed step's scratch is there: {:?}", named(&tmp, "run-"));

    // A live process's scratch (this test's own PID and start time) and a
    // dead one's interrupted unpack, beside it.
    let live = format!("run-{}.{}-live", std::process::id(), own_start_time());
    std::fs::create_dir_all(tmp.join(&live).join("upper")).expect("mkdir");
    let snapshots = home.path().join("snapshots");
    std::fs::create_dir_all(snapshots.join(".unpack-4194305.1-dead/fs/etc")).expect("mkdir");

    let pruned = bake(p.path(), home.path(), &["cache", "prune"]);
    assert_eq!(pruned.code, 0, "{}", pruned.render());
    assert!(pruned.stdout.contains("of scratch left by killed builds"), "{}", pruned.stdout);
    assert_eq!(named(&tmp, "run-"), std::slice::from_ref(&live), "only the live scratch is left");
    assert!(named(&snapshots, ".unpack-").is_empty(), "the dead unpack is gone");
    assert!(mounts_under(home.path()).is_empty(), "mounts left: {:?}", mounts_under(home.path()));
    // What the killed build finished is still reused.
    let after = bake(p.path(), home.path(), &["build", "first"]);
    assert_eq!(after.code, 0, "{}", after.render());
    assert!(after.stderr.contains("0 steps run, 1 cached"), "{}", after.stderr);

    // `--all` prunes scratch too, and still spares a live one.
    std::fs::create_dir_all(tmp.join("run-4194305.1-dead/upper")).expect("mkdir");
    let all = bake(p.path(), home.path(), &["cache", "prune", "--all"]);
    assert_eq!(all.code, 0, "{}", all.render());
    assert_eq!(named(&tmp, "run-"), [live], "a live scratch survives --all");
}
