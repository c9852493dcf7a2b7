//! A step's private network: a network namespace of its own, made by the
//! helper, and slirp4netns serving it from the host's namespace.
//!
//! ```text
//! helper: unshare(NEWNET), back to the host's namespace
//!         spawn slirp4netns (namespace by path; host PID namespace)
//!         unshare(NEWPID), setns(step) ─fork─▶ PID 1 (mounts ..., then waits at the gate)
//!         setns(host); slirp4netns ready? ── open the gate ─▶ the step runs
//!           tap0 10.0.2.100/24, default route 10.0.2.2, DNS forwarder 10.0.2.3
//! ```
//!
//! slirp4netns is a userspace TCP/IP stack: the step's packets leave through
//! ordinary sockets of the slirp4netns process, so the step reaches what the
//! host reaches, with the host's routing and DNS, and nothing else:
//!
//! - `--disable-host-loopback`: the gateway address does not lead to the
//!   host's 127.0.0.1, and no address does; a server bound to the host's
//!   loopback is out of reach. The one exception is by design: the DNS
//!   forwarder at 10.0.2.3 asks the resolvers of the host's
//!   `/etc/resolv.conf`, a loopback one (127.0.0.53) included, so DNS works
//!   on any host (slirp4netns(1) says so too).
//! - The namespace holds only `lo` and `tap0`: a packet socket there sees
//!   the step's own traffic, never the host's.
//! - `--enable-sandbox` (its own mount namespace over an empty root, fewer
//!   capabilities) and `--enable-seccomp`: slirp4netns runs as root and
//!   parses the step's packets, so it is confined too.
//!
//! Lifetime: slirp4netns ends when its `--exit-fd` reaches end of file, that
//! is when the helper closes it or dies (bake killed: the helper's death
//! signal, then the kernel closes the fd); the helper also SIGKILLs it when
//! the step ends, before it reports (without waiting for the kernel to tear
//! its tap device down: see [`Nat`]'s `Drop`). It starts before the fork and configures the
//! interface while PID 1 mounts; PID 1 lets the step start only once
//! slirp4netns reports it ready (`--ready-fd`), so its start-up mostly
//! hides behind the mount sequence. It is started before the helper's
//! `unshare(CLONE_NEWPID)`, so it is not in the step's PID namespace.
//!
//! pasta (Debian's `passt`) was measured as well and not chosen: the
//! Debian 12 build (2023-03) refuses, as root, to join a namespace given by
//! PID or path (it drops to `nobody` first), so it needs the namespace bound
//! at `/run/netns/NAME`, which a `kill -9` of bake would leave behind; and it
//! gives the namespace the host's own address, so the host's services on
//! that address cannot be told from the namespace's.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::CloneFlags;

use super::NAT_PROGRAM;
use super::wire::Failure;

/// What the step finds in `/etc/resolv.conf`: slirp4netns's DNS forwarder.
pub(crate) const RESOLV_CONF: &str = "nameserver 10.0.2.3\n";

/// slirp4netns's largest MTU: fewer, bigger packets through the userspace
/// stack (its default, 1500, halves the throughput of a download).
const MTU: &str = "--mtu=65520";

/// How long slirp4netns may take to configure the interface. It takes a few
/// milliseconds; a machine under heavy load may take much longer, and a
/// stuck start must still end in an error rather than a hung build.
const READY_BOUND: Duration = Duration::from_secs(30);

/// The network namespace the helper made for PID 1, and the way back to
/// the host's.
///
/// Rootless (see `userns.rs`), the host's namespace belongs to the initial
/// user namespace, and nothing in bake's may enter it again: the helper
/// never leaves it. A short-lived child unshares the namespace instead, the
/// helper keeps a handle on it, and PID 1 enters it itself
/// ([`Namespace::entered_by_pid1`]).
pub(crate) struct Namespace {
    host: Option<File>,
    step: File,
}

/// Makes a new network namespace, the helper staying in the host's; PID 1
/// is forked between [`Namespace::enter`] and [`Namespace::leave`].
pub(crate) fn create() -> Result<Namespace, Failure> {
    if super::userns::nested() {
        return create_in_child();
    }
    let host = File::open("/proc/self/ns/net").map_err(|e| Failure::io("open the host's network namespace", &e))?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| Failure::kernel("unshare the network namespace", e))?;
    let step = File::open("/proc/self/ns/net");
    // Back in the host's namespace at once, whatever happened.
    nix::sched::setns(host.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| Failure::kernel("return to the host's network namespace", e))?;
    let step = step.map_err(|e| Failure::io("open the step's network namespace", &e))?;
    Ok(Namespace { host: Some(host), step })
}

/// A child unshares a network namespace and waits until the helper holds
/// it open.
fn create_in_child() -> Result<Namespace, Failure> {
    let pipe = |()| std::io::pipe().map_err(|e| Failure::io("create a pipe", &e));
    let ((mut made_r, mut made_w), (mut held_r, held_w)) = (pipe(())?, pipe(())?);
    #[allow(unsafe_code)]
    // SAFETY: the helper is single-threaded (it runs no runtime and spawns no
    // threads), so the child starts with consistent locks and heap.
    let forked = unsafe { nix::unistd::fork() }.map_err(|e| Failure::kernel("fork", e))?;
    let child = match forked {
        nix::unistd::ForkResult::Child => {
            drop((made_r, held_w));
            let code = match nix::sched::unshare(CloneFlags::CLONE_NEWNET) {
                Ok(()) if made_w.write_all(b"\n").is_ok() => {
                    // Until the helper has opened the namespace (or died).
                    let _ = held_r.read(&mut [0u8; 1]);
                    0
                }
                _ => 1,
            };
            // A forked child of the helper: it cannot return to its stack.
            #[allow(clippy::exit)]
            std::process::exit(code);
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop((made_w, held_r));
    let made = matches!(made_r.read(&mut [0u8; 1]), Ok(1));
    let step = made.then(|| File::open(format!("/proc/{child}/ns/net")));
    drop(held_w);
    let _ = nix::sys::wait::waitpid(child, None);
    match step {
        Some(Ok(step)) => Ok(Namespace { host: None, step }),
        Some(Err(e)) => Err(Failure::io("open the step's network namespace", &e)),
        None => Err(Failure::Io {
            what: "unshare the network namespace".into(),
            message: "the child that makes it failed".into(),
        }),
    }
}

impl Namespace {
    /// Whether PID 1 enters the namespace itself (rootless), rather than
    /// being forked inside it.
    pub(crate) fn entered_by_pid1(&self) -> bool {
        self.host.is_none()
    }

    pub(crate) fn enter(&self) -> Result<(), Failure> {
        nix::sched::setns(self.step.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| Failure::kernel("enter the step's network namespace", e))
    }

    pub(crate) fn leave(&self) -> Result<(), Failure> {
        match &self.host {
            Some(host) => nix::sched::setns(host.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| Failure::kernel("return to the host's network namespace", e)),
            None => Ok(()),
        }
    }
}

/// A running slirp4netns: ends when dropped.
pub(crate) struct Nat {
    child: Child,
    /// slirp4netns exits when this closes.
    _exit: OwnedFd,
}

impl Drop for Nat {
    /// SIGKILL, and no wait: closing its tap device unregisters it, which
    /// takes the kernel about 20 ms (an RCU grace period) that the step
    /// need not wait for. The process runs nothing after the signal; it is
    /// reaped by init once the helper, its parent, has exited.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.try_wait();
    }
}

/// Starts slirp4netns for `namespace`. It must be started before the
/// helper's `unshare(CLONE_NEWPID)`: a child of the helper born after that
/// call lives in the step's PID namespace, and would die with PID 1 and hold
/// it as a zombie. [`Starting::ready`] waits until it has configured the
/// interface; its messages go to `log`, quoted when it fails.
pub(crate) fn start(namespace: &Namespace, log: &Path) -> Result<Starting, Failure> {
    let (ready_r, ready_w) = std::io::pipe().map_err(|e| Failure::io("create a pipe", &e))?;
    let (exit_r, exit_w) = std::io::pipe().map_err(|e| Failure::io("create a pipe", &e))?;
    let step = namespace.step.try_clone().map_err(|e| Failure::io("pass the network namespace", &e))?;
    // These ends are inherited by slirp4netns under their numbers; the
    // helper's own stay close-on-exec.
    for fd in [ready_w.as_fd(), exit_r.as_fd(), step.as_fd()] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| Failure::kernel("pass a pipe to slirp4netns", e))?;
    }
    let stderr = File::create(log).map_err(|e| Failure::io(format!("create {}", log.display()), &e))?;
    let spawned = Command::new(NAT_PROGRAM)
        .args(["--configure", MTU, "--disable-host-loopback", "--enable-sandbox", "--enable-seccomp"])
        .arg(format!("--ready-fd={}", ready_w.as_raw_fd()))
        .arg(format!("--exit-fd={}", exit_r.as_raw_fd()))
        .arg("--netns-type=path")
        .arg(format!("/proc/self/fd/{}", step.as_raw_fd()))
        .arg("tap0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn();
    drop((ready_w, exit_r, step));
    let child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::Nat { missing: true, message: e.to_string() });
        }
        Err(e) => return Err(Failure::Nat { missing: false, message: format!("cannot start {NAT_PROGRAM}: {e}") }),
    };
    Ok(Starting { nat: Nat { child, _exit: exit_w.into() }, ready: ready_r, log: log.to_path_buf() })
}

/// A slirp4netns that may not have configured the interface yet.
pub(crate) struct Starting {
    nat: Nat,
    ready: std::io::PipeReader,
    log: std::path::PathBuf,
}

impl Starting {
    /// Waits until slirp4netns says the interface is configured.
    pub(crate) fn ready(mut self) -> Result<Nat, Failure> {
        let failed = |what: String| {
            let said = std::fs::read_to_string(&self.log).unwrap_or_default();
            // Its last words, and what it could not open (rootless: the tun
            // device is often root's alone); not its warnings.
            let words: Vec<&str> = said.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            let mut picked: Vec<&str> = words.iter().copied().filter(|l| l.starts_with("open(")).collect();
            if let Some(last) = words.last().filter(|l| !picked.contains(l)) {
                picked.push(last);
            }
            let said = picked.join("; ");
            Failure::Nat { missing: false, message: if said.is_empty() { what } else { format!("{what}: {said}") } }
        };
        let mut fds = [PollFd::new(self.ready.as_fd(), PollFlags::POLLIN)];
        let millis = u16::try_from(READY_BOUND.as_millis()).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) => return Err(failed(format!("{NAT_PROGRAM} was not ready within {READY_BOUND:?}"))),
            Ok(_) => {}
            Err(e) => return Err(Failure::kernel("wait for slirp4netns", e)),
        }
        let mut byte = [0u8; 1];
        match self.ready.read(&mut byte) {
            Ok(1) => Ok(self.nat),
            _ => Err(failed(format!("{NAT_PROGRAM} ended before the network was up"))),
        }
    }
}
