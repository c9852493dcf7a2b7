//! The sandbox: runs one `run` step in a root filesystem made of snapshot
//! folders, and leaves the step's changes in an upper folder in overlay form.
//!
//! # Processes
//!
//! bake is multi-threaded (tokio), and `fork` in a threaded process may leave
//! the child with a lock some other thread held. So [`run`] re-executes
//! bake's own binary as a helper (`/proc/self/exe __bake-sandbox`, the CLI
//! calls [`helper_main`] before it parses anything) and the helper, which
//! starts no runtime and no thread, does the forking:
//!
//! ```text
//! bake ──spawn──▶ helper: host namespaces; prepares, supervises, cleans up, reports
//!                   └─fork─▶ PID 1 of a new PID namespace: mounts, pivot_root, reaps
//!                              └─fork─▶ the step: groups, gid, uid, execve
//! ```
//!
//! - The helper calls `unshare(CLONE_NEWPID)`, which only applies to its
//!   children, then forks: the child is PID 1 and unshares the mount, UTS,
//!   IPC (and, for `network "none"`, network) namespaces itself. The helper
//!   never enters them, so it keeps the host's view of the filesystem for the
//!   cleanup (pivot_root re-roots every process of a mount namespace).
//! - `network "private"` (the default): the helper makes the network
//!   namespace itself, starts slirp4netns on it (in the host's namespaces,
//!   before the PID namespace), forks PID 1 inside it and returns to the
//!   host's; PID 1 starts the step once slirp4netns is ready (see
//!   `nat.rs`).
//! - PID 1 stays a tiny init: it forks the step, reaps every process, and
//!   exits with the step's code (128 + signal when a signal killed it) as
//!   soon as the step ends. Its end kills whatever the step left running.
//!   It keeps SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and
//!   SIGWINCH blocked and passes them on to the step when they come (only a
//!   container's helper sends any), so the step meets them with the default
//!   actions rather than PID 1's "ignore what has no handler".
//! - The helper calls `setsid`: a Ctrl-C in the terminal reaches bake only
//!   (bake decides to cancel), and the step has no controlling terminal.
//! - The request goes to the helper as JSON over its stdin, a Unix socket;
//!   the report (exit code, cancelled, or a typed setup failure) comes back
//!   on the same socket. The step's stdout and stderr are the helper's, pipes
//!   that bake reads while the step runs: nothing is copied in between.
//!   Setup failures inside the sandbox travel to the helper through a
//!   close-on-exec pipe that reaches EOF exactly when the step's `execve`
//!   succeeds.
//!
//! # The mount sequence (PID 1)
//!
//! `unshare`; `mount / MS_REC|MS_PRIVATE` (nothing propagates to the host);
//! overlay `lowerdir=SKEL:TOP:...:BOTTOM,upperdir,workdir` with
//! `redirect_dir=off,index=off,metacopy=off` (so the upper folder is a plain
//! diff: no redirect xattrs, no metadata-only copies) on an empty folder,
//! `nodev`; a `nodev` tmpfs `/dev` with `null zero full random urandom tty`
//! bound from the host (each bind is a mount of its own, with the host
//! devtmpfs's flags, so they work and nothing else there does), a private
//! devpts (`newinstance,ptmxmode=0666`) with `/dev/ptmx` linked to it, a
//! tmpfs `/dev/shm` and the `fd`/`stdin`/`stdout`/`stderr` links; a fresh
//! `/proc`; `/sys` read-only; Docker's read-only paths (`/proc/sys`, ...)
//! bound read-only onto themselves and its masked paths covered
//! (`/dev/null` on a file, a read-only tmpfs on a folder); `/etc/hosts`
//! (generated) and `/etc/resolv.conf` (the host's, or slirp4netns's
//! forwarder) bound read-only; caches bound read-write and secrets
//! read-only, every bind `nodev,nosuid`; `pivot_root(".", ".")` and
//! `umount2(".", MNT_DETACH)` (no `put_old` folder needed); `sethostname`;
//! loopback up in a network namespace of the step's own; the working folder
//! created (0755 root, part of the step's changes, as Docker does). The
//! step's process then resets every signal to its default action, shrinks
//! its capability bounding set to Docker's default set (no CAP_SYS_ADMIN: a
//! step cannot mount, just as in `docker build`) and sets its effective and
//! permitted sets to it (inheritable and ambient empty), calls `setgroups`,
//! `setgid`, `setuid`, then `PR_SET_NO_NEW_PRIVS` and loads Docker's
//! seccomp profile (`seccomp/`), and `execve`s. `security "insecure"` keeps
//! every capability and skips the masks, the read-only paths, no_new_privs
//! and seccomp. No rlimits are set: root here has no CAP_SYS_RESOURCE. The
//! calls go through the `sys::Sys` trait, so unit tests check this order
//! without root.
//!
//! An image with many layers does not fit one mount's option page with
//! absolute paths; the lowers are then named through short symlinks (`0`,
//! `1`, ...) in the scratch folder, which PID 1 enters before mounting.
//!
//! # The upper folder stays clean
//!
//! Mount targets are resolved in the merged view of the lowers, symlinks
//! followed inside the image (never on the host). A target the image lacks
//! (`/proc` of a scratch image, `/run/secrets/x`, `/root/.cache`) is created
//! in a *skeleton* folder that is mounted as the topmost lower layer; the
//! folders above it are mirrored there with the image's mode, owner and
//! times. So the step sees its mountpoints, and no mountpoint is ever created
//! through the overlay: the upper holds what the step wrote and nothing else.
//! (The copy backend creates them in its private copy and its diff leaves
//! them out.) The upper's own root is given the image root's mode and owner
//! first, since it becomes the container's `/`.
//!
//! # Cleanup guarantees
//!
//! Every mount lives in PID 1's private mount namespace: the host never sees
//! them, and they vanish with the namespace, which dies with its last
//! process. slirp4netns, the one process outside it, is the helper's child:
//! SIGKILLed before the helper reports (init reaps it once the kernel has
//! torn its tap device down), and ended by its exit pipe when the helper
//! dies. PID 1's death kills every process of its PID namespace, and the
//! kernel reaps PID 1 only after they are all gone. So:
//!
//! - **Cancellation** (the `CancellationToken` fires): bake sends SIGTERM to
//!   the helper, which SIGKILLs PID 1, waits for it, removes its scratch
//!   folder and reports [`SandboxError::Cancelled`]. When [`run`] returns,
//!   no process of the step and no mount remain. (SIGKILL follows if the
//!   helper does not end within [`KILL_GRACE`].)
//! - **bake is killed** (SIGKILL, a crash): the helper and PID 1 both have
//!   `PR_SET_PDEATHSIG = SIGKILL`, so the chain dies and takes the namespace
//!   with it. Each checks after arming it that its parent is still there. The
//!   scratch folder (`.sandbox-*` beside the upper) is then left behind.
//! - **The future is dropped**: the helper is spawned with `kill_on_drop`,
//!   which starts the same chain.
//!
//! The helper blocks SIGTERM from its first instruction, so a cancellation
//! during its preparation (copying a root filesystem can take a while) is
//! seen before the fork and still ends in a cleanup. One caveat of
//! `PR_SET_PDEATHSIG`: it fires when the *thread* that spawned the helper
//! ends. tokio's worker threads live as long as the runtime, so call [`run`]
//! from a task, not from a `spawn_blocking` thread that may retire while the
//! step runs.
//!
//! `/proc/self/exe` must answer [`HELPER_ARG`]: the `bake` binary does;
//! a test binary that runs steps needs its own `main` that does the same
//! (see `engine/tests/sandbox.rs`).
//!
//! # Containers
//!
//! `bake run` uses the same helper and init for a whole image: the caller's
//! stdio (or a terminal made inside the container), signals passed on to
//! the process, a throwaway upper folder that the helper removes; see
//! `container.rs`.
//!
//! # Rootless
//!
//! Started by a user that is not root, bake is already in a user namespace
//! of its own when it calls the helper (see `userns.rs`): everything above
//! happens there, owned by that namespace, with three differences. overlayfs
//! gets `userxattr` (its opaque folders are `user.overlay.opaque`); a
//! private network is entered by PID 1 itself, since the helper could not
//! return to the host's; and with the host's network, `/sys` is the host's,
//! bound read-only. With a single-id map, `setgroups` is skipped (denied) and
//! devpts has no `tty` group. `doctor.rs` checks what this needs.
//!
//! # Backends
//!
//! [`probe`] mounts a tiny overlay in a private mount namespace (in a helper)
//! once per filesystem. Where that fails (bake inside a container whose root
//! is itself an overlay; a filesystem without trusted xattrs) the copy
//! backend copies the lowers into a private folder, runs there, and writes
//! the difference into the upper in overlay form (see `copy.rs`). Setting
//! `BAKE_SANDBOX_BACKEND=copy` (or `overlay`) skips the probe.

mod container;
mod copy;
pub mod doctor;
mod helper;
mod init;
mod nat;
mod rootfs;
mod seccomp;
mod signal;
mod sys;
mod tty;
mod user;
mod userns;
mod wire;

pub use container::{ContainerIo, ContainerSpec, Control, FORWARDED_SIGNALS, run_container};
pub(crate) use helper::{CONTAINER_SCRATCH, PROBE_SCRATCH};
pub(crate) use signal::normalize as normalize_signal;
pub use signal::stop_signal;
pub use tty::size as terminal_size;
pub use userns::{
    Entered, IdRange, SubRange, enter as enter_user_namespace, entered, nested, opaque_xattr, rootless, sub_ranges,
};

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use miette::Diagnostic;
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::lang::Network;
use wire::{Envelope, Failure, Report, Request, WireSpec};

/// The first argument that makes bake's binary the sandbox helper.
pub const HELPER_ARG: &str = "__bake-sandbox";

/// The environment variable that forces a backend: `overlay` or `copy`.
pub const BACKEND_VAR: &str = "BAKE_SANDBOX_BACKEND";

/// The userspace NAT of a private network (Debian package `slirp4netns`).
pub const NAT_PROGRAM: &str = "slirp4netns";

/// How long a cancelled helper gets to clean up before it is killed.
pub const KILL_GRACE: Duration = Duration::from_secs(10);

/// One `run` step.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Snapshot folders, bottom first (empty: `scratch`).
    pub lowers: Vec<PathBuf>,
    /// A fresh empty folder that receives the step's changes in overlay form.
    /// Its own mode and owner are set to the image root's.
    pub upper: PathBuf,
    /// The overlay work folder: empty, on the upper's filesystem. The
    /// sandbox also creates a short-lived `.sandbox-*` folder beside `upper`.
    pub work: PathBuf,
    /// The command, e.g. `["/bin/sh", "-c", "apt-get update"]`; a program
    /// without a slash is searched in the environment's `PATH` in the image.
    pub args: Vec<String>,
    /// The whole environment; `PATH` and `HOME` are added when missing.
    pub env: Vec<(String, String)>,
    /// Absolute; created (0755, root) when missing.
    pub cwd: String,
    /// `name`, `uid`, `name:group` or `uid:gid`, resolved in the image's
    /// `/etc/passwd` and `/etc/group`; `None` is root.
    pub user: Option<String>,
    pub hostname: String,
    /// [`Network::Private`]: a network namespace of its own, with outbound
    /// access through slirp4netns; [`Network::None`]: one with only `lo`,
    /// up; [`Network::Host`]: the host's.
    pub network: Network,
    /// `security "insecure"`: every capability, no seccomp filter, no
    /// masked or read-only paths (the caller checks it was allowed).
    pub insecure: bool,
    /// Caches and secrets; never part of the upper.
    pub mounts: Vec<Mount>,
}

/// A host file or folder bound into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub source: PathBuf,
    /// Absolute in the container; created outside the upper when missing.
    pub target: String,
    pub readonly: bool,
}

/// Which output of the step a chunk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// How the step's filesystem is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// overlayfs over the snapshot folders.
    Overlay,
    /// A private copy of the lowers, diffed afterwards; `reason` says why
    /// overlayfs is not used.
    Copy { reason: String },
    /// Steps cannot run here at all (no namespaces, no mounts).
    Unavailable { reason: String },
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Overlay => f.write_str("overlayfs"),
            Self::Copy { reason } => write!(f, "copy ({reason})"),
            Self::Unavailable { reason } => write!(f, "unavailable ({reason})"),
        }
    }
}

/// Errors of a sandboxed step.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum SandboxError {
    #[error("cannot start the sandbox helper")]
    #[diagnostic(
        code(bake::sandbox::spawn),
        help(
            "bake runs `run` steps by starting its own executable again through /proc/self/exe; /proc must be mounted"
        )
    )]
    Spawn {
        #[source]
        source: std::io::Error,
    },

    #[error("`run` steps cannot be sandboxed on this machine: {reason}")]
    #[diagnostic(
        code(bake::sandbox::unavailable),
        help(
            "the sandbox needs Linux namespaces and mounts: root, or a user namespace (`bake doctor` says what is missing); or run bake in a container started with --privileged"
        )
    )]
    Unavailable { reason: String },

    #[error("setting up the sandbox failed: {what}: {}", errno.desc())]
    #[diagnostic(code(bake::sandbox::setup))]
    Setup {
        what: String,
        errno: Errno,
        #[help]
        help: Option<String>,
    },

    #[error("the step's user `{user}` cannot be used: {reason}")]
    #[diagnostic(
        code(bake::sandbox::user),
        help("users and groups are looked up in the image's /etc/passwd and /etc/group")
    )]
    User { user: String, reason: String },

    #[error("cannot mount at `{target}`: {reason}")]
    #[diagnostic(code(bake::sandbox::mount_target))]
    Target { target: String, reason: String },

    #[error("`{program}` was not found in the image")]
    #[diagnostic(code(bake::sandbox::not_found), help("the program is searched in the step's PATH, inside the image"))]
    NotFound { program: String },

    #[error("cannot run `{program}`: {}", errno.desc())]
    #[diagnostic(code(bake::sandbox::exec))]
    Exec { program: String, errno: Errno },

    #[error("cannot {what}: {message}")]
    #[diagnostic(code(bake::sandbox::io))]
    Io { what: String, message: String },

    #[error("`slirp4netns` is needed for the step's private network, and it is not installed")]
    #[diagnostic(
        code(bake::sandbox::nat_missing),
        help(
            "install it (Debian and Ubuntu: `apt-get install slirp4netns`), or give the step `network \"host\"` or `network \"none\"`"
        )
    )]
    NatMissing,

    #[error("the step's private network could not be started: {message}")]
    #[diagnostic(
        code(bake::sandbox::nat),
        help(
            "slirp4netns failed (`bake doctor` checks what it needs); `network \"host\"` or `network \"none\"` avoids it"
        )
    )]
    Nat { message: String },

    #[error("the sandbox helper ended without a report ({status})")]
    #[diagnostic(code(bake::sandbox::helper))]
    Helper { status: String },

    #[error("the step was cancelled")]
    #[diagnostic(code(bake::sandbox::cancelled))]
    Cancelled,
}

impl From<Failure> for SandboxError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Kernel { what, errno } => {
                let errno = Errno::from_raw(errno);
                let help = match errno {
                    Errno::EPERM if userns::rootless() => Some(
                        "bake runs rootless, in a user namespace of its own, and the kernel refused this there; `bake doctor` says what is missing"
                            .to_owned(),
                    ),
                    Errno::EPERM => Some(
                        "creating namespaces and mounts needs root (CAP_SYS_ADMIN); run bake as root, or in a container started with --privileged"
                            .to_owned(),
                    ),
                    _ if what.starts_with("mount overlay") => Some(format!(
                        "overlayfs refused these folders; set {BACKEND_VAR}=copy to use the slower copy backend"
                    )),
                    _ => None,
                };
                Self::Setup { what, errno, help }
            }
            Failure::User { user, reason } => Self::User { user, reason },
            Failure::Target { target, reason } => Self::Target { target, reason },
            Failure::NotFound { program } => Self::NotFound { program },
            Failure::Exec { program, errno } => Self::Exec { program, errno: Errno::from_raw(errno) },
            Failure::Io { what, message } => Self::Io { what, message },
            Failure::Nat { missing: true, .. } => Self::NatMissing,
            Failure::Nat { missing: false, message } => Self::Nat { message },
        }
    }
}

/// The re-executed helper's entry point: the CLI calls it, before parsing
/// anything, when its first argument is [`HELPER_ARG`], and exits with the
/// returned code.
pub fn helper_main() -> i32 {
    helper::main()
}

/// Which backend works here, for upper folders in bake's home (or the
/// temporary folder when the home does not exist); probed once.
pub fn probe() -> Backend {
    let dir = crate::home::Home::from_env().map(|h| h.root().to_path_buf()).filter(|d| d.is_dir());
    probe_in(&dir.unwrap_or_else(std::env::temp_dir))
}

/// Which backend works for upper folders in `dir`; probed once per
/// filesystem.
pub fn probe_in(dir: &Path) -> Backend {
    static PROBED: OnceLock<Mutex<HashMap<u64, Backend>>> = OnceLock::new();
    match std::env::var(BACKEND_VAR).as_deref() {
        Ok("copy") => return Backend::Copy { reason: format!("{BACKEND_VAR}=copy") },
        Ok("overlay") => return Backend::Overlay,
        _ => {}
    }
    let device = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir).map(|m| m.dev()).ok()
    };
    let cache = PROBED.get_or_init(Mutex::default);
    if let Some(dev) = device
        && let Some(known) = cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&dev)
    {
        return known.clone();
    }
    let backend = match call_sync(Request::Probe { dir: dir.to_path_buf() }) {
        Ok(Report::Probed { overlay: None }) => Backend::Overlay,
        Ok(Report::Probed { overlay: Some(reason) }) => Backend::Copy { reason },
        Ok(Report::Failed(failure)) => Backend::Unavailable { reason: SandboxError::from(failure).to_string() },
        Ok(other) => Backend::Unavailable { reason: format!("unexpected probe answer {other:?}") },
        Err(e) => Backend::Unavailable { reason: e.to_string() },
    };
    if let Some(dev) = device {
        cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(dev, backend.clone());
    }
    backend
}

/// Runs the step with the backend [`probe_in`] finds for its upper folder.
///
/// Output is handed to `on_output` in chunks as it comes. Returns the step's
/// exit code (128 + signal when a signal killed it). When `cancel` fires,
/// the whole process tree is killed and every mount is gone before this
/// returns [`SandboxError::Cancelled`].
pub async fn run(
    spec: &RunSpec,
    on_output: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
    cancel: &CancellationToken,
) -> Result<i32, SandboxError> {
    let dir = spec.upper.parent().unwrap_or(Path::new("/")).to_path_buf();
    let backend = tokio::task::spawn_blocking(move || probe_in(&dir))
        .await
        .map_err(|e| SandboxError::Io { what: "probe the sandbox".into(), message: e.to_string() })?;
    run_with(spec, &backend, on_output, cancel).await
}

/// [`run`] with an explicit backend (tests force the copy backend).
pub async fn run_with(
    spec: &RunSpec,
    backend: &Backend,
    on_output: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
    cancel: &CancellationToken,
) -> Result<i32, SandboxError> {
    let copy = match backend {
        Backend::Overlay => false,
        Backend::Copy { .. } => true,
        Backend::Unavailable { reason } => return Err(SandboxError::Unavailable { reason: reason.clone() }),
    };
    let wire = WireSpec {
        lowers: spec.lowers.clone(),
        upper: spec.upper.clone(),
        work: spec.work.clone(),
        args: spec.args.clone(),
        env: spec.env.clone(),
        cwd: spec.cwd.clone(),
        user: spec.user.clone(),
        hostname: spec.hostname.clone(),
        network: spec.network,
        insecure: spec.insecure,
        mounts: spec.mounts.clone(),
        copy,
    };
    match call_async(Request::Run(Box::new(wire)), on_output, cancel).await? {
        Report::Exited(code) => Ok(code),
        Report::Cancelled => Err(SandboxError::Cancelled),
        Report::Failed(failure) => Err(failure.into()),
        Report::Probed { .. } => Err(SandboxError::Helper { status: "answered a probe".into() }),
    }
}

fn request_bytes(request: Request) -> Result<Vec<u8>, SandboxError> {
    let envelope = Envelope { parent: std::process::id(), request };
    serde_json::to_vec(&envelope)
        .map_err(|e| SandboxError::Io { what: "encode the request".into(), message: e.to_string() })
}

fn parse_report(bytes: &[u8], status: &str) -> Result<Report, SandboxError> {
    serde_json::from_slice(bytes).map_err(|_| SandboxError::Helper { status: status.to_owned() })
}

fn spawn_error(source: std::io::Error) -> SandboxError {
    SandboxError::Spawn { source }
}

/// Runs the helper to its end without a runtime (the probe).
fn call_sync(request: Request) -> Result<Report, SandboxError> {
    use std::io::{Read, Write};
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(spawn_error)?;
    let mut command = std::process::Command::new("/proc/self/exe");
    command.arg(HELPER_ARG).stdin(Stdio::from(OwnedFd::from(theirs))).stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = command.spawn().map_err(spawn_error)?;
    // The command holds the helper's end of the socket until dropped.
    drop(command);
    let bytes = request_bytes(request)?;
    let written = ours.write_all(&bytes).and_then(|()| ours.shutdown(std::net::Shutdown::Write));
    let mut answer = Vec::new();
    let read = ours.read_to_end(&mut answer);
    let status = child.wait().map_err(spawn_error)?;
    written.and(read).map_err(|e| SandboxError::Helper { status: format!("{status}; {e}") })?;
    parse_report(&answer, &status.to_string())
}

async fn read_some(stream: &mut Option<impl AsyncRead + Unpin>, buf: &mut [u8]) -> std::io::Result<usize> {
    match stream {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Runs the helper, streaming the step's output, honouring cancellation.
async fn call_async(
    request: Request,
    on_output: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
    cancel: &CancellationToken,
) -> Result<Report, SandboxError> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(spawn_error)?;
    let mut command = tokio::process::Command::new("/proc/self/exe");
    command
        .arg(HELPER_ARG)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(spawn_error)?;
    drop(command);
    ours.set_nonblocking(true).map_err(spawn_error)?;
    let mut control = tokio::net::UnixStream::from_std(ours).map_err(spawn_error)?;
    let bytes = request_bytes(request)?;
    // A helper that died at once shows up below as a missing report.
    let _ = control.write_all(&bytes).await;
    let _ = control.shutdown().await;

    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let (mut out_buf, mut err_buf) = (vec![0; 64 * 1024], vec![0; 64 * 1024]);
    let mut cancelled = false;
    let mut status = None;
    let grace = tokio::time::sleep(Duration::MAX);
    tokio::pin!(grace);
    // Until the helper has exited and both pipes are drained (every process
    // that held them is gone with the helper's namespace).
    while status.is_none() || stdout.is_some() || stderr.is_some() {
        tokio::select! {
            read = read_some(&mut stdout, &mut out_buf) => match read {
                Ok(n) if n > 0 => on_output(OutputStream::Stdout, &out_buf[..n]),
                _ => stdout = None,
            },
            read = read_some(&mut stderr, &mut err_buf) => match read {
                Ok(n) if n > 0 => on_output(OutputStream::Stderr, &err_buf[..n]),
                _ => stderr = None,
            },
            exited = child.wait(), if status.is_none() => status = Some(exited.map_err(spawn_error)?),
            () = cancel.cancelled(), if !cancelled => {
                cancelled = true;
                terminate(&child);
                grace.as_mut().reset(tokio::time::Instant::now() + KILL_GRACE);
            }
            () = &mut grace, if cancelled => {
                let _ = child.start_kill();
                status = Some(child.wait().await.map_err(spawn_error)?);
                break;
            }
        }
    }
    let status = status.map_or_else(|| "unknown".to_owned(), |s| s.to_string());
    let mut answer = Vec::new();
    let _ = control.read_to_end(&mut answer).await;
    match parse_report(&answer, &status) {
        Err(_) if cancelled => Ok(Report::Cancelled),
        other => other,
    }
}

/// Asks the helper to kill the step and clean up.
fn terminate(child: &tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
}

impl SandboxError {
    /// Whose the error is: a step's user, mount or program is what the
    /// user wrote; a sandbox that cannot be set up is the machine's.
    pub fn tier(&self) -> crate::Tier {
        match self {
            Self::User { .. } | Self::Target { .. } | Self::NotFound { .. } | Self::Exec { .. } | Self::Cancelled => {
                crate::Tier::Input
            }
            Self::Spawn { .. }
            | Self::Unavailable { .. }
            | Self::Setup { .. }
            | Self::Io { .. }
            | Self::NatMissing
            | Self::Nat { .. }
            | Self::Helper { .. } => crate::Tier::Environment,
        }
    }
}
