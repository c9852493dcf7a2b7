//! The helper process: bake re-executes itself as `bake __bake-sandbox`, and
//! this code runs there, single-threaded and without a tokio runtime, so
//! that `fork` is sound.
//!
//! ```text
//! bake (tokio) ──spawn──▶ helper (host namespaces; supervises, cleans up, reports)
//!                            └─fork─▶ PID 1 of a new PID namespace (mounts, pivot_root, reaps)
//!                                       └─fork─▶ the step (setgroups/setgid/setuid, execve)
//! ```

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use super::init::{self, Bind, DEFAULT_PATH, Exec, Plan, RootFs};
use super::rootfs;
use super::sys::LinuxSys;
use super::wire::{self, ContainerWire, Envelope, Failure, Report, Request, WireSpec};
use crate::lang::Network;
use crate::snapshot::MergedView;

/// The name prefixes of the overlay probe's and `bake run`'s scratch folders
/// (see [`crate::scratch`]).
pub(crate) const PROBE_SCRATCH: &str = ".sandbox-probe-";
pub(crate) const CONTAINER_SCRATCH: &str = "container-";

/// The options every overlay mount gets: renamed folders are copied instead
/// of recorded as redirects, and there are no metadata-only copy-ups or
/// index entries, so the upper folder is a plain diff the layer code reads
/// (in a user namespace, with `userxattr`: see `userns.rs`).
fn overlay_features() -> &'static str {
    super::userns::overlay_features()
}

/// The `tty` group, which owns the container's terminals.
const TTY_GID: u32 = 5;

/// A page: the longest option string `mount(2)` takes.
const MAX_OPTIONS: usize = 4000;

/// Entry point (see [`super::helper_main`]).
pub(crate) fn main() -> i32 {
    // Out of bake's session: a Ctrl-C in the terminal reaches bake only, and
    // the step has no controlling terminal (as in `docker build`).
    let _ = nix::unistd::setsid();
    // bake dies -> the helper dies -> PID 1 dies -> the namespace dies.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // bake's SIGTERM means "cancel" (for a container: KILL_SIGNAL; the
    // others are forwarded): it is taken with sigwait (after the fork) or
    // seen pending (before it), never by the default action, so the scratch
    // folder is always removed.
    let _ = blocked_signals().thread_block();
    let Ok(control) = std::io::stdin().as_fd().try_clone_to_owned() else { return 70 };
    let mut control = UnixStream::from(control);
    // The step reads nothing: its stdin is /dev/null.
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
    }
    let Ok((request, fds)) = receive(&mut control) else { return 70 };
    let Ok(envelope) = serde_json::from_slice::<Envelope>(&request) else { return 70 };
    if matches!(envelope.request, Request::Container(_)) {
        // A container's folders are removed even when bake is killed.
        let _ = nix::sys::prctl::set_pdeathsig(KILL_SIGNAL);
    }
    if nix::unistd::getppid().as_raw() != i32::try_from(envelope.parent).unwrap_or(-1) {
        // bake died before the death signal was armed.
        return 70;
    }
    let report = match envelope.request {
        Request::Probe { dir } => probe(&dir),
        Request::Run(spec) => run(&spec),
        Request::Container(container) => run_container(*container, fds),
    };
    let Ok(text) = serde_json::to_vec(&report) else { return 70 };
    if control.write_all(&text).is_err() {
        return 70;
    }
    0
}

/// The request, and the file descriptors that came with its first byte
/// (a container's stdio; a step gets none).
fn receive(control: &mut UnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut first = [0u8; 1];
    let (got, fds) = wire::receive_fds::<4>(control, &mut first).map_err(std::io::Error::from)?;
    let mut request = Vec::new();
    // A zero byte only carries descriptors; otherwise it starts the JSON.
    if got == 1 && first[0] != 0 {
        request.push(first[0]);
    }
    control.read_to_end(&mut request)?;
    Ok((request, fds))
}

/// Can overlayfs be mounted with uppers in `dir`? Mounts a tiny overlay in a
/// private mount namespace (this process's own: it exits right after).
fn probe(dir: &Path) -> Report {
    let flags =
        CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if let Err(e) = nix::sched::unshare(flags) {
        return Report::Failed(Failure::kernel("unshare", e));
    }
    if let Err(e) =
        nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
    {
        return Report::Failed(Failure::kernel("make the mount namespace private", e));
    }
    Report::Probed { overlay: try_overlay(dir).err() }
}

fn try_overlay(dir: &Path) -> Result<(), String> {
    let io = |e: std::io::Error| format!("cannot prepare a test folder in {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = tempfile::Builder::new().prefix(&crate::scratch::prefix(PROBE_SCRATCH)).tempdir_in(dir).map_err(io)?;
    let [lower, upper, work, merged] = ["l", "u", "w", "m"].map(|n| tmp.path().join(n));
    for d in [&lower, &upper, &work, &merged] {
        std::fs::create_dir(d).map_err(io)?;
    }
    std::fs::write(lower.join("gone"), "x").map_err(io)?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={},{}",
        escape(&lower),
        escape(&upper),
        escape(&work),
        overlay_features()
    );
    nix::mount::mount(Some("overlay"), &merged, Some("overlay"), MsFlags::empty(), Some(options.as_str()))
        .map_err(|e| format!("overlayfs cannot use {} for upper folders: {}", dir.display(), e.desc()))?;
    let checked = (|| {
        std::fs::write(merged.join("new"), "y")?;
        std::fs::remove_file(merged.join("gone"))?;
        let whiteout = std::fs::symlink_metadata(upper.join("gone"))?;
        let new = std::fs::read(upper.join("new"))?;
        Ok::<bool, std::io::Error>(crate::snapshot::is_whiteout(&whiteout) && new == b"y")
    })();
    let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
    match checked {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("overlayfs on {} does not record deletions as whiteouts", dir.display())),
        Err(e) => Err(format!("overlayfs on {} does not work: {e}", dir.display())),
    }
}

/// Escapes a path for an overlay option list.
pub(crate) fn escape(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, ':' | ',' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Everything worked out before the fork.
struct Prepared {
    /// `.sandbox-*` beside the upper: mountpoint, skeleton or copied root,
    /// generated /etc files. Removed when the run ends.
    scratch: tempfile::TempDir,
    plan: Plan,
    exec: Exec,
    /// Copy backend: the root filesystem and its state before the step.
    copy: Option<(PathBuf, super::copy::Baseline)>,
}

enum Outcome {
    Exited(i32),
    Cancelled,
}

fn run(spec: &WireSpec) -> Report {
    let prepared = match prepare(spec) {
        Ok(p) => p,
        Err(f) => return Report::Failed(f),
    };
    let outcome = supervise(&prepared.plan, &prepared.exec, Mode::step(), prepared.scratch.path());
    let report = match outcome {
        Ok(Outcome::Exited(code)) => match &prepared.copy {
            Some((rootfs, base)) => match super::copy::diff(rootfs, base, &spec.upper) {
                Ok(()) => Report::Exited(code),
                Err(e) => {
                    Report::Failed(Failure::io(format!("write the step's changes to {}", spec.upper.display()), &e))
                }
            },
            None => Report::Exited(code),
        },
        Ok(Outcome::Cancelled) => Report::Cancelled,
        Err(f) => Report::Failed(f),
    };
    drop(prepared.scratch);
    report
}

/// `bake run`: the caller's stdio installed, a throwaway upper, signals
/// forwarded, everything removed at the end; bake's death (the parent-death
/// signal is [`KILL_SIGNAL`]) ends it the same way.
fn run_container(mut container: ContainerWire, fds: Vec<OwnedFd>) -> Report {
    let mut fds = fds.into_iter();
    let (Some(stdin), Some(stdout), Some(stderr)) = (fds.next(), fds.next(), fds.next()) else {
        return Report::Failed(Failure::Io {
            what: "start the container".into(),
            message: "bake sent no stdin, stdout and stderr".into(),
        });
    };
    let console = match (container.tty, fds.next()) {
        (Some(size), Some(socket)) => Some(Console { socket, size }),
        (Some(_), None) => {
            return Report::Failed(Failure::Io {
                what: "start the container".into(),
                message: "bake sent no socket for the terminal".into(),
            });
        }
        (None, _) => None,
    };
    let installed = nix::unistd::dup2_stdin(&stdin)
        .and_then(|()| nix::unistd::dup2_stdout(&stdout))
        .and_then(|()| nix::unistd::dup2_stderr(&stderr));
    if let Err(e) = installed {
        return Report::Failed(Failure::kernel("install the container's stdio", e));
    }
    drop((stdin, stdout, stderr));
    let scratch = &container.scratch;
    let dir = match std::fs::create_dir_all(scratch)
        .and_then(|()| tempfile::Builder::new().prefix(&crate::scratch::prefix(CONTAINER_SCRATCH)).tempdir_in(scratch))
    {
        Ok(d) => d,
        Err(e) => return Report::Failed(Failure::io(format!("create a folder in {}", scratch.display()), &e)),
    };
    let spec = &mut container.spec;
    spec.upper = dir.path().join("upper");
    spec.work = dir.path().join("work");
    for d in [&spec.upper, &spec.work] {
        if let Err(e) = std::fs::create_dir(d) {
            return Report::Failed(Failure::io(format!("create {}", d.display()), &e));
        }
    }
    let prepared = match prepare(spec) {
        Ok(p) => p,
        Err(f) => return Report::Failed(f),
    };
    let report = match supervise(&prepared.plan, &prepared.exec, Mode::container(console), prepared.scratch.path()) {
        Ok(Outcome::Exited(code)) => Report::Exited(code),
        // Killed: as `docker kill` reports it.
        Ok(Outcome::Cancelled) => Report::Exited(128 + Signal::SIGKILL as i32),
        Err(f) => Report::Failed(f),
    };
    drop(prepared.scratch);
    drop(dir);
    report
}

fn io_failure(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Failure {
    let what = what.into();
    move |e| Failure::io(what, &e)
}

fn prepare(spec: &WireSpec) -> Result<Prepared, Failure> {
    let view = MergedView::new(spec.lowers.clone());
    let read = |path: &str| view.read_to_string(path).ok().flatten();
    let user =
        super::user::resolve(spec.user.as_deref(), read("/etc/passwd").as_deref(), read("/etc/group").as_deref())
            .map_err(|reason| Failure::User { user: spec.user.clone().unwrap_or_default(), reason })?;
    let exec = exec_of(spec, user)?;

    let parent = spec.upper.parent().unwrap_or(Path::new("/"));
    let scratch = tempfile::Builder::new()
        .prefix(".sandbox-")
        .tempdir_in(parent)
        .map_err(io_failure(format!("create a folder in {}", parent.display())))?;
    let hosts = scratch.path().join("hosts");
    let resolv = scratch.path().join("resolv.conf");
    let host_text = format!("127.0.0.1\tlocalhost {0}\n::1\tlocalhost ip6-localhost ip6-loopback {0}\n", spec.hostname);
    std::fs::write(&hosts, host_text).map_err(io_failure("write hosts"))?;
    // A private network asks slirp4netns's DNS forwarder: the host's own
    // resolvers may be on its loopback (127.0.0.53), out of the step's reach.
    let resolv_text = match spec.network {
        Network::Private => super::nat::RESOLV_CONF.as_bytes().to_vec(),
        Network::Host | Network::None => std::fs::read("/etc/resolv.conf").unwrap_or_default(),
    };
    std::fs::write(&resolv, resolv_text).map_err(io_failure("write resolv.conf"))?;

    // The upper's root is the container's `/`: give it the image's.
    let root_meta = view.find("/", false).ok().flatten().filter(|_| !spec.lowers.is_empty()).map(|f| f.meta);
    let (mode, uid, gid) = root_meta.map_or((0o755, 0, 0), |m| (m.mode() & 0o7777, m.uid(), m.gid()));
    let upper_io = io_failure(format!("prepare {}", spec.upper.display()));
    std::os::unix::fs::lchown(&spec.upper, Some(uid), Some(gid))
        .and_then(|()| std::fs::set_permissions(&spec.upper, std::fs::Permissions::from_mode(mode)))
        .map_err(upper_io)?;

    // (target, is a folder, bind source, read-only)
    let mut targets: Vec<(String, bool, Option<PathBuf>, bool)> = vec![
        ("/dev".into(), true, None, false),
        ("/proc".into(), true, None, false),
        ("/sys".into(), true, None, false),
        ("/etc/hosts".into(), false, Some(hosts), true),
        ("/etc/resolv.conf".into(), false, Some(resolv), true),
    ];
    for m in &spec.mounts {
        if !m.target.starts_with('/') {
            return Err(Failure::Target { target: m.target.clone(), reason: "it is not an absolute path".into() });
        }
        let meta = std::fs::metadata(&m.source).map_err(|e| Failure::Target {
            target: m.target.clone(),
            reason: format!("its source {} cannot be read: {e}", m.source.display()),
        })?;
        targets.push((m.target.clone(), meta.is_dir(), Some(m.source.clone()), m.readonly));
    }

    let root = scratch.path().join("root");
    std::fs::create_dir(&root).map_err(io_failure("create the root mountpoint"))?;
    let (base, mirror, from_lowers) = if spec.copy {
        let copied = super::copy::materialize(&view, &root).map_err(io_failure("copy the image's files"))?;
        (root.clone(), None, Some(copied))
    } else {
        let skel = scratch.path().join("skel");
        std::fs::create_dir(&skel).map_err(io_failure("create the mountpoint skeleton"))?;
        (skel, Some(&view), None)
    };
    let mut mirrored = Vec::new();
    let mut rel = Vec::new();
    let mut binds = Vec::new();
    for (target, dir, source, readonly) in targets {
        let bad = |reason: String| Failure::Target { target: target.clone(), reason };
        let resolved = rootfs::resolve(&view, &target).map_err(bad)?;
        match resolved.is_dir {
            Some(true) if !dir => return Err(bad("it is a folder in the image, and a file is mounted there".into())),
            Some(false) if dir => return Err(bad("it is a file in the image, and a folder is mounted there".into())),
            _ => {}
        }
        rootfs::create(&base, &resolved, dir, mirror, &mut mirrored)
            .map_err(|e| bad(format!("its mountpoint cannot be created: {e}")))?;
        match source {
            Some(source) => binds.push(Bind { source, target: resolved.relative(), readonly }),
            None => rel.push(resolved.relative()),
        }
    }
    rootfs::finish_mirror(&mut mirrored).map_err(io_failure("prepare the mountpoint skeleton"))?;
    let [dev, proc, sys] = [rel.remove(0), rel.remove(0), rel.remove(0)];
    let (masked, readonly) =
        if spec.insecure { (Vec::new(), Vec::new()) } else { init::confinement(&proc, &sys, &thermal_throttle()) };

    let (rootfs, copy) = match from_lowers {
        Some(copied) => {
            let base = super::copy::baseline(&root, &copied).map_err(io_failure("record the copied files"))?;
            (RootFs::Bind, Some((root.clone(), base)))
        }
        None => (overlay_options(spec, &base, scratch.path())?, None),
    };
    let mut cwd = spec.cwd.clone();
    if !cwd.starts_with('/') {
        cwd.insert(0, '/');
    }
    let plan = Plan {
        root,
        rootfs,
        dev,
        proc,
        sys,
        masked,
        readonly,
        sys_readonly: !spec.insecure,
        sys_bind: spec.network == Network::Host && super::userns::nested(),
        tty_group: super::userns::gid_mapped(TTY_GID),
        binds,
        hostname: spec.hostname.clone(),
        network: spec.network,
        cwd,
    };
    Ok(Prepared { scratch, plan, exec, copy })
}

/// `lowerdir=SKEL:TOP:...:BOTTOM,upperdir=...,workdir=...`. When the
/// absolute paths do not fit in a page (an image of many layers), the
/// lowers are named through short symlinks `0`, `1`, ... in a folder of the
/// scratch space, which PID 1 makes its working folder before mounting.
fn overlay_options(spec: &WireSpec, skel: &Path, scratch: &Path) -> Result<RootFs, Failure> {
    let skel_used = std::fs::read_dir(skel).is_ok_and(|mut d| d.next().is_some());
    let mut lowers: Vec<PathBuf> = Vec::new();
    if skel_used || spec.lowers.is_empty() {
        lowers.push(skel.to_path_buf());
    }
    // Top first. A snapshot may come twice (two steps that changed nothing
    // share the empty layer's): overlayfs refuses a lower given twice
    // ("conflicting lowerdir path"), and the topmost occurrence alone makes
    // the same view, since it hides everything the lower one does.
    for lower in spec.lowers.iter().rev() {
        if !lowers.contains(lower) {
            lowers.push(lower.clone());
        }
    }
    let build = |names: &[String]| {
        format!(
            "lowerdir={},upperdir={},workdir={},{}",
            names.join(":"),
            escape(&spec.upper),
            escape(&spec.work),
            overlay_features()
        )
    };
    let options = build(&lowers.iter().map(|l| escape(l)).collect::<Vec<_>>());
    if options.len() <= MAX_OPTIONS {
        return Ok(RootFs::Overlay { options, chdir: None });
    }
    let farm = scratch.join("lowers");
    std::fs::create_dir(&farm).map_err(io_failure("create the layer links"))?;
    let mut names = Vec::new();
    for (i, lower) in lowers.iter().enumerate() {
        std::os::unix::fs::symlink(lower, farm.join(i.to_string())).map_err(io_failure("create the layer links"))?;
        names.push(i.to_string());
    }
    let options = build(&names);
    if options.len() > MAX_OPTIONS {
        return Err(Failure::Io {
            what: format!("mount {} layers", spec.lowers.len()),
            message: "the layer list is too long for one overlay mount".into(),
        });
    }
    Ok(RootFs::Overlay { options, chdir: Some(farm) })
}

fn cstring(what: &str, text: &str) -> Result<CString, Failure> {
    CString::new(text).map_err(|_| Failure::Io { what: what.into(), message: format!("`{text}` contains a NUL byte") })
}

fn exec_of(spec: &WireSpec, user: super::user::ExecUser) -> Result<Exec, Failure> {
    let Some(program) = spec.args.first() else {
        return Err(Failure::Io { what: "start the step".into(), message: "it has no command".into() });
    };
    let mut env = spec.env.clone();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".into(), user.home.clone()));
    }
    let path = env.iter().rev().find(|(k, _)| k == "PATH").map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let path = path.split(':').map(str::to_owned).collect();
    let args = spec.args.iter().map(|a| cstring("pass the command's arguments", a)).collect::<Result<_, _>>()?;
    let env =
        env.iter().map(|(k, v)| cstring("pass the environment", &format!("{k}={v}"))).collect::<Result<_, _>>()?;
    let (capabilities, seccomp) = if spec.insecure {
        ((0..=last_capability()).collect(), Vec::new())
    } else {
        let filters = super::seccomp::compile(&init::CAPABILITIES, super::seccomp::kernel_version())
            .map_err(|message| Failure::Io { what: "prepare the seccomp filter".into(), message })?;
        (init::CAPABILITIES.to_vec(), filters)
    };
    let set_groups = !super::userns::setgroups_denied();
    Ok(Exec { user, program: program.clone(), path, args, env, console: None, capabilities, seccomp, set_groups })
}

/// The highest capability number this kernel knows.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|t| t.trim().parse().ok()).unwrap_or(40)
}

/// Docker masks each CPU's `thermal_throttle` folder in `/sys` (it lets a
/// container watch another's power use); those this machine has.
fn thermal_throttle() -> Vec<String> {
    let Ok(cpus) = std::fs::read_dir("/sys/devices/system/cpu") else { return Vec::new() };
    let mut paths: Vec<String> = cpus
        .flatten()
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.strip_prefix("cpu").is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .map(|e| format!("/sys/devices/system/cpu/{}/thermal_throttle", e.file_name().to_string_lossy()))
        .filter(|p| Path::new(p).exists())
        .collect();
    paths.sort();
    paths
}

/// The signals a container's helper and PID 1 pass on to its process.
pub(crate) const FORWARDED: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Tells a container's helper to kill the container and clean up; also its
/// parent-death signal. (SIGTERM cannot mean that for a container: it is
/// forwarded.)
pub(crate) const KILL_SIGNAL: Signal = Signal::SIGPWR;

fn set_of(signals: &[Signal]) -> SigSet {
    let mut set = SigSet::empty();
    for s in signals {
        set.add(*s);
    }
    set
}

/// Every signal the helper takes with sigwait: blocked from its first
/// instruction, so none can end it before it has cleaned up.
fn blocked_signals() -> SigSet {
    let mut all = set_of(&FORWARDED);
    all.add(Signal::SIGCHLD);
    all.add(KILL_SIGNAL);
    all
}

/// What a helper does with the signals bake sends it.
struct Mode {
    /// Kill PID 1 and report the run as cancelled.
    cancel: SigSet,
    /// Pass on to PID 1, which passes them on to the process.
    forward: SigSet,
    console: Option<Console>,
}

impl Mode {
    /// A `run` step: SIGTERM, SIGINT and SIGHUP cancel; nothing is forwarded.
    fn step() -> Self {
        Self {
            cancel: set_of(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP]),
            forward: SigSet::empty(),
            console: None,
        }
    }

    fn container(console: Option<Console>) -> Self {
        Self { cancel: set_of(&[KILL_SIGNAL]), forward: set_of(&FORWARDED), console }
    }
}

/// `bake run -t`: where PID 1 sends the terminal's master side, and its size.
struct Console {
    socket: OwnedFd,
    size: (u16, u16),
}

/// Whether bake asked to cancel while the helper was preparing.
fn cancel_pending(cancel: &SigSet) -> bool {
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    SignalFd::with_flags(cancel, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .is_ok_and(|fd| matches!(fd.read_signal(), Ok(Some(_))))
}

/// Forks PID 1 and waits for it; kills it when bake cancels, passes on the
/// signals to forward (all blocked since the helper started).
fn supervise(plan: &Plan, exec: &Exec, mode: Mode, scratch: &Path) -> Result<Outcome, Failure> {
    let mut signals = mode.cancel;
    signals.add(Signal::SIGCHLD);
    for s in &mode.forward {
        signals.add(s);
    }
    blocked_signals().thread_block().map_err(|e| Failure::kernel("block signals", e))?;
    if cancel_pending(&mode.cancel) {
        return Ok(Outcome::Cancelled);
    }
    let (mut report_r, report_w) = std::io::pipe().map_err(io_failure("create a pipe"))?;
    // A private network: PID 1 is born in a namespace the helper makes, and
    // waits at the gate until slirp4netns serves it.
    let private = plan.network == Network::Private;
    let gate = if private { Some(std::io::pipe().map_err(io_failure("create a pipe"))?) } else { None };
    let netns = if private { Some(super::nat::create()?) } else { None };
    // Before the PID namespace: see `nat::start`. Killed when dropped.
    let starting = match &netns {
        Some(ns) => Some(super::nat::start(ns, &scratch.join("slirp4netns.log"))?),
        None => None,
    };
    // A new PID namespace applies to the children of the caller only: the
    // helper itself stays where it is, its next child is PID 1.
    nix::sched::unshare(CloneFlags::CLONE_NEWPID).map_err(|e| Failure::kernel("unshare the PID namespace", e))?;
    if let Some(ns) = netns.as_ref().filter(|ns| !ns.entered_by_pid1()) {
        ns.enter()?;
    }
    #[allow(unsafe_code)]
    // SAFETY: the helper is single-threaded (it runs no runtime and spawns no
    // threads), so the child starts with consistent locks and heap.
    let forked = unsafe { nix::unistd::fork() }.map_err(|e| Failure::kernel("fork", e))?;
    let (gate_r, gate_w) = gate.map_or((None, None), |(r, w)| (Some(r), Some(w)));
    let pid1 = match forked {
        ForkResult::Child => {
            drop((report_r, gate_w));
            let join = netns.as_ref().filter(|ns| ns.entered_by_pid1());
            // A forked child of the sandbox helper (a process of its own, not
            // the engine): it cannot return to the caller's stack, so it exits.
            #[allow(clippy::exit)]
            std::process::exit(pid1(plan, exec, report_w, gate_r, join, mode.console.as_ref()));
        }
        ForkResult::Parent { child } => child,
    };
    drop((report_w, gate_r));
    let abort = |failure: Failure| {
        let _ = kill(pid1, Signal::SIGKILL);
        let _ = waitpid(pid1, None);
        failure
    };
    // Dropped (slirp4netns killed) when this function returns.
    let mut _nat = None;
    if let (Some(netns), Some(starting)) = (netns, starting) {
        netns.leave().map_err(abort)?;
        match starting.ready() {
            Ok(nat) => _nat = Some(nat),
            Err(failure) => {
                // PID 1 may have failed as well, for its own reason: its
                // report, when there is one, says more.
                let failure = abort(failure);
                let mut said = Vec::new();
                let _ = report_r.read_to_end(&mut said);
                return Err(serde_json::from_slice::<Failure>(said.trim_ascii()).unwrap_or(failure));
            }
        }
        if let Some(mut gate) = gate_w {
            // Fails only when PID 1 is gone: its report, read below, says why.
            let _ = gate.write_all(b"\n");
        }
    }
    // Only PID 1 sends on it: bake sees EOF if PID 1 fails before that.
    drop(mode.console);
    // EOF once the step has exec'd (the pipe is close-on-exec) or everyone
    // holding it died; a setup failure arrives as JSON before that.
    let mut said = Vec::new();
    let _ = report_r.read_to_end(&mut said);
    let said = said.trim_ascii();
    if !said.is_empty() {
        let _ = kill(pid1, Signal::SIGKILL);
        let _ = waitpid(pid1, None);
        let failure = serde_json::from_slice::<Failure>(said).unwrap_or_else(|_| Failure::Io {
            what: "set up the sandbox".into(),
            message: String::from_utf8_lossy(said).into_owned(),
        });
        return Err(failure);
    }
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => match waitpid(pid1, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(Outcome::Exited(code)),
                Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(Outcome::Exited(128 + signal as i32)),
                Ok(_) => {}
                Err(e) => return Err(Failure::kernel("wait for the sandbox", e)),
            },
            Ok(signal) if mode.forward.contains(signal) => {
                let _ = kill(pid1, signal);
            }
            Ok(_) => {
                // Killing PID 1 kills every process of its namespace, and it
                // is reaped only once they are all gone; its mount namespace
                // (every mount of the step) goes with the last of them.
                let _ = kill(pid1, Signal::SIGKILL);
                let _ = waitpid(pid1, None);
                return Ok(Outcome::Cancelled);
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Failure::kernel("wait for a signal", e)),
        }
    }
}

/// PID 1: builds the container, forks the step, reaps everything, passes
/// on the signals the helper forwards, exits with the step's code.
///
/// PID 1 of a namespace ignores every signal it has no handler for; this one
/// keeps the forwarded signals blocked and takes them with sigwait, so they
/// wait for it instead of vanishing, and the step (not PID 1 itself, so with
/// the default actions) receives them, as with `docker run --init`.
fn pid1(
    plan: &Plan,
    exec: &Exec,
    mut report: std::io::PipeWriter,
    gate: Option<std::io::PipeReader>,
    netns: Option<&super::nat::Namespace>,
    console: Option<&Console>,
) -> i32 {
    let mut waited = set_of(&FORWARDED);
    waited.add(Signal::SIGCHLD);
    let _ = waited.thread_set_mask();
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // The helper may have died before the line above armed the signal: then
    // nobody reads the pipe and this write fails (SIGPIPE is ignored).
    if report.write_all(b"\n").is_err() {
        return 1;
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let fail = |mut report: std::io::PipeWriter, failure: &Failure| {
        let _ = serde_json::to_writer(&mut report, failure);
        1
    };
    // Rootless, PID 1 enters its private network itself (see `nat.rs`).
    if let Some(Err(f)) = netns.map(super::nat::Namespace::enter) {
        return fail(report, &f);
    }
    if let Err(f) = init::enter(&LinuxSys, plan) {
        return fail(report, &f);
    }
    // The private network is served: the helper says so, or ends us (and
    // reports why itself).
    if let Some(mut gate) = gate {
        let mut byte = [0u8; 1];
        if !matches!(gate.read(&mut byte), Ok(1)) {
            return 1;
        }
    }
    let mut exec = std::borrow::Cow::Borrowed(exec);
    if let Some(console) = console {
        match open_console(console) {
            Ok(slave) => exec.to_mut().console = Some(slave),
            Err(f) => return fail(report, &f),
        }
    }
    #[allow(unsafe_code)]
    // SAFETY: PID 1 is single-threaded (forked from the single-threaded helper).
    let forked = match unsafe { nix::unistd::fork() } {
        Ok(f) => f,
        Err(e) => return fail(report, &Failure::kernel("fork the step", e)),
    };
    let step = match forked {
        ForkResult::Child => {
            let failure = init::exec(&LinuxSys, &exec);
            let _ = fail(report, &failure);
            // The forked step whose exec failed: a process of its own, it exits.
            #[allow(clippy::exit)]
            std::process::exit(127);
        }
        ForkResult::Parent { child } => child,
    };
    drop(report);
    loop {
        match waited.wait() {
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == step => return code,
                    Ok(WaitStatus::Signaled(pid, signal, _)) if pid == step => return 128 + signal as i32,
                    Ok(WaitStatus::StillAlive) => break,
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(_) => return 1,
                }
            },
            Ok(signal) => {
                let _ = kill(step, signal);
            }
            Err(Errno::EINTR) => {}
            Err(_) => return 1,
        }
    }
}

/// `bake run -t`, in PID 1 after pivot_root: a terminal from the
/// container's own devpts (so `tty` names a `/dev/pts` of the container, as
/// in Docker), its master side sent to bake, which copies bytes both ways.
/// Returns the terminal's path for the process to open.
fn open_console(console: &Console) -> Result<PathBuf, Failure> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| Failure::kernel("open /dev/ptmx", e))?;
    nix::pty::grantpt(&master).map_err(|e| Failure::kernel("grantpt", e))?;
    nix::pty::unlockpt(&master).map_err(|e| Failure::kernel("unlockpt", e))?;
    let slave = nix::pty::ptsname_r(&master).map_err(|e| Failure::kernel("ptsname", e))?;
    let (rows, cols) = console.size;
    if rows > 0 && cols > 0 {
        super::tty::set_size(master.as_fd(), rows, cols).map_err(|e| Failure::kernel("set the terminal's size", e))?;
    }
    wire::send_fds(&console.socket, &[master.as_raw_fd()])
        .map_err(|e| Failure::kernel("send the terminal to bake", e))?;
    Ok(PathBuf::from(slave))
}
