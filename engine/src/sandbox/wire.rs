//! What bake and its sandbox helper say to each other over the helper's
//! stdin (a Unix socket): one JSON request in, one JSON report out; and the
//! file descriptors that travel beside them (`SCM_RIGHTS`): a container's
//! stdio with the request, a terminal's master side from PID 1 back to bake.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The helper's one job.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// bake's pid: a helper whose parent is already someone else exits.
    pub(crate) parent: u32,
    pub(crate) request: Request,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Can this machine run steps, and with which backend, for uppers in `dir`?
    Probe {
        dir: PathBuf,
    },
    Run(Box<WireSpec>),
    /// `bake run`: an image's process with the caller's stdio (see
    /// [`ContainerWire`]).
    Container(Box<ContainerWire>),
}

/// A container: a throwaway root filesystem, stdio from bake, signals
/// forwarded. Comes with file descriptors (sent with the request's first
/// byte): the process's stdin, stdout and stderr, then, with `tty`, the
/// socket on which PID 1 sends back the terminal's master side.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ContainerWire {
    /// Its `upper` and `work` are ignored: the helper makes both in a
    /// temporary folder inside `scratch` and removes it when the container
    /// ends, whoever ends it.
    pub(crate) spec: WireSpec,
    pub(crate) scratch: PathBuf,
    /// A pseudo-terminal made inside the container, with this size (rows,
    /// columns; 0 for unknown).
    pub(crate) tty: Option<(u16, u16)>,
}

/// A [`super::RunSpec`] on the wire, with the backend already chosen.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireSpec {
    pub(crate) lowers: Vec<PathBuf>,
    pub(crate) upper: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: String,
    pub(crate) user: Option<String>,
    pub(crate) hostname: String,
    pub(crate) network: crate::lang::Network,
    /// `security "insecure"`: no seccomp, no masked or read-only paths,
    /// every capability.
    pub(crate) insecure: bool,
    pub(crate) mounts: Vec<super::Mount>,
    pub(crate) copy: bool,
}

/// The helper's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Report {
    /// The step ran; its exit code (128 + signal when a signal killed it).
    Exited(i32),
    /// bake asked the helper to stop; everything is gone.
    Cancelled,
    Failed(Failure),
    /// `None`: overlayfs works. `Some(reason)`: it does not, use the copy backend.
    Probed {
        overlay: Option<String>,
    },
}

/// Why a step could not start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Failure {
    /// A kernel call that sets up the sandbox failed (`what` names it).
    Kernel {
        what: String,
        errno: i32,
    },
    User {
        user: String,
        reason: String,
    },
    Target {
        target: String,
        reason: String,
    },
    NotFound {
        program: String,
    },
    Exec {
        program: String,
        errno: i32,
    },
    Io {
        what: String,
        message: String,
    },
    /// The NAT of a private network could not be started: `missing` when
    /// its program is not installed.
    Nat {
        missing: bool,
        message: String,
    },
}

impl Failure {
    pub(crate) fn kernel(what: impl Into<String>, errno: nix::errno::Errno) -> Self {
        Self::Kernel { what: what.into(), errno: errno as i32 }
    }

    pub(crate) fn io(what: impl Into<String>, e: &std::io::Error) -> Self {
        Self::Io { what: what.into(), message: e.to_string() }
    }
}

/// Sends `fds` to the other end of `socket` with one zero byte (a message
/// must carry at least one byte for its descriptors to travel).
pub(crate) fn send_fds(socket: &impl AsRawFd, fds: &[RawFd]) -> nix::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let byte = [0u8];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[std::io::IoSlice::new(&byte)],
        &[ControlMessage::ScmRights(fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map(drop)
}

/// Receives one byte into `byte` and the descriptors that came with it (at
/// most `N`; the kernel closes any beyond), close-on-exec. Returns how many
/// bytes arrived (0 at end of stream) and the descriptors.
pub(crate) fn receive_fds<const N: usize>(
    socket: &impl AsRawFd,
    byte: &mut [u8; 1],
) -> nix::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut space = nix::cmsg_space!([RawFd; N]);
    let mut iov = [std::io::IoSliceMut::new(byte)];
    let msg = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: the kernel just installed these descriptors in this
            // process for us; nothing else owns them.
            #[allow(unsafe_code)]
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok((msg.bytes, fds))
}
