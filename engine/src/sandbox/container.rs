//! bake's side of a container (`bake run`): the helper is started as for a
//! `run` step, with three differences.
//!
//! - **Stdio.** The caller's file descriptors travel to the helper with the
//!   request (`SCM_RIGHTS`) and become the process's stdin, stdout and
//!   stderr: nothing is copied, so pipes and redirections behave as they
//!   would for the process itself. With a terminal, PID 1 makes one in the
//!   container's own devpts after `pivot_root` and sends its master side
//!   back on a second socket (as runc's console socket does); bake copies
//!   bytes between it and the caller's descriptors, and sets its size.
//! - **Signals.** [`Control::Signal`] is sent to the helper, which passes it
//!   to PID 1, which passes it to the process (PID 1 takes them with
//!   sigwait; see `helper.rs`). [`Control::Kill`] sends the helper
//!   `KILL_SIGNAL`, which is also the helper's parent-death signal: either
//!   way the helper kills PID 1 (with it the whole PID namespace and its
//!   mounts) and removes the throwaway folders before it exits.
//! - **Filesystem.** The helper makes the upper and work folders in a
//!   temporary folder of [`ContainerSpec::scratch`] and removes it at the
//!   end; with the copy backend the copied root is simply removed. Nothing
//!   of a container is kept.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::UnboundedReceiver;

use super::helper::{FORWARDED, KILL_SIGNAL};
use super::wire::{self, ContainerWire, Report, Request, WireSpec};
use super::{Backend, HELPER_ARG, Mount, SandboxError, parse_report, probe_in, request_bytes, spawn_error};

/// The signals [`Control::Signal`] passes on; others are ignored.
pub const FORWARDED_SIGNALS: [Signal; 7] = FORWARDED;

/// A container to run: an image's filesystem and process.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Snapshot folders, bottom first (empty: `scratch`).
    pub lowers: Vec<PathBuf>,
    /// Where the throwaway upper folder is made (removed at the end).
    pub scratch: PathBuf,
    /// The command; a program without a slash is searched in the
    /// environment's `PATH` in the image.
    pub args: Vec<String>,
    /// The whole environment; `PATH` and `HOME` are added when missing.
    pub env: Vec<(String, String)>,
    /// Absolute; created (0755, root) when missing.
    pub cwd: String,
    /// As for a `run` step; `None` is root.
    pub user: Option<String>,
    pub hostname: String,
    /// Host folders and files bound into the container.
    pub mounts: Vec<Mount>,
}

/// The container's stdio.
#[derive(Debug)]
pub enum ContainerIo {
    /// Given to the process as they are.
    Direct { stdin: OwnedFd, stdout: OwnedFd, stderr: OwnedFd },
    /// A terminal made in the container: `input` (when given) is copied to
    /// it, its output is copied to `output`; `size` is (rows, columns).
    Tty { input: Option<OwnedFd>, output: OwnedFd, size: Option<(u16, u16)> },
}

/// What the caller can do to a running container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Pass a signal on to the process (one of [`FORWARDED_SIGNALS`]).
    Signal(Signal),
    /// The terminal's new size (rows, columns); ignored without a terminal.
    Resize { rows: u16, cols: u16 },
    /// Kill every process of the container (exit code 137).
    Kill,
}

/// Sends `KILL_SIGNAL` to a helper that has not been reaped yet, so that a
/// dropped future still ends the container and removes its folders.
struct Helper(Option<Pid>);

impl Helper {
    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::kill(pid, signal);
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.signal(KILL_SIGNAL);
    }
}

/// Runs the container to its end; returns the process's exit code (128 +
/// signal when a signal killed it). When this returns, no process, mount or
/// folder of the container remains.
pub async fn run_container(
    spec: &ContainerSpec,
    io: ContainerIo,
    control: &mut UnboundedReceiver<Control>,
) -> Result<i32, SandboxError> {
    let scratch = spec.scratch.clone();
    let backend = tokio::task::spawn_blocking(move || {
        let _ = std::fs::create_dir_all(&scratch);
        probe_in(&scratch)
    })
    .await
    .map_err(|e| SandboxError::Io { what: "probe the sandbox".into(), message: e.to_string() })?;
    let copy = match backend {
        Backend::Overlay => false,
        Backend::Copy { .. } => true,
        Backend::Unavailable { reason } => return Err(SandboxError::Unavailable { reason }),
    };
    let (stdio, terminal, size) = match io {
        ContainerIo::Direct { stdin, stdout, stderr } => ([stdin, stdout, stderr], None, None),
        ContainerIo::Tty { input, output, size } => {
            let null = || {
                std::fs::File::open("/dev/null")
                    .map(OwnedFd::from)
                    .map_err(|e| SandboxError::Io { what: "open /dev/null".into(), message: e.to_string() })
            };
            ([null()?, null()?, null()?], Some((input, output)), Some(size.unwrap_or((0, 0))))
        }
    };
    let wire = ContainerWire {
        spec: WireSpec {
            lowers: spec.lowers.clone(),
            upper: PathBuf::new(),
            work: PathBuf::new(),
            args: spec.args.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            user: spec.user.clone(),
            hostname: spec.hostname.clone(),
            // Containers stay on the host's network (ports are reached as
            // with `docker run --network host`).
            network: crate::lang::Network::Host,
            insecure: false,
            mounts: spec.mounts.clone(),
            copy,
        },
        scratch: spec.scratch.clone(),
        tty: size,
    };
    let bytes = request_bytes(Request::Container(Box::new(wire)))?;

    let (mut ours, theirs) = UnixStream::pair().map_err(spawn_error)?;
    let console = match terminal {
        Some(_) => Some(UnixStream::pair().map_err(spawn_error)?),
        None => None,
    };
    let mut command = tokio::process::Command::new("/proc/self/exe");
    command.arg(HELPER_ARG).stdin(Stdio::from(OwnedFd::from(theirs))).stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = command.spawn().map_err(spawn_error)?;
    drop(command);
    let helper = Helper(child.id().and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw));

    // The descriptors ride on a first zero byte; the JSON follows.
    let mut fds: Vec<i32> = stdio.iter().map(AsRawFd::as_raw_fd).collect();
    if let Some((_, theirs)) = &console {
        fds.push(theirs.as_raw_fd());
    }
    let sent = wire::send_fds(&ours, &fds)
        .map_err(std::io::Error::from)
        .and_then(|()| ours.write_all(&bytes))
        .and_then(|()| ours.shutdown(std::net::Shutdown::Write));
    drop(stdio);
    let console = console.map(|(ours, theirs)| {
        drop(theirs);
        ours
    });
    // A helper that died at once shows up below as a missing report.
    let _ = sent;

    let (master_tx, mut master_rx) = tokio::sync::oneshot::channel();
    let pump = match (console, terminal) {
        (Some(socket), Some((input, output))) => {
            Some(std::thread::spawn(move || pump(&socket, input, output, master_tx)))
        }
        _ => {
            drop(master_tx);
            None
        }
    };

    let mut master: Option<OwnedFd> = None;
    let mut pending_size = None;
    let mut controls_open = true;
    let mut master_open = pump.is_some();
    let status = loop {
        tokio::select! {
            exited = child.wait() => break exited.map_err(spawn_error)?,
            message = control.recv(), if controls_open => match message {
                Some(Control::Signal(signal)) if FORWARDED.contains(&signal) => helper.signal(signal),
                Some(Control::Signal(_)) => {}
                Some(Control::Resize { rows, cols }) => match &master {
                    Some(m) => { let _ = super::tty::set_size(m.as_fd(), rows, cols); }
                    None => pending_size = Some((rows, cols)),
                },
                Some(Control::Kill) => helper.signal(KILL_SIGNAL),
                None => controls_open = false,
            },
            received = &mut master_rx, if master_open => {
                master_open = false;
                if let (Ok(m), Some((rows, cols))) = (&received, pending_size) {
                    let _ = super::tty::set_size(m.as_fd(), rows, cols);
                }
                master = received.ok();
            }
        }
    };
    // Reaped: its pid may be someone else's from now on.
    let mut helper = helper;
    helper.0 = None;
    drop(master);
    if let Some(pump) = pump {
        // Ends once every process that held the terminal is gone, which the
        // helper's end guarantees.
        let _ = tokio::task::spawn_blocking(move || pump.join()).await;
    }
    ours.set_nonblocking(true).map_err(spawn_error)?;
    let mut control_socket = tokio::net::UnixStream::from_std(ours).map_err(spawn_error)?;
    let mut answer = Vec::new();
    let _ = control_socket.read_to_end(&mut answer).await;
    match parse_report(&answer, &status.to_string())? {
        Report::Exited(code) => Ok(code),
        Report::Failed(failure) => Err(failure.into()),
        Report::Cancelled => Ok(128 + Signal::SIGKILL as i32),
        Report::Probed { .. } => Err(SandboxError::Helper { status: "answered a probe".into() }),
    }
}

/// The terminal's master side, sent by PID 1; `None` when it closed the
/// socket without sending one (the container failed before).
fn receive_master(socket: &UnixStream) -> Option<OwnedFd> {
    let (_, fds) = wire::receive_fds::<1>(socket, &mut [0u8; 1]).ok()?;
    fds.into_iter().next()
}

/// Copies the terminal's output to `output` until every process holding the
/// terminal is gone, and `input` to the terminal meanwhile.
fn pump(
    socket: &UnixStream,
    input: Option<OwnedFd>,
    output: OwnedFd,
    master_tx: tokio::sync::oneshot::Sender<OwnedFd>,
) {
    let Some(master) = receive_master(socket) else { return };
    if let Ok(copy) = master.try_clone() {
        let _ = master_tx.send(copy);
    }
    // Dropped when the output ends, which wakes the input copier's poll.
    let Ok((stop_r, stop_w)) = std::io::pipe() else { return };
    let feeder = match (input, master.try_clone()) {
        (Some(input), Ok(to)) => Some(std::thread::spawn(move || feed(&input, to, &stop_r))),
        _ => None,
    };
    let mut from = std::fs::File::from(master);
    let mut to = Some(std::fs::File::from(output));
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            // EIO: no process holds the terminal any more.
            Ok(0) | Err(_) => break,
            Ok(n) => {
                // A closed output does not stop the container: its output
                // is then read and dropped, so it never blocks writing.
                if let Some(out) = &mut to
                    && out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err()
                {
                    to = None;
                }
            }
        }
    }
    drop(stop_w);
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
}

/// Copies `input` to the terminal until `input` ends or `stop` closes.
fn feed(input: &OwnedFd, to: OwnedFd, stop: &std::io::PipeReader) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut to = std::fs::File::from(to);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut fds = [PollFd::new(input.as_fd(), PollFlags::POLLIN), PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        if fds[1].any().unwrap_or(true) {
            return;
        }
        if !fds[0].any().unwrap_or(false) {
            continue;
        }
        match nix::unistd::read(input, &mut buf) {
            Err(nix::errno::Errno::EINTR) => {}
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}
