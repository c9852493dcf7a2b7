//! `bake run IMAGE [-- ARGS...]` end to end, on the busybox fixture image:
//! config, overrides, stdio, exit codes, signals, terminals, and that
//! nothing (process, mount, folder) is left behind.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::{Run, bake};
use crate::registry::TestRegistry;
use crate::run::{home_with_busybox, mounts_under, processes_with};

/// Runs `bake ARGS` with `stdin` as its input.
fn bake_with_input(home: &Path, args: &[&str], stdin: &[u8], extra_env: &[(&str, &str)]) -> Run {
    let mut child = Command::new(crate::harness::bake_bin())
        .args(args)
        .env("BAKE_HOME", home)
        .env("NO_COLOR", "1")
        .env("COLUMNS", "80")
        .envs(extra_env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bake");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("wait");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Waits, boundedly, until `done` holds.
fn poll(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// No mount under the home and no container folder in its `tmp/`.
fn assert_clean(home: &Path) {
    assert!(mounts_under(home).is_empty(), "mounts left: {:?}", mounts_under(home));
    let tmp = home.join("tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", tmp.display());
}

fn ok(home: &Path, args: &[&str]) -> String {
    let ran = bake(home, home, args);
    assert_eq!(ran.code, 0, "{}", ran.render());
    ran.stdout
}

#[test]
fn config_and_overrides_decide_the_process() {
    let home = home_with_busybox();
    let p = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        p.path().join("build.kdl"),
        r#"
image "app" from="busybox" {
    run "echo 'app:x:1234:1234::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1234:' >> /etc/group"
    env "GREETING" "hello"
    workdir "/srv/data"
    user "app"
    entrypoint "/bin/sh" "-c" "echo \"$GREETING from $(pwd) as $(id -u):$(id -g) args:$0 $*\"" "zero"
    cmd "one"
}
"#,
    )
    .expect("write");
    let built = bake(p.path(), home.path(), &["build"]);
    assert_eq!(built.code, 0, "{}", built.render());
    let h = home.path();
    assert_eq!(ok(h, &["run", "app"]), "hello from /srv/data as 1234:1234 args:zero one\n");
    // ARGS replace cmd, with or without `--`.
    assert_eq!(ok(h, &["run", "app", "x", "-y"]), "hello from /srv/data as 1234:1234 args:zero x -y\n");
    assert_eq!(ok(h, &["run", "app", "--", "x"]), "hello from /srv/data as 1234:1234 args:zero x\n");
    assert_eq!(
        ok(h, &["run", "-e", "GREETING=hi", "-w", "/tmp", "-u", "0:0", "app"]),
        "hi from /tmp as 0:0 args:zero one\n"
    );
    // --entrypoint drops the image's cmd; the user stays the image's.
    assert_eq!(ok(h, &["run", "--entrypoint", "id", "app", "-u"]), "1234\n");
    // A volume, read-only.
    let shared = tempfile::tempdir().expect("tempdir");
    std::fs::write(shared.path().join("f"), "from the host\n").expect("write");
    let volume = format!("{}:/mnt/shared:ro", shared.path().display());
    assert_eq!(
        ok(h, &["run", "-u", "0", "-v", &volume, "--entrypoint", "cat", "app", "/mnt/shared/f"]),
        "from the host\n"
    );
    let refused = bake(h, h, &["run", "-u", "0", "-v", &volume, "--entrypoint", "touch", "app", "/mnt/shared/g"]);
    assert_eq!(refused.code, 1, "{}", refused.render());
    assert!(!shared.path().join("g").exists());
    assert_clean(h);
}

#[test]
fn stdio_and_exit_codes_pass_through() {
    let home = home_with_busybox();
    let h = home.path();
    for backend in ["overlay", "copy"] {
        let env = [("BAKE_SANDBOX_BACKEND", backend)];
        let piped = bake_with_input(h, &["run", "-i", "busybox", "sh", "-c", "cat; echo err >&2"], b"piped in\n", &env);
        assert_eq!((piped.code, piped.stdout.as_str(), piped.stderr.as_str()), (0, "piped in\n", "err\n"), "{backend}");
        // Without -i the command reads /dev/null.
        let closed = bake_with_input(h, &["run", "busybox", "cat"], b"ignored\n", &env);
        assert_eq!((closed.code, closed.stdout.as_str()), (0, ""), "{backend}");
        let seven = bake_with_input(h, &["run", "busybox", "sh", "-c", "exit 7"], b"", &env);
        assert_eq!(seven.code, 7, "{backend}: {}", seven.render());
        // Files written in one run are gone in the next.
        let wrote = bake_with_input(h, &["run", "busybox", "sh", "-c", "echo x > /kept; cat /kept"], b"", &env);
        assert_eq!(wrote.stdout, "x\n");
        let gone = bake_with_input(h, &["run", "busybox", "ls", "/kept"], b"", &env);
        assert_eq!(gone.code, 1, "{backend}: {}", gone.render());
        assert_clean(h);
    }
    let missing = bake(h, h, &["run", "busybox", "no-such-program"]);
    assert_eq!(missing.code, 127, "{}", missing.render());
    assert!(missing.stderr.contains("`no-such-program` was not found in the image"), "{}", missing.stderr);
    let bad = bake(h, h, &["run", "Not/A/Valid:Ref!"]);
    assert_eq!(bad.code, 2, "{}", bad.render());
    assert!(bad.stderr.contains("no image `Not/A/Valid:Ref!` in the local store"), "{}", bad.stderr);
    let no_cmd = bake(h, h, &["run", "--entrypoint", "", "busybox"]);
    assert_eq!(no_cmd.code, 2, "{}", no_cmd.render());
    assert_clean(h);
}

#[test]
fn missing_images_are_pulled_and_unknown_ones_are_usage_errors() {
    let registry = TestRegistry::start();
    let addr = registry.addr.clone();
    let publisher = home_with_busybox();
    let fixture = crate::images::busybox_fixture();
    let pushed = bake(
        fixture.parent().expect("folder"),
        publisher.path(),
        &["-f", "build.kdl", "build", "--push", "--set", &format!("REGISTRY={addr}")],
    );
    assert_eq!(pushed.code, 0, "{}", pushed.render());
    let home = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let image = format!("{addr}/library/busybox:1.35");
    let pulled = bake(h, h, &["run", &image, "echo", "pulled"]);
    assert_eq!(pulled.code, 0, "{}", pulled.render());
    assert_eq!(pulled.stdout, "pulled\n");
    assert!(pulled.stderr.contains(&format!("pull     {image}")), "{}", pulled.stderr);
    // Now local: no second pull.
    let again = bake(h, h, &["run", &image, "true"]);
    assert!(!again.stderr.contains("pull "), "{}", again.render());
    let unknown = bake(h, h, &["run", &format!("{addr}/library/nothing:1")]);
    assert_eq!(unknown.code, 2, "{}", unknown.render());
    assert!(unknown.stderr.contains("cannot be pulled"), "{}", unknown.stderr);
}

/// Spawns `bake run ...` with stdout read line by line on a thread.
fn spawn_run(home: &Path, args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new(crate::harness::bake_bin())
        .arg("run")
        .args(args)
        .env("BAKE_HOME", home)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn bake");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

fn signal(child: &std::process::Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, signal).expect("signal");
}

#[test]
fn signals_are_forwarded_and_exit_codes_follow_them() {
    use nix::sys::signal::Signal;
    let home = home_with_busybox();
    let h = home.path();
    let script = "trap 'echo got TERM; exit 5' TERM; echo ready; while true; do sleep 0.05; done";
    let (mut child, lines) = spawn_run(h, &["busybox", "sh", "-c", script]);
    assert_eq!(lines.recv_timeout(Duration::from_secs(30)).expect("ready"), "ready");
    signal(&child, Signal::SIGTERM);
    assert_eq!(lines.recv_timeout(Duration::from_secs(30)).expect("trap"), "got TERM");
    assert_eq!(child.wait().expect("wait").code(), Some(5));

    // A process without a handler gets the default action (it is not PID 1).
    let (mut child, lines) = spawn_run(h, &["busybox", "sh", "-c", "echo ready; exec sleep 1000"]);
    assert_eq!(lines.recv_timeout(Duration::from_secs(30)).expect("ready"), "ready");
    signal(&child, Signal::SIGINT);
    assert_eq!(child.wait().expect("wait").code(), Some(130));
    assert_clean(h);
}

#[test]
fn killing_bake_leaves_no_process_mount_or_folder() {
    let home = home_with_busybox();
    let h = home.path();
    let marker = format!("4343{}", std::process::id());
    let (mut child, lines) = spawn_run(h, &["busybox", "sh", "-c", &format!("echo ready; sleep {marker}")]);
    assert_eq!(lines.recv_timeout(Duration::from_secs(30)).expect("ready"), "ready");
    poll("the sleep to start", || !processes_with(&format!("sleep {marker}")).is_empty());
    signal(&child, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    poll("the container to go", || processes_with(&format!("sleep {marker}")).is_empty());
    poll("the helper to clean up", || {
        mounts_under(h).is_empty() && std::fs::read_dir(h.join("tmp")).is_ok_and(|mut d| d.next().is_none())
    });
}

#[test]
fn a_terminal_is_made_in_the_container() {
    let home = home_with_busybox();
    let h = home.path();
    let bake_bin = crate::harness::bake_bin();
    let bake_bin = bake_bin.display();
    // `script` gives bake a terminal of its own, 40x100.
    let out = Command::new("script")
        .args(["-qec", &format!("stty rows 40 cols 100; {bake_bin} run -t busybox sh -c 'tty; stty size; exit 3'")])
        .arg("/dev/null")
        .env("BAKE_HOME", h)
        .stdin(Stdio::null())
        .output()
        .expect("script");
    // Both terminals turn \n into \r\n (bake's own is not raw without -i).
    let said = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(said.contains("/dev/pts/0\n40 100\n"), "{said:?}");
    assert_eq!(out.status.code(), Some(3), "{said:?}");
    // Input typed at the terminal reaches the container with -it.
    let mut child = Command::new("script")
        .args(["-qec", &format!("stty rows 40 cols 100; {bake_bin} run -it busybox sh -c 'read line; echo got:$line'")])
        .arg("/dev/null")
        .env("BAKE_HOME", h)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(b"typed\r").expect("type");
    let out = child.wait_with_output().expect("wait");
    drop(input);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("got:typed"), "{said:?}");
    // Without -t there is no terminal.
    let plain = bake(h, h, &["run", "busybox", "tty"]);
    assert_eq!((plain.code, plain.stdout.as_str()), (1, "not a tty\n"));
    assert_clean(h);
}
