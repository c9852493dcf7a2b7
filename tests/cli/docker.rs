//! The one Docker engine the tests share, used one command at a time.
//!
//! Four CI runs failed because a container of an image just loaded could
//! not find a file its image holds ("exec: sh: not found", "stat ./hello:
//! no such file"), while the same image ran when tried again. Each time,
//! other tests were loading images sharing the same base layer (busybox, or
//! the debian fixture) into the same engine, or removing theirs: Docker's
//! layer store has a long record of races between concurrent loads, pulls
//! and removals of a shared layer (moby#9718, moby#13971, moby#13261). The
//! tests check bake's images, not Docker's concurrency, so every command
//! that writes or reads the engine's images goes through this module and
//! holds one lock: a load finishes before any other load, run or removal
//! starts. A container started detached holds it only while starting.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

use crate::harness::root;

static ENGINE: Mutex<()> = Mutex::new(());

/// Holds the engine for one command; a test that panicked while holding it
/// leaves nothing half-done that the next command could trip on.
fn hold() -> MutexGuard<'static, ()> {
    ENGINE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The Docker client: Debian's docker.io package, whatever else is on PATH.
fn client() -> Command {
    let debian = Path::new("/usr/bin/docker");
    Command::new(if debian.exists() { debian } else { Path::new("docker") })
}

/// Starts the engine if it is not answering yet (scripts/dockerd.sh takes
/// its own lock, so concurrent callers start it once).
pub(crate) fn start() {
    succeed(Command::new(root().join("scripts/dockerd.sh")).arg("start"));
}

/// `docker ARGS`, holding the engine, which must succeed; its stdout.
pub(crate) fn ok(args: &[&str]) -> String {
    let _engine = hold();
    succeed(client().args(args))
}

/// `docker ARGS`, holding the engine; its output, whatever the status.
pub(crate) fn output(args: &[&str]) -> Output {
    let _engine = hold();
    client().args(args).output().expect("docker")
}

/// Loads a `docker save` archive.
pub(crate) fn load(archive: &Path) {
    start();
    let _engine = hold();
    succeed(client().arg("load").arg("-i").arg(archive));
}

/// `DOCKER_BUILDKIT=1 docker build ARGS`: Docker's BuildKit, holding the
/// engine (it reads base images and writes the result); must succeed.
pub(crate) fn buildkit(args: &[&str]) -> String {
    start();
    let _engine = hold();
    succeed(client().env("DOCKER_BUILDKIT", "1").arg("build").args(args))
}

/// `docker run --rm --network host ARGS`, which must succeed; its stdout.
/// On a failure the panic carries `explain()` (what the image holds). Should
/// runc still fail to create the container, it is tried once more after a
/// second: the image is the same, so a second try tests nothing less.
pub(crate) fn run_explained(args: &[&str], explain: impl FnOnce() -> String) -> String {
    let _engine = hold();
    let attempt = || client().args(["run", "--rm", "--network", "host"]).args(args).output().expect("docker run");
    let mut out = attempt();
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("OCI runtime create failed") {
        eprintln!("docker run failed once, trying again: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(std::time::Duration::from_secs(1));
        out = attempt();
    }
    assert!(
        out.status.success(),
        "docker run {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        explain()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`run_explained`] with nothing more to say on a failure.
pub(crate) fn run(args: &[&str]) -> String {
    run_explained(args, String::new)
}

/// Runs a command, asserting it succeeds; returns stdout.
fn succeed(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
