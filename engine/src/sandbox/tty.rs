//! Terminal sizes: `TIOCGWINSZ` and `TIOCSWINSZ` (nix has no safe wrapper).

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::libc;

/// The size of the terminal `fd` refers to, as (rows, columns); `None` when
/// it is not a terminal or does not know its size.
#[allow(unsafe_code)]
pub fn size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we own, which
    // outlives the call; the fd is borrowed, so open.
    let got = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ as _, &raw mut size) };
    (got == 0 && size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}

/// Sets the size of a terminal (either side of a pseudo-terminal); the
/// kernel sends SIGWINCH to its foreground process group.
#[allow(unsafe_code)]
pub(crate) fn set_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> nix::Result<()> {
    let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ only reads the `winsize` we own, which outlives the
    // call; the fd is borrowed, so open.
    let set = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ as _, &raw const size) };
    Errno::result(set).map(drop)
}
