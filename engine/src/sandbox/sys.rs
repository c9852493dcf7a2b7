//! The kernel calls the sandbox makes, behind a trait: [`LinuxSys`] makes
//! them, [`tests::Recorder`] writes them down so the unit tests can check the
//! sequence without root (youki's `Syscall`).
//!
//! Process plumbing (fork, wait, kill, pipes) is not here: it decides the
//! shape of the helper, not what the container sees, and cannot be faked
//! without faking the helper itself. The e2e tests cover it.

use std::ffi::{CStr, CString};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};

/// The calls that build a container's world.
pub(crate) trait Sys {
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()>;
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()>;
    fn chdir(&self, path: &Path) -> nix::Result<()>;
    fn sethostname(&self, name: &str) -> nix::Result<()>;
    /// Creates a folder (`EEXIST` is the caller's to ignore).
    fn mkdir(&self, path: &Path, mode: u32) -> nix::Result<()>;
    /// Creates an empty file to bind a file over.
    fn create_file(&self, path: &Path) -> nix::Result<()>;
    fn symlink(&self, target: &str, link: &Path) -> nix::Result<()>;
    /// Brings the loopback interface of the current network namespace up.
    fn loopback_up(&self) -> nix::Result<()>;
    /// Default dispositions for every signal: an ignored SIGPIPE (Rust
    /// ignores it at startup) or SIGHUP (`nohup bake`) would otherwise be
    /// inherited through exec by the step.
    fn default_signals(&self) -> nix::Result<()>;
    /// Shrinks the capability bounding set to `keep` (capability numbers):
    /// root's capabilities after `execve` are the bounding set.
    fn bound_capabilities(&self, keep: &[u32]) -> nix::Result<()>;
    /// Sets the effective and permitted sets to `keep` (what of it the
    /// process holds), empties the
    /// inheritable and ambient sets: what root keeps through `execve` is
    /// then exactly the bounding set, and nothing passes to a non-root user.
    fn set_capabilities(&self, keep: &[u32]) -> nix::Result<()>;
    /// `PR_SET_NO_NEW_PRIVS`: no setuid bit or file capability can raise
    /// the step's privileges, and a seccomp filter may be loaded.
    fn no_new_privs(&self) -> nix::Result<()>;
    /// Loads a seccomp filter for this process and its children.
    fn seccomp(&self, program: &[seccompiler::sock_filter]) -> nix::Result<()>;
    /// A new session whose controlling terminal is `tty`, which becomes
    /// stdin, stdout and stderr and is handed to `owner`.
    fn console(&self, tty: &Path, owner: Uid) -> nix::Result<()>;
    fn setgroups(&self, groups: &[Gid]) -> nix::Result<()>;
    fn setgid(&self, gid: Gid) -> nix::Result<()>;
    fn setuid(&self, uid: Uid) -> nix::Result<()>;
    /// Replaces the process; returns only on failure.
    fn execve(&self, path: &CStr, args: &[CString], env: &[CString]) -> Errno;
}

/// The real kernel.
pub(crate) struct LinuxSys;

impl Sys for LinuxSys {
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
        nix::sched::unshare(flags)
    }

    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn chdir(&self, path: &Path) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }

    fn sethostname(&self, name: &str) -> nix::Result<()> {
        nix::unistd::sethostname(name)
    }

    fn mkdir(&self, path: &Path, mode: u32) -> nix::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new().mode(mode).create(path).map_err(io_errno)?;
        // The umask may have taken bits away (sticky /dev/shm wants 1777).
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_errno)
    }

    fn create_file(&self, path: &Path) -> nix::Result<()> {
        std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path).map(drop).map_err(io_errno)
    }

    fn symlink(&self, target: &str, link: &Path) -> nix::Result<()> {
        std::os::unix::fs::symlink(target, link).map_err(io_errno)
    }

    #[allow(unsafe_code)]
    fn loopback_up(&self) -> nix::Result<()> {
        use nix::libc;
        use std::os::fd::AsRawFd;
        // Any socket will do to address the interface; std makes one safely.
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(io_errno)?;
        // SAFETY: `ifreq` is plain old data (a name and a union of integers
        // and sockaddrs); all zeroes is a valid value of every field.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = libc::c_char::try_from(*src).unwrap_or_default();
        }
        // SAFETY: SIOCGIFFLAGS reads the name and writes `ifru_flags` of the
        // `ifreq` we own, which outlives the call; the fd is a live socket.
        let got = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS as _, &raw mut req) };
        Errno::result(got)?;
        // SAFETY: SIOCGIFFLAGS succeeded, so the kernel wrote `ifru_flags`.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        #[allow(clippy::cast_possible_truncation)]
        let up = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        req.ifr_ifru.ifru_flags = flags | up;
        // SAFETY: as above; SIOCSIFFLAGS only reads the request.
        let set = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS as _, &raw const req) };
        Errno::result(set).map(drop)
    }

    #[allow(unsafe_code)]
    fn default_signals(&self) -> nix::Result<()> {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
        let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
        for signal in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP)) {
            // SAFETY: installing SIG_DFL runs no code of ours in a signal
            // handler, so nothing here can be interrupted unsoundly.
            unsafe { sigaction(signal, &default) }?;
        }
        // PID 1 blocks the signals it forwards; the mask survives execve.
        SigSet::empty().thread_set_mask()
    }

    #[allow(unsafe_code)]
    fn console(&self, tty: &Path, owner: Uid) -> nix::Result<()> {
        use nix::fcntl::{OFlag, open};
        use std::os::fd::AsRawFd;
        nix::unistd::setsid()?;
        let fd = open(tty, OFlag::O_RDWR | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?;
        // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal the
        // terminal from another session) and touches no memory of ours; the
        // fd is a terminal we just opened.
        let done = unsafe { nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCSCTTY as _, 0) };
        Errno::result(done)?;
        nix::unistd::fchown(&fd, Some(owner), None)?;
        nix::unistd::dup2_stdin(&fd)?;
        nix::unistd::dup2_stdout(&fd)?;
        nix::unistd::dup2_stderr(&fd)
    }

    #[allow(unsafe_code)]
    fn bound_capabilities(&self, keep: &[u32]) -> nix::Result<()> {
        let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(40);
        for cap in (0..=last).filter(|c| !keep.contains(c)) {
            // SAFETY: PR_CAPBSET_DROP takes one integer argument and touches
            // no memory of ours.
            let done = unsafe { nix::libc::prctl(nix::libc::PR_CAPBSET_DROP, nix::libc::c_ulong::from(cap), 0, 0, 0) };
            Errno::result(done)?;
        }
        Ok(())
    }

    #[allow(unsafe_code)]
    fn set_capabilities(&self, keep: &[u32]) -> nix::Result<()> {
        use nix::libc;
        // `struct __user_cap_header_struct` and `__user_cap_data_struct`.
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        // _LINUX_CAPABILITY_VERSION_3: 64-bit sets, as two 32-bit words.
        const VERSION_3: u32 = 0x2008_0522;
        let mut header = Header { version: VERSION_3, pid: 0 };
        let mut held = [Data::default(); 2];
        // SAFETY: capget writes one header and two data structs we own.
        let got = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, held.as_mut_ptr()) };
        Errno::result(got)?;
        let mut data = [Data::default(); 2];
        for &cap in keep.iter().filter(|&&c| c < 64) {
            let (word, bit) = ((cap / 32) as usize, 1 << (cap % 32));
            // Only what is held can be kept (root here lacks some).
            if held[word].permitted & bit != 0 {
                data[word].effective |= bit;
                data[word].permitted |= bit;
            }
        }
        // SAFETY: capset reads one header and two data structs, laid out as
        // the kernel's (repr(C)), which live until the call returns.
        let done = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
        Errno::result(done)?;
        // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes integer arguments only.
        let cleared = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::c_ulong::try_from(libc::PR_CAP_AMBIENT_CLEAR_ALL).unwrap_or(4),
                0,
                0,
                0,
            )
        };
        Errno::result(cleared).map(drop)
    }

    fn no_new_privs(&self) -> nix::Result<()> {
        nix::sys::prctl::set_no_new_privs()
    }

    fn seccomp(&self, program: &[seccompiler::sock_filter]) -> nix::Result<()> {
        seccompiler::apply_filter(program).map_err(|e| match e {
            seccompiler::Error::Seccomp(io) | seccompiler::Error::Prctl(io) => io_errno(io),
            _ => Errno::EINVAL,
        })
    }

    fn setgroups(&self, groups: &[Gid]) -> nix::Result<()> {
        nix::unistd::setgroups(groups)
    }

    fn setgid(&self, gid: Gid) -> nix::Result<()> {
        nix::unistd::setgid(gid)
    }

    fn setuid(&self, uid: Uid) -> nix::Result<()> {
        nix::unistd::setuid(uid)
    }

    fn execve(&self, path: &CStr, args: &[CString], env: &[CString]) -> Errno {
        match nix::unistd::execve(path, args, env) {
            Err(e) => e,
            Ok(never) => match never {},
        }
    }
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(io_errno)`
fn io_errno(e: std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Records every call as one line of text and succeeds, except for the
    /// calls told to fail.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub(crate) calls: RefCell<Vec<String>>,
        /// A call whose line starts with this fails with the errno.
        pub(crate) fail: Vec<(String, Errno)>,
    }

    impl Recorder {
        fn record(&self, line: String) -> nix::Result<()> {
            let failure = self.fail.iter().find(|(prefix, _)| line.starts_with(prefix.as_str())).map(|(_, e)| *e);
            self.calls.borrow_mut().push(line);
            failure.map_or(Ok(()), Err)
        }

        pub(crate) fn lines(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
    }

    impl Sys for Recorder {
        fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
            self.record(format!("unshare {flags:?}"))
        }

        fn mount(
            &self,
            source: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> nix::Result<()> {
            let source = source.map_or("-".to_owned(), |s| s.display().to_string());
            self.record(format!(
                "mount {source} {} {} {flags:?} {}",
                target.display(),
                fstype.unwrap_or("-"),
                data.unwrap_or("-")
            ))
        }

        fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
            self.record(format!("umount2 {} {flags:?}", target.display()))
        }

        fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
            self.record(format!("pivot_root {} {}", new_root.display(), put_old.display()))
        }

        fn chdir(&self, path: &Path) -> nix::Result<()> {
            self.record(format!("chdir {}", path.display()))
        }

        fn sethostname(&self, name: &str) -> nix::Result<()> {
            self.record(format!("sethostname {name}"))
        }

        fn mkdir(&self, path: &Path, mode: u32) -> nix::Result<()> {
            self.record(format!("mkdir {} {mode:o}", path.display()))
        }

        fn create_file(&self, path: &Path) -> nix::Result<()> {
            self.record(format!("create {}", path.display()))
        }

        fn symlink(&self, target: &str, link: &Path) -> nix::Result<()> {
            self.record(format!("symlink {target} {}", link.display()))
        }

        fn loopback_up(&self) -> nix::Result<()> {
            self.record("loopback_up".to_owned())
        }

        fn default_signals(&self) -> nix::Result<()> {
            self.record("default_signals".to_owned())
        }

        fn bound_capabilities(&self, keep: &[u32]) -> nix::Result<()> {
            self.record(format!("bound_capabilities {keep:?}"))
        }

        fn set_capabilities(&self, keep: &[u32]) -> nix::Result<()> {
            self.record(format!("set_capabilities {keep:?}"))
        }

        fn no_new_privs(&self) -> nix::Result<()> {
            self.record("no_new_privs".to_owned())
        }

        fn seccomp(&self, program: &[seccompiler::sock_filter]) -> nix::Result<()> {
            self.record(format!("seccomp {} instructions", program.len()))
        }

        fn console(&self, tty: &Path, owner: Uid) -> nix::Result<()> {
            self.record(format!("console {} {owner}", tty.display()))
        }

        fn setgroups(&self, groups: &[Gid]) -> nix::Result<()> {
            let list: Vec<String> = groups.iter().map(ToString::to_string).collect();
            self.record(format!("setgroups [{}]", list.join(",")))
        }

        fn setgid(&self, gid: Gid) -> nix::Result<()> {
            self.record(format!("setgid {gid}"))
        }

        fn setuid(&self, uid: Uid) -> nix::Result<()> {
            self.record(format!("setuid {uid}"))
        }

        fn execve(&self, path: &CStr, args: &[CString], _env: &[CString]) -> Errno {
            let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
            let line = format!("execve {} [{}]", path.to_string_lossy(), args.join(" "));
            match self.record(line) {
                Err(e) => e,
                // A fake exec that "succeeds" still has to return something.
                Ok(()) => Errno::UnknownErrno,
            }
        }
    }
}
