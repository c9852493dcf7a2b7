//! `bake run`'s side of the terminal: which descriptors the container gets,
//! raw mode while a terminal is attached, and the signals bake passes on.

use std::io::IsTerminal;
use std::os::fd::{AsFd, OwnedFd};

use bake_engine::sandbox::{ContainerIo, Control, FORWARDED_SIGNALS, terminal_size};
use nix::sys::signal::Signal;
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};
use tokio::sync::mpsc::UnboundedSender;

/// Without `-t`, bake's own descriptors go to the process as they are (stdin
/// only with `-i`, else /dev/null); with `-t`, bake copies between them and
/// a terminal made in the container.
pub(crate) fn container_io(interactive: bool, tty: bool) -> std::io::Result<ContainerIo> {
    let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned();
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    if tty {
        let size = terminal_size(stdout.as_fd()).or_else(|| terminal_size(stdin.as_fd()));
        let input = if interactive { Some(dup(stdin.as_fd())?) } else { None };
        return Ok(ContainerIo::Tty { input, output: dup(stdout.as_fd())?, size });
    }
    let input: OwnedFd = if interactive { dup(stdin.as_fd())? } else { std::fs::File::open("/dev/null")?.into() };
    Ok(ContainerIo::Direct { stdin: input, stdout: dup(stdout.as_fd())?, stderr: dup(std::io::stderr().as_fd())? })
}

/// bake's terminal in raw mode (keys such as Ctrl-C go to the container's
/// terminal as bytes) until dropped.
pub(crate) struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// `None` when stdin is not a terminal.
    pub(crate) fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// From now on, the signals a container gets are taken by bake and passed
/// on instead of ending bake. With a terminal, SIGWINCH becomes a resize of
/// the container's terminal (the kernel then signals its processes).
pub(crate) fn forward_signals(tx: &UnboundedSender<Control>, tty: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    for sig in FORWARDED_SIGNALS {
        let Ok(mut stream) = signal(SignalKind::from_raw(sig as i32)) else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                let message = if tty && sig == Signal::SIGWINCH {
                    let stdout = std::io::stdout();
                    match terminal_size(stdout.as_fd()).or_else(|| terminal_size(std::io::stdin().as_fd())) {
                        Some((rows, cols)) => Control::Resize { rows, cols },
                        None => continue,
                    }
                } else {
                    Control::Signal(sig)
                };
                if tx.send(message).is_err() {
                    return;
                }
            }
        });
    }
}
