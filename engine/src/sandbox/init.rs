//! Inside the sandbox: the mount sequence PID 1 runs before the step, and the
//! last steps of the step's own process (user, exec). Everything goes through
//! [`Sys`], so the order is checked by unit tests without root.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};

use super::sys::Sys;
use super::user::ExecUser;
use super::wire::Failure;
use crate::lang::Network;

/// Device nodes bind-mounted from the host into the container's `/dev`.
pub(crate) const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// The capabilities a step keeps: Docker's default set (CHOWN,
/// DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP,
/// NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP), so a
/// step can do what it can do in `docker build`, and cannot mount, load
/// modules or change the host's clock.
pub(crate) const CAPABILITIES: [u32; 14] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

/// Docker's masked paths (moby `daemon/pkg/oci/defaults.go`): a file is
/// covered by `/dev/null`, a folder by an empty read-only tmpfs. They tell
/// about the host (timers, keys, hardware) or touch it (firmware, power
/// limits). Docker also masks each CPU's `thermal_throttle` folder: the
/// helper adds those it finds.
pub(crate) const MASKED: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Docker's read-only paths: `/proc/sys` is the host's sysctls (a
/// `core_pattern` written there runs a program as root on the host), the
/// others reach hardware and the host's kernel.
pub(crate) const READONLY: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The search path when the step's environment has none (Docker's default).
pub(crate) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What PID 1 builds, all worked out by the helper beforehand.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The folder that becomes `/`: an empty mountpoint for overlay, the
    /// copied root filesystem for the copy backend.
    pub(crate) root: PathBuf,
    pub(crate) rootfs: RootFs,
    /// Where `/dev`, `/proc` and `/sys` are, relative to the root, symlinks
    /// resolved.
    pub(crate) dev: PathBuf,
    pub(crate) proc: PathBuf,
    pub(crate) sys: PathBuf,
    /// Relative to the root: covered, and made read-only (see [`MASKED`],
    /// [`READONLY`]); both empty for `security "insecure"`.
    pub(crate) masked: Vec<PathBuf>,
    pub(crate) readonly: Vec<PathBuf>,
    /// devpts gives its terminals the `tty` group (gid 5): not where gid 5
    /// has no mapping (rootless with a single-id map).
    pub(crate) tty_group: bool,
    /// `/sys` read-only (not for `security "insecure"`).
    pub(crate) sys_readonly: bool,
    /// Bind the host's `/sys` rather than mount a sysfs: rootless with the
    /// host's network, whose namespace is not bake's to mount sysfs for.
    pub(crate) sys_bind: bool,
    /// `/etc/hosts`, `/etc/resolv.conf`, caches and secrets, in order.
    pub(crate) binds: Vec<Bind>,
    pub(crate) hostname: String,
    /// `None`: PID 1 makes a network namespace with loopback only.
    /// `Private`: PID 1 was born in the namespace the helper made (and
    /// slirp4netns serves), and brings its loopback up. `Host`: nothing.
    pub(crate) network: Network,
    /// The step's working folder, created when missing.
    pub(crate) cwd: String,
}

#[derive(Debug)]
pub(crate) enum RootFs {
    /// Mount overlayfs with these options; `chdir` first when the lower
    /// folders are given relative to it (long layer lists).
    Overlay { options: String, chdir: Option<PathBuf> },
    /// Bind the root folder onto itself (pivot_root wants a mount point).
    Bind,
}

#[derive(Debug, Clone)]
pub(crate) struct Bind {
    pub(crate) source: PathBuf,
    /// Relative to the root, symlinks resolved inside the container.
    pub(crate) target: PathBuf,
    pub(crate) readonly: bool,
}

/// The step's process image.
#[derive(Debug, Clone)]
pub(crate) struct Exec {
    pub(crate) user: ExecUser,
    /// `args[0]` as written; searched in `path` when it has no slash.
    pub(crate) program: String,
    pub(crate) path: Vec<String>,
    pub(crate) args: Vec<CString>,
    pub(crate) env: Vec<CString>,
    /// `bake run -t`: the terminal (a `/dev/pts` path inside the container)
    /// that becomes the process's controlling terminal and stdio.
    pub(crate) console: Option<PathBuf>,
    /// The capabilities kept (bounding, effective and permitted sets):
    /// [`CAPABILITIES`], or all of them for `security "insecure"`.
    pub(crate) capabilities: Vec<u32>,
    /// Seccomp filters to load after `no_new_privs`, just before `execve`;
    /// none (and no `no_new_privs`) for `security "insecure"`.
    pub(crate) seccomp: Vec<seccompiler::BpfProgram>,
    /// Call `setgroups`: false where the user namespace denies it (rootless
    /// with a single-id map, see `userns.rs`); the step then keeps the
    /// supplementary groups bake had.
    pub(crate) set_groups: bool,
}

impl Exec {
    fn confined(&self) -> bool {
        !self.seccomp.is_empty()
    }
}

/// The paths to mask and to make read-only, relative to the root, for a
/// container whose `/proc` and `/sys` are at `proc` and `sys`.
pub(crate) fn confinement(proc: &Path, sys: &Path, extra_masked: &[String]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let place = |path: &str| {
        let (base, rest) = match path.strip_prefix("/proc/") {
            Some(rest) => (proc, rest),
            None => (sys, path.strip_prefix("/sys/").unwrap_or(path)),
        };
        base.join(rest)
    };
    let masked = MASKED.iter().copied().chain(extra_masked.iter().map(String::as_str)).map(place).collect();
    (masked, READONLY.iter().copied().map(place).collect())
}

fn call(what: impl Into<String>) -> impl FnOnce(Errno) -> Failure {
    let what = what.into();
    move |e| Failure::kernel(what, e)
}

fn mount(
    sys: &dyn Sys,
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Failure> {
    sys.mount(source, target, fstype, flags, data).map_err(call(format!(
        "mount {} on {}",
        fstype.map_or_else(|| source.map_or_else(String::new, |s| s.display().to_string()), str::to_owned),
        target.display()
    )))
}

/// PID 1, in a fresh PID namespace: new mount, UTS, IPC (and network)
/// namespaces, the root filesystem, `/dev`, `/proc`, the bind mounts,
/// `pivot_root`, the hostname, the loopback interface, the working folder.
pub(crate) fn enter(sys: &dyn Sys, plan: &Plan) -> Result<(), Failure> {
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if plan.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    sys.unshare(flags).map_err(call("unshare"))?;
    // Nothing mounted from here on may propagate back to the host.
    mount(sys, None, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;
    let root = plan.root.as_path();
    match &plan.rootfs {
        RootFs::Overlay { options, chdir } => {
            if let Some(dir) = chdir {
                sys.chdir(dir).map_err(call(format!("chdir {}", dir.display())))?;
            }
            // nodev: a device node the step makes (CAP_MKNOD stays, as in
            // Docker) or finds in a layer opens nothing.
            mount(sys, Some(Path::new("overlay")), root, Some("overlay"), MsFlags::MS_NODEV, Some(options))?;
        }
        RootFs::Bind => {
            mount(sys, Some(root), root, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
            mount(sys, None, root, None, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV, None)?;
        }
    }
    dev(sys, &root.join(&plan.dev), plan.tty_group)?;
    let proc = root.join(&plan.proc);
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(sys, Some(Path::new("proc")), &proc, Some("proc"), hardened, None)?;
    let sysfs = if plan.sys_readonly { hardened | MsFlags::MS_RDONLY } else { hardened };
    if plan.sys_bind {
        let target = root.join(&plan.sys);
        mount(sys, Some(Path::new("/sys")), &target, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
        mount(sys, None, &target, None, sysfs | MsFlags::MS_BIND | MsFlags::MS_REMOUNT, None)?;
    } else {
        mount(sys, Some(Path::new("sysfs")), &root.join(&plan.sys), Some("sysfs"), sysfs, None)?;
    }
    for path in &plan.readonly {
        read_only(sys, &root.join(path))?;
    }
    for path in &plan.masked {
        mask(sys, &root.join(path))?;
    }
    for bind in &plan.binds {
        let target = root.join(&bind.target);
        mount(sys, Some(&bind.source), &target, None, MsFlags::MS_BIND, None)?;
        // A bind keeps its source's flags until remounted: no devices, no
        // setuid through a cache or secret.
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
        if bind.readonly {
            flags |= MsFlags::MS_RDONLY;
        }
        mount(sys, None, &target, None, flags, None)?;
    }
    // pivot_root(".", "."): the old root ends up stacked on the new one and is
    // detached at once, so no `put_old` folder is needed in the image.
    sys.chdir(root).map_err(call(format!("chdir {}", root.display())))?;
    sys.pivot_root(Path::new("."), Path::new(".")).map_err(call("pivot_root"))?;
    sys.umount2(Path::new("."), MntFlags::MNT_DETACH).map_err(call("umount the old root"))?;
    sys.chdir(Path::new("/")).map_err(call("chdir /"))?;
    sys.sethostname(&plan.hostname).map_err(call("sethostname"))?;
    if plan.network != Network::Host {
        sys.loopback_up().map_err(call("bring the loopback interface up"))?;
    }
    // The working folder is part of the step's result (Docker creates a
    // missing WORKDIR the same way): root-owned, 0755.
    let cwd = Path::new(&plan.cwd);
    let mut dir = PathBuf::from("/");
    for part in cwd.components().skip(1) {
        dir.push(part);
        match sys.mkdir(&dir, 0o755) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(call(format!("create the working folder {}", dir.display()))(e)),
        }
    }
    sys.chdir(cwd).map_err(call(format!("chdir {}", plan.cwd)))?;
    Ok(())
}

/// Binds `path` onto itself, read-only (a path the kernel lacks is skipped).
fn read_only(sys: &dyn Sys, path: &Path) -> Result<(), Failure> {
    match sys.mount(Some(path), path, None, MsFlags::MS_BIND | MsFlags::MS_REC, None) {
        Err(Errno::ENOENT) => return Ok(()),
        other => other.map_err(call(format!("bind {}", path.display())))?,
    }
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    mount(sys, None, path, None, flags, None)
}

/// Covers a file with `/dev/null`, a folder (`ENOTDIR` for the bind) with an
/// empty read-only tmpfs; a path the kernel lacks is skipped (runc's way).
fn mask(sys: &dyn Sys, path: &Path) -> Result<(), Failure> {
    match sys.mount(Some(Path::new("/dev/null")), path, None, MsFlags::MS_BIND, None) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::ENOTDIR) => mount(sys, Some(Path::new("tmpfs")), path, Some("tmpfs"), MsFlags::MS_RDONLY, None),
        Err(e) => Err(call(format!("mask {}", path.display()))(e)),
    }
}

/// A small `/dev` on a tmpfs: the host's harmless devices bound in, a private
/// devpts, a shm tmpfs and the usual links.
fn dev(sys: &dyn Sys, dev: &Path, tty_group: bool) -> Result<(), Failure> {
    let tmpfs = Some("tmpfs");
    // nodev: the bound devices below are mounts of their own (with the host
    // devtmpfs's flags) and keep working; a node made here opens nothing.
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME;
    mount(sys, Some(Path::new("tmpfs")), dev, tmpfs, flags, Some("mode=755,size=65536k"))?;
    for name in DEVICES {
        let node = dev.join(name);
        sys.create_file(&node).map_err(call(format!("create {}", node.display())))?;
        mount(sys, Some(&Path::new("/dev").join(name)), &node, None, MsFlags::MS_BIND, None)?;
    }
    let pts = dev.join("pts");
    sys.mkdir(&pts, 0o755).map_err(call(format!("mkdir {}", pts.display())))?;
    let data = Some(if tty_group {
        "newinstance,ptmxmode=0666,mode=0620,gid=5"
    } else {
        "newinstance,ptmxmode=0666,mode=0620"
    });
    mount(sys, Some(Path::new("devpts")), &pts, Some("devpts"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, data)?;
    let shm = dev.join("shm");
    sys.mkdir(&shm, 0o1777).map_err(call(format!("mkdir {}", shm.display())))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(sys, Some(Path::new("shm")), &shm, tmpfs, flags, Some("mode=1777,size=65536k"))?;
    for (name, target) in
        [("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1")]
            .into_iter()
            .chain([("stderr", "/proc/self/fd/2"), ("core", "/proc/kcore")])
    {
        let link = dev.join(name);
        sys.symlink(target, &link).map_err(call(format!("symlink {}", link.display())))?;
    }
    Ok(())
}

/// The step's process, after PID 1 forked it: drop to the user and exec.
/// Returns only on failure.
pub(crate) fn exec(sys: &dyn Sys, exec: &Exec) -> Failure {
    if let Err(e) = sys.default_signals() {
        return Failure::kernel("reset signal handlers", e);
    }
    if let Err(e) = sys.bound_capabilities(&exec.capabilities) {
        return Failure::kernel("drop capabilities", e);
    }
    if let Err(e) = sys.set_capabilities(&exec.capabilities) {
        return Failure::kernel("set capabilities", e);
    }
    let user = &exec.user;
    // While still root: a new session whose controlling terminal is the
    // console, handed to the user.
    if let Some(console) = &exec.console
        && let Err(e) = sys.console(console, Uid::from_raw(user.uid))
    {
        return Failure::kernel(format!("make {} the controlling terminal", console.display()), e);
    }
    let groups: Vec<Gid> = user.groups.iter().copied().map(Gid::from_raw).collect();
    if exec.set_groups
        && let Err(e) = sys.setgroups(&groups)
    {
        return Failure::kernel("setgroups", e);
    }
    if let Err(e) = sys.setgid(Gid::from_raw(user.gid)) {
        return Failure::kernel(format!("setgid {}", user.gid), e);
    }
    if let Err(e) = sys.setuid(Uid::from_raw(user.uid)) {
        return Failure::kernel(format!("setuid {}", user.uid), e);
    }
    if exec.confined() {
        if let Err(e) = sys.no_new_privs() {
            return Failure::kernel("set no_new_privs", e);
        }
        // Last, so that everything above is not filtered; execve is allowed.
        for program in &exec.seccomp {
            if let Err(e) = sys.seccomp(program) {
                return Failure::kernel("load the seccomp filter", e);
            }
        }
    }
    let program = exec.program.as_str();
    let candidates: Vec<String> = if program.contains('/') {
        vec![program.to_owned()]
    } else {
        exec.path.iter().map(|dir| format!("{}/{program}", if dir.is_empty() { "." } else { dir })).collect()
    };
    let mut denied = None;
    for candidate in candidates {
        let Ok(path) = CString::new(candidate) else { continue };
        match sys.execve(&path, &exec.args, &exec.env) {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => denied = Some(Errno::EACCES),
            // The file is there but cannot run (ENOEXEC, E2BIG, ...): say so.
            e => return Failure::Exec { program: program.to_owned(), errno: e as i32 },
        }
    }
    match denied {
        Some(e) => Failure::Exec { program: program.to_owned(), errno: e as i32 },
        None => Failure::NotFound { program: program.to_owned() },
    }
}

#[cfg(test)]
mod tests {
    use super::super::sys::tests::Recorder;
    use super::*;

    fn plan(rootfs: RootFs, network: Network) -> Plan {
        let (masked, readonly) = confinement(Path::new("proc"), Path::new("sys"), &[]);
        Plan {
            root: PathBuf::from("/t/merged"),
            rootfs,
            dev: PathBuf::from("dev"),
            proc: PathBuf::from("proc"),
            sys: PathBuf::from("sys"),
            masked,
            readonly,
            sys_readonly: true,
            sys_bind: false,
            tty_group: true,
            binds: vec![
                Bind { source: "/t/hosts".into(), target: "etc/hosts".into(), readonly: true },
                Bind { source: "/cache".into(), target: "root/.cache".into(), readonly: false },
            ],
            hostname: "box".into(),
            network,
            cwd: "/src/app".into(),
        }
    }

    #[test]
    fn mount_sequence_overlay() {
        let sys = Recorder::default();
        let options = "lowerdir=a:b,upperdir=/u,workdir=/w".to_owned();
        enter(&sys, &plan(RootFs::Overlay { options, chdir: Some("/snap".into()) }, Network::None)).expect("enter");
        let lines = sys.lines();
        let expected_prefix = [
            "unshare CloneFlags(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET)",
            "mount - / - MsFlags(MS_REC | MS_PRIVATE) -",
            "chdir /snap",
            "mount overlay /t/merged overlay MsFlags(MS_NODEV) lowerdir=a:b,upperdir=/u,workdir=/w",
            "mount tmpfs /t/merged/dev tmpfs MsFlags(MS_NOSUID | MS_NODEV | MS_STRICTATIME) mode=755,size=65536k",
            "create /t/merged/dev/null",
            "mount /dev/null /t/merged/dev/null - MsFlags(MS_BIND) -",
        ];
        assert_eq!(lines[..expected_prefix.len()], expected_prefix);
        let ro = "MsFlags(MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_REMOUNT | MS_BIND)";
        let mut expected_suffix = vec![
            "mount proc /t/merged/proc proc MsFlags(MS_NOSUID | MS_NODEV | MS_NOEXEC) -".to_owned(),
            "mount sysfs /t/merged/sys sysfs MsFlags(MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC) -".to_owned(),
        ];
        for path in READONLY {
            let at = format!("/t/merged{path}");
            expected_suffix.push(format!("mount {at} {at} - MsFlags(MS_BIND | MS_REC) -"));
            expected_suffix.push(format!("mount - {at} - {ro} -"));
        }
        for path in MASKED {
            expected_suffix.push(format!("mount /dev/null /t/merged{path} - MsFlags(MS_BIND) -"));
        }
        expected_suffix.extend(
            [
                "mount /t/hosts /t/merged/etc/hosts - MsFlags(MS_BIND) -",
                "mount - /t/merged/etc/hosts - MsFlags(MS_RDONLY | MS_NOSUID | MS_NODEV | MS_REMOUNT | MS_BIND) -",
                "mount /cache /t/merged/root/.cache - MsFlags(MS_BIND) -",
                "mount - /t/merged/root/.cache - MsFlags(MS_NOSUID | MS_NODEV | MS_REMOUNT | MS_BIND) -",
            ]
            .map(str::to_owned),
        );
        expected_suffix.extend(
            [
                "chdir /t/merged",
                "pivot_root . .",
                "umount2 . MntFlags(MNT_DETACH)",
                "chdir /",
                "sethostname box",
                "loopback_up",
                "mkdir /src 755",
                "mkdir /src/app 755",
                "chdir /src/app",
            ]
            .map(str::to_owned),
        );
        assert_eq!(lines[lines.len() - expected_suffix.len()..], expected_suffix);
        // Every device is bound before devpts, and /dev is complete before /proc.
        let devpts = lines.iter().position(|l| l.starts_with("mount devpts")).expect("devpts");
        for d in DEVICES {
            let bound = lines.iter().position(|l| l.starts_with(&format!("mount /dev/{d} "))).expect("device");
            assert!(bound < devpts);
        }
        assert!(lines.iter().any(|l| l == "symlink pts/ptmx /t/merged/dev/ptmx"));
        assert!(lines.iter().any(|l| l.contains("newinstance,ptmxmode=0666")));
    }

    #[test]
    fn copy_backend_binds_the_root_and_host_network_keeps_lo_alone() {
        let sys = Recorder::default();
        enter(&sys, &plan(RootFs::Bind, Network::Host)).expect("enter");
        let lines = sys.lines();
        assert_eq!(lines[0], "unshare CloneFlags(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC)");
        assert_eq!(lines[2], "mount /t/merged /t/merged - MsFlags(MS_BIND | MS_REC) -");
        assert_eq!(lines[3], "mount - /t/merged - MsFlags(MS_NODEV | MS_REMOUNT | MS_BIND) -");
        assert!(!lines.iter().any(|l| l == "loopback_up"));
    }

    #[test]
    fn private_network_is_entered_before_and_only_brings_lo_up() {
        let sys = Recorder::default();
        enter(&sys, &plan(RootFs::Bind, Network::Private)).expect("enter");
        let lines = sys.lines();
        // The helper made the namespace: PID 1 does not unshare another.
        assert_eq!(lines[0], "unshare CloneFlags(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC)");
        assert!(lines.iter().any(|l| l == "loopback_up"));
    }

    #[test]
    fn a_folder_is_masked_with_a_read_only_tmpfs_and_a_missing_path_skipped() {
        let sys = Recorder {
            fail: vec![
                ("mount /dev/null /t/merged/proc/acpi ".into(), Errno::ENOTDIR),
                ("mount /dev/null /t/merged/proc/kcore ".into(), Errno::ENOENT),
                ("mount /t/merged/proc/bus ".into(), Errno::ENOENT),
            ],
            ..Recorder::default()
        };
        enter(&sys, &plan(RootFs::Bind, Network::None)).expect("enter");
        let lines = sys.lines();
        let acpi = lines.iter().position(|l| l.starts_with("mount /dev/null /t/merged/proc/acpi ")).expect("acpi");
        assert_eq!(lines[acpi + 1], "mount tmpfs /t/merged/proc/acpi tmpfs MsFlags(MS_RDONLY) -");
        let kcore = lines.iter().position(|l| l.starts_with("mount /dev/null /t/merged/proc/kcore ")).expect("kcore");
        assert!(lines[kcore + 1].starts_with("mount /dev/null"), "{lines:?}");
        assert!(!lines.iter().any(|l| l.starts_with("mount - /t/merged/proc/bus ")), "{lines:?}");
    }

    #[test]
    fn rootless_host_network_binds_the_hosts_sys_read_only() {
        let mut p = plan(RootFs::Overlay { options: "o".into(), chdir: None }, Network::Host);
        p.sys_bind = true;
        let sys = Recorder::default();
        enter(&sys, &p).expect("enter");
        let lines = sys.lines();
        let at = lines.iter().position(|l| l == "mount /sys /t/merged/sys - MsFlags(MS_BIND | MS_REC) -");
        let at = at.unwrap_or_else(|| panic!("{lines:?}"));
        assert_eq!(
            lines[at + 1],
            "mount - /t/merged/sys - MsFlags(MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_REMOUNT | MS_BIND) -"
        );
        assert!(!lines.iter().any(|l| l.starts_with("mount sysfs")), "{lines:?}");
    }

    #[test]
    fn insecure_plans_mount_sysfs_writable_and_mask_nothing() {
        let sys = Recorder::default();
        let mut insecure = plan(RootFs::Bind, Network::None);
        insecure.masked.clear();
        insecure.readonly.clear();
        insecure.sys_readonly = false;
        enter(&sys, &insecure).expect("enter");
        let lines = sys.lines();
        assert!(
            lines.iter().any(|l| l == "mount sysfs /t/merged/sys sysfs MsFlags(MS_NOSUID | MS_NODEV | MS_NOEXEC) -")
        );
        assert!(!lines.iter().any(|l| l.starts_with("mount /dev/null /t/merged/proc")), "{lines:?}");
    }

    #[test]
    fn a_failing_call_stops_the_sequence_and_is_named() {
        let sys = Recorder { fail: vec![("mount overlay".into(), Errno::EINVAL)], ..Recorder::default() };
        let options = "lowerdir=a,upperdir=/u,workdir=/w".to_owned();
        let err = enter(&sys, &plan(RootFs::Overlay { options, chdir: None }, Network::Host)).expect_err("fails");
        assert!(
            matches!(&err, Failure::Kernel { what, errno } if what == "mount overlay on /t/merged" && *errno == Errno::EINVAL as i32),
            "{err:?}"
        );
        assert!(sys.lines().last().is_some_and(|l| l.starts_with("mount overlay")));
    }

    fn exec_plan(program: &str) -> Exec {
        Exec {
            user: ExecUser { uid: 1000, gid: 1001, groups: vec![10, 20], home: "/home/app".into() },
            program: program.into(),
            path: vec!["/usr/bin".into(), "/bin".into()],
            args: vec![CString::new(program).expect("arg")],
            env: vec![],
            console: None,
            capabilities: CAPABILITIES.to_vec(),
            seccomp: vec![vec![seccompiler::sock_filter { code: 6, jt: 0, jf: 0, k: 0 }; 3]],
            set_groups: true,
        }
    }

    #[test]
    fn exec_drops_groups_then_gid_then_uid_and_searches_the_path() {
        let sys = Recorder { fail: vec![("execve /usr/bin/sh".into(), Errno::ENOENT)], ..Recorder::default() };
        let failure = exec(&sys, &exec_plan("sh"));
        assert_eq!(
            sys.lines(),
            [
                "default_signals",
                "bound_capabilities [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31]",
                "set_capabilities [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31]",
                "setgroups [10,20]",
                "setgid 1001",
                "setuid 1000",
                "no_new_privs",
                "seccomp 3 instructions",
                "execve /usr/bin/sh [sh]",
                "execve /bin/sh [sh]"
            ]
        );
        // The fake exec "returned", which the real one never does on success.
        assert!(matches!(failure, Failure::Exec { .. }));
    }

    #[test]
    fn a_console_is_taken_as_root_before_dropping_privileges() {
        let sys = Recorder::default();
        let mut plan = exec_plan("/bin/sh");
        plan.console = Some("/dev/pts/0".into());
        let _ = exec(&sys, &plan);
        let lines = sys.lines();
        let console = lines.iter().position(|l| l == "console /dev/pts/0 1000").expect("console");
        let setgroups = lines.iter().position(|l| l.starts_with("setgroups")).expect("setgroups");
        assert!(console < setgroups, "{lines:?}");
        let sys = Recorder { fail: vec![("console".into(), Errno::ENOTTY)], ..Recorder::default() };
        let failure = exec(&sys, &plan);
        assert!(matches!(failure, Failure::Kernel { errno, .. } if errno == Errno::ENOTTY as i32), "{failure:?}");
        assert!(!sys.lines().iter().any(|l| l.starts_with("execve")));
    }

    #[test]
    fn insecure_exec_keeps_every_capability_and_loads_no_filter() {
        let sys = Recorder::default();
        let mut insecure = exec_plan("/bin/sh");
        insecure.capabilities = (0..=40).collect();
        insecure.seccomp.clear();
        let _ = exec(&sys, &insecure);
        let lines = sys.lines();
        assert!(!lines.iter().any(|l| l == "no_new_privs" || l.starts_with("seccomp")), "{lines:?}");
        let failing = Recorder { fail: vec![("seccomp".into(), Errno::EINVAL)], ..Recorder::default() };
        let failure = exec(&failing, &exec_plan("/bin/sh"));
        assert!(matches!(&failure, Failure::Kernel { what, .. } if what == "load the seccomp filter"), "{failure:?}");
        assert!(!failing.lines().iter().any(|l| l.starts_with("execve")));
    }

    #[test]
    fn exec_reports_a_missing_program() {
        let sys = Recorder { fail: vec![("execve".into(), Errno::ENOENT)], ..Recorder::default() };
        assert!(matches!(exec(&sys, &exec_plan("nope")), Failure::NotFound { program } if program == "nope"));
        let sys = Recorder { fail: vec![("execve".into(), Errno::EACCES)], ..Recorder::default() };
        assert!(matches!(exec(&sys, &exec_plan("/x/y")), Failure::Exec { errno, .. } if errno == Errno::EACCES as i32));
    }
}
