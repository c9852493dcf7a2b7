//! Runs the real `bake` binary and formats what it did for snapshots.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The repository root: `BAKE_TEST_ROOT` when set (a copy of the checkout
/// that the test user of scripts/test-rootless.sh can read).
pub(crate) fn root() -> PathBuf {
    if let Some(root) = std::env::var_os("BAKE_TEST_ROOT") {
        return PathBuf::from(root);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The `bake` binary under test: `BAKE_TEST_BIN` when set (a copy the test
/// user can run), else the one cargo built.
pub(crate) fn bake_bin() -> PathBuf {
    std::env::var_os("BAKE_TEST_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_bake")), PathBuf::from)
}

/// Output of one run: exit code, stdout, stderr.
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// Everything, for a snapshot.
    pub(crate) fn render(&self) -> String {
        format!("exit: {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// `bake` in `dir` with a private BAKE_HOME, no colour, 80 columns: the
/// command, for a test to add arguments, env or pipes to before it runs.
pub(crate) fn bake_cmd(dir: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(bake_bin());
    cmd.current_dir(dir).env("BAKE_HOME", home).env("NO_COLOR", "1").env("COLUMNS", "80").env_remove("CLICOLOR_FORCE");
    cmd
}

/// Runs `cmd` to its end and keeps what it printed.
pub(crate) fn finish(cmd: &mut Command) -> Run {
    let out = cmd.output().expect("run bake");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `bake ARGS` in `dir` with a private BAKE_HOME, no colour, 80 columns.
pub(crate) fn bake(dir: &Path, home: &Path, args: &[&str]) -> Run {
    finish(bake_cmd(dir, home).args(args))
}

/// Polls `done` every 20 ms until it holds; fails the test, naming `what`,
/// if it does not within `limit`.
pub(crate) fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit, polling, for at most `limit`; its exit code
/// and how long it took, or `None` (and the child killed) if it did not.
pub(crate) fn exit_within(child: &mut Child, limit: Duration) -> Option<(i32, Duration)> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some((status.code().unwrap_or(-1), start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// insta settings that hide this machine's paths.
pub(crate) fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    let root = root().display().to_string();
    s.add_filter(&regex_escape(&root), "[ROOT]");
    s.add_filter(r"/tmp/\.tmp[A-Za-z0-9]+", "[TMP]");
    s.set_prepend_module_to_snapshot(false);
    s
}

fn regex_escape(s: &str) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}
