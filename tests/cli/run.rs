//! `run` steps end to end, on the busybox fixture image (made offline by
//! scripts/fixtures.sh and built into each test's store by bake itself).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::docker;
use crate::harness::{bake, bake_cmd, wait_until};
use crate::images::{busybox_fixture, run};

/// A store that holds `docker.io/library/busybox:latest`, built by bake.
pub(crate) fn home_with_busybox() -> tempfile::TempDir {
    let home = tempfile::tempdir().expect("tempdir");
    let fixture = busybox_fixture();
    let built = bake(fixture.parent().expect("folder"), home.path(), &["-f", "build.kdl", "build"]);
    assert_eq!(built.code, 0, "{}", built.render());
    home
}

pub(crate) fn project(build: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("build.kdl"), build).expect("write");
    dir
}

/// `tar -tvzf` of every layer of a docker archive after the first (the base).
fn added_layers(archive: &Path) -> Vec<String> {
    let out = tempfile::tempdir().expect("tempdir");
    run(Command::new("tar").arg("-xf").arg(archive).arg("-C").arg(out.path()));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).expect("manifest")).expect("json");
    let layers = manifest[0]["Layers"].as_array().expect("layers").clone();
    layers
        .iter()
        .skip(1)
        .map(|l| {
            let listing = run(Command::new("tar").arg("-tzf").arg(out.path().join(l.as_str().expect("path"))));
            let mut lines: Vec<&str> = listing.lines().collect();
            lines.sort_unstable();
            lines.join(" ")
        })
        .collect()
}

#[test]
fn run_steps_create_modify_and_delete_with_exact_layers() {
    let home = home_with_busybox();
    let p = project(
        r#"
image "t" from="busybox" {
    run "mkdir -p /a/b && echo hi > /a/b/f && echo x > /tmp/y && rm /etc/group && echo more >> /etc/passwd"
    run "rm -rf /a && mkdir /a && echo new > /a/n"
    run "touch /root/.cache/kept-out-of-layers && rm /tmp/y" {
        cache "/root/.cache"
    }
    cmd "sh" "-c" "ls /a; cat /a/n; test -e /etc/group || echo no-group; tail -n 1 /etc/passwd; ls /tmp"
    tag "bake-test/run:e2e"
}
"#,
    );
    let built = bake(p.path(), home.path(), &["build", "-o", "type=docker,dest=t.tar"]);
    assert_eq!(built.code, 0, "{}", built.render());
    assert_eq!(
        added_layers(&p.path().join("t.tar")),
        ["a/ a/b/ a/b/f etc/ etc/.wh.group etc/passwd tmp/ tmp/y", "a/ a/.wh..wh..opq a/n", "tmp/ tmp/.wh.y",]
    );
    docker::load(&p.path().join("t.tar"));
    let said = docker::run(&["bake-test/run:e2e"]);
    assert_eq!(said, "n\nnew\nno-group\nmore\n");

    // Unchanged: nothing runs again.
    let again = bake(p.path(), home.path(), &["build"]);
    assert!(again.stderr.contains("0 steps run, 3 cached"), "{}", again.stderr);
}

#[test]
fn a_failing_run_points_at_its_line_with_exit_code_and_output() {
    let home = home_with_busybox();
    let p = project(
        r#"
stage "s" from="busybox" {
    run "echo preparing"
    run "echo first line; echo oops >&2; exit 7"
}
"#,
    );
    let failed = bake(p.path(), home.path(), &["build", "s"]);
    assert_eq!(failed.code, 1, "{}", failed.render());
    for needle in ["failed with exit code 7", "build.kdl:4", "exit code 7", "first line", "oops"] {
        assert!(failed.stderr.contains(needle), "missing {needle:?} in:\n{}", failed.stderr);
    }
    // The step before it was recorded; the failure was not.
    let again = bake(p.path(), home.path(), &["build", "s"]);
    assert!(again.stderr.contains("cached   s: run echo preparing"), "{}", again.stderr);
    assert_eq!(again.code, 1);
}

#[test]
fn a_secret_reaches_no_layer_store_or_output() {
    const VALUE: &str = "s3cr3t-bake-value-7d1e";
    let home = home_with_busybox();
    let p = project(
        r#"
image "uses-secret" from="busybox" {
    run "test \"$(cat /run/secrets/token)\" != '' && wc -c < /run/secrets/token > /size" {
        secret "token"
    }
    tag "bake-test/secret:e2e"
}
"#,
    );
    let out = bake_cmd(p.path(), home.path())
        .args(["build", "--secret", "id=token,env=BAKE_TEST_TOKEN", "-o", "type=docker,dest=image.tar"])
        .env("BAKE_TEST_TOKEN", VALUE)
        .output()
        .expect("run bake");
    let all_output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{all_output}");
    assert!(!all_output.contains(VALUE), "the secret is in the output");
    // Search the bytes of everything bake wrote: the store, snapshots, the archive.
    let grep =
        Command::new("grep").args(["-r", "-l", "-a", VALUE]).arg(home.path()).arg(p.path()).output().expect("grep");
    assert!(grep.stdout.is_empty(), "secret found in: {}", String::from_utf8_lossy(&grep.stdout));
    // The step did see it: the image holds its length.
    docker::load(&p.path().join("image.tar"));
    let size = docker::run(&["bake-test/secret:e2e", "cat", "/size"]);
    assert_eq!(size.trim(), VALUE.len().to_string());

    // A required secret that is not given is a clear error.
    let missing = bake(p.path(), home.path(), &["build", "--no-cache"]);
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("secret `token` was not given"), "{}", missing.stderr);
}

/// Processes whose command line contains `marker`.
pub(crate) fn processes_with(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(marker))
        .collect()
}

pub(crate) fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(&prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn interrupting_a_long_step_leaves_no_process_no_mount_and_a_usable_store() {
    for signal in [nix::sys::signal::Signal::SIGINT, nix::sys::signal::Signal::SIGTERM] {
        let home = home_with_busybox();
        let marker = format!("4242{}", std::process::id());
        let p = project(&format!(
            r#"
stage "first" from="busybox" {{
    run "echo done > /first"
}}
stage "long" from="first" {{
    run "sleep {marker} & sleep {marker}"
}}
"#
        ));
        let warm = bake(p.path(), home.path(), &["build", "first"]);
        assert_eq!(warm.code, 0, "{}", warm.render());
        let mut child = bake_cmd(p.path(), home.path())
            .args(["build", "long"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn bake");
        wait_until(Duration::from_mins(1), "the step starts", || processes_with(&format!("sleep {marker}")).len() >= 2);
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        nix::sys::signal::kill(pid, signal).expect("signal");
        let status = child.wait().expect("wait");
        // 128 + the signal's number, as shells report it (130, 143).
        assert_eq!(status.code(), Some(128 + signal as i32), "{signal}");
        assert!(processes_with(&format!("sleep {marker}")).is_empty(), "{signal}: the step's processes survived");
        assert!(mounts_under(home.path()).is_empty(), "{signal}: mounts left: {:?}", mounts_under(home.path()));
        // The store is consistent and keeps what finished.
        let after = bake(p.path(), home.path(), &["build", "first"]);
        assert_eq!(after.code, 0, "{}", after.render());
        assert!(after.stderr.contains("0 steps run, 1 cached"), "{}", after.stderr);
    }
}

/// A store that holds the Debian fixture (`debian:bookworm`, `-slim`, `12`).
fn home_with_debian() -> tempfile::TempDir {
    let home = tempfile::tempdir().expect("tempdir");
    let file = busybox_fixture().parent().and_then(Path::parent).expect("fixtures").join("debian/build.kdl");
    if !file.is_file() {
        run(Command::new(crate::harness::root().join("scripts/fixtures.sh")).args(["build", "debian"]));
    }
    let built = bake(file.parent().expect("folder"), home.path(), &["-f", "build.kdl", "build"]);
    assert_eq!(built.code, 0, "{}", built.render());
    home
}

/// The compressed size `bake images` shows for a name, in bytes (approx.).
fn image_size(stderr: &str, name: &str) -> f64 {
    let line =
        stderr.lines().find(|l| l.starts_with(&format!("image    {name} "))).unwrap_or_else(|| panic!("{stderr}"));
    let inner = line.rsplit('(').next().unwrap_or_default().trim_end_matches(')');
    let (n, unit) = inner.split_once(' ').expect("size");
    let n: f64 = n.parse().expect("number");
    n * match unit {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        _ => 1e9,
    }
}

#[test]
fn c_compiles_in_a_debian_builder_and_only_the_binary_ships() {
    let home = home_with_debian();
    let p = project(
        r#"
stage "builder" from="debian:bookworm" {
    run "apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev make"
    workdir "/src"
    copy "hello.c" "Makefile" to="./"
    run "make hello"
}

image "hello" from="debian:bookworm-slim" {
    copy "/src/hello" from="builder" to="/usr/local/bin/hello"
    entrypoint "/usr/local/bin/hello"
    tag "bake-test/hello-c:e2e"
}
"#,
    );
    std::fs::write(
        p.path().join("hello.c"),
        "#include <stdio.h>\nint main(void) { puts(\"hello from C, built by bake\"); return 0; }\n",
    )
    .expect("write");
    std::fs::write(p.path().join("Makefile"), "hello: hello.c\n\tcc -O2 -o hello hello.c\n").expect("write");
    let built = bake(p.path(), home.path(), &["build", "builder", "hello", "-o", "type=docker,dest=hello.tar"]);
    assert_eq!(built.code, 0, "{}", built.render());
    assert!(image_size(&built.stderr, "hello") < image_size(&built.stderr, "builder"), "{}", built.stderr);
    docker::load(&p.path().join("hello.tar"));
    let said = docker_run_loaded(&p.path().join("hello.tar"), &["bake-test/hello-c:e2e"]);
    assert_eq!(said, "hello from C, built by bake\n");
    // No compiler in the final image.
    let which = docker::run(&["--entrypoint", "/bin/sh", "bake-test/hello-c:e2e", "-c", "command -v cc || echo none"]);
    assert_eq!(which, "none\n");
}

#[test]
fn go_builds_a_static_binary_for_a_scratch_image() {
    let home = home_with_debian();
    let p = project(
        r#"
stage "builder" from="debian:bookworm" {
    run "apt-get update && apt-get install -y --no-install-recommends golang-go"
    env "CGO_ENABLED" "0"
    env "GOCACHE" "/root/.cache/go-build"
    workdir "/src"
    copy "go.mod" "main.go" to="./"
    run "go build -o /out/hello ." {
        cache "/root/.cache/go-build"
    }
}

image "hello" from="scratch" {
    copy "/out/hello" from="builder" to="/hello"
    entrypoint "/hello" "-name" "scratch"
    tag "bake-test/hello-go:e2e"
}
"#,
    );
    std::fs::write(p.path().join("go.mod"), "module example.com/hello\n\ngo 1.19\n").expect("write");
    std::fs::write(
        p.path().join("main.go"),
        "package main\n\nimport (\n\t\"flag\"\n\t\"fmt\"\n)\n\nfunc main() {\n\tname := flag.String(\"name\", \"world\", \"who\")\n\tflag.Parse()\n\tfmt.Printf(\"hello, %s, from Go\\n\", *name)\n}\n",
    )
    .expect("write");
    let built = bake(p.path(), home.path(), &["build", "builder", "hello", "-o", "type=docker,dest=hello.tar"]);
    assert_eq!(built.code, 0, "{}", built.render());
    assert!(image_size(&built.stderr, "hello") * 20.0 < image_size(&built.stderr, "builder"), "{}", built.stderr);
    docker::load(&p.path().join("hello.tar"));
    let said = docker_run_loaded(&p.path().join("hello.tar"), &["bake-test/hello-go:e2e"]);
    assert_eq!(said, "hello, scratch, from Go\n");
}

/// `docker run --rm --network host ARGS` of an image just loaded from
/// `archive`; its stdout. On a failure, what the archive holds.
fn docker_run_loaded(archive: &Path, args: &[&str]) -> String {
    docker::run_explained(args, || format!("what {} holds:\n{}", archive.display(), archive_listing(archive)))
}

/// The entries of a `docker save` archive, and of every layer in it.
fn archive_listing(archive: &Path) -> String {
    let script = r#"tar -tvf "$1"; for l in $(tar -tf "$1" | grep -E '^blobs/|\.tar$'); do echo "== $l"; tar -xOf "$1" "$l" | tar -tvf - 2>/dev/null; done"#;
    let out = Command::new("sh").args(["-c", script, "sh"]).arg(archive).output().expect("sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(start, end)` of a step, from the `/proc/uptime` lines it printed.
fn interval(stderr: &str, node: &str) -> (f64, f64) {
    let times: Vec<f64> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{node} | ")))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(times.len(), 2, "{node} in:\n{stderr}");
    (times[0], times[1])
}

#[test]
fn independent_steps_run_in_parallel_and_jobs_limits_them() {
    let home = home_with_busybox();
    let p = project(
        r#"
stage "a" from="busybox" {
    run "cat /proc/uptime; sleep 2; cat /proc/uptime"
}
stage "b" from="busybox" {
    run "cat /proc/uptime; sleep 2; cat /proc/uptime"
}
target "both" "a" "b"
"#,
    );
    let parallel = bake(p.path(), home.path(), &["build", "both", "--jobs", "2"]);
    assert_eq!(parallel.code, 0, "{}", parallel.render());
    let (a, b) = (interval(&parallel.stderr, "a/0"), interval(&parallel.stderr, "b/0"));
    assert!(a.0 < b.1 && b.0 < a.1, "the steps did not overlap: a={a:?} b={b:?}");

    let one = bake(p.path(), home.path(), &["build", "both", "--jobs", "1", "--no-cache"]);
    assert_eq!(one.code, 0, "{}", one.render());
    let (a, b) = (interval(&one.stderr, "a/0"), interval(&one.stderr, "b/0"));
    assert!(a.1 <= b.0 || b.1 <= a.0, "--jobs 1 ran them together: a={a:?} b={b:?}");
}

#[test]
fn a_failing_step_stops_the_steps_running_beside_it() {
    let home = home_with_busybox();
    let p = project(
        r#"
stage "slow" from="busybox" {
    run "sleep 30"
}
stage "broken" from="busybox" {
    run "sleep 0.2; exit 3"
}
target "both" "slow" "broken"
"#,
    );
    let failed = bake(p.path(), home.path(), &["build", "both"]);
    assert_eq!(failed.code, 1, "{}", failed.render());
    assert!(failed.stderr.contains("failed with exit code 3"), "{}", failed.stderr);
    // The slow step was stopped, not waited for: it never finished.
    assert!(!failed.stderr.contains("done     slow/0"), "{}", failed.stderr);
}

/// `security "insecure"` needs `--allow security.insecure`: without it the
/// build stops before running anything, at the `security` node; with it the
/// step has no seccomp filter and every capability.
#[test]
fn insecure_steps_need_the_allow_flag() {
    let home = home_with_busybox();
    let p = project(
        r#"
stage "t" from="busybox" {
    run "grep Seccomp: /proc/self/status > /seccomp" {
        security "insecure"
        network "none"
    }
}
artifact "out" from="t" path="/seccomp" dest="out/seccomp"
"#,
    );
    let refused = bake(p.path(), home.path(), &["build", "--progress", "plain", "out"]);
    assert_eq!(refused.code, 2, "{}", refused.render());
    assert!(refused.stderr.contains("bake::exec::insecure_not_allowed"), "{}", refused.render());
    assert!(refused.stderr.contains("security \"insecure\""), "{}", refused.render());
    assert!(refused.stderr.contains("--allow security.insecure"), "{}", refused.render());
    assert!(!p.path().join("out/seccomp").exists());
    let allowed = bake(p.path(), home.path(), &["build", "--progress", "plain", "--allow", "security.insecure", "out"]);
    assert_eq!(allowed.code, 0, "{}", allowed.render());
    assert_eq!(std::fs::read_to_string(p.path().join("out/seccomp")).expect("artifact"), "Seccomp:\t0\n");

    // `bake watch` takes the same flag: without it the build is refused
    // (and watching goes on), with it the step runs unconfined.
    std::fs::remove_dir_all(p.path().join("out")).expect("rm out");
    for (args, runs) in [(&["watch", "out"][..], false), (&["watch", "--allow", "security.insecure", "out"][..], true)]
    {
        let log = p.path().join("watch.log");
        let file = std::fs::File::create(&log).expect("log");
        let mut child = bake_cmd(p.path(), home.path())
            .args(args)
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("bake watch");
        let said = || std::fs::read_to_string(&log).unwrap_or_default();
        if runs {
            wait_until(Duration::from_mins(1), "the allowed step runs", || p.path().join("out/seccomp").exists());
        } else {
            wait_until(Duration::from_mins(1), "the refusal", || said().contains("bake::exec::insecure_not_allowed"));
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal");
        child.wait().expect("wait");
        assert_eq!(p.path().join("out/seccomp").exists(), runs, "{args:?}:\n{}", said());
    }
    assert_eq!(std::fs::read_to_string(p.path().join("out/seccomp")).expect("artifact"), "Seccomp:\t0\n");
}
