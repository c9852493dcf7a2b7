//! Rootless bake: a user namespace in which the user is root.
//!
//! A user that is not root cannot mount, chown to other ids or create the
//! namespaces the sandbox needs. So bake, started by such a user, first
//! enters a user namespace of its own ([`enter`], called by the CLI before it
//! starts any thread, since `unshare(CLONE_NEWUSER)` refuses a threaded
//! process) and does everything there: unpacking layers, running steps,
//! reading their changes, cleaning up. Inside, the user is uid 0 with every
//! capability over what the namespace owns; the map, as rootless podman
//! makes it, is
//!
//! ```text
//! container 0       → the user's own uid (and gid)
//! container 1..=N   → the user's subordinate range (/etc/subuid, /etc/subgid)
//! ```
//!
//! written by the setuid programs `newuidmap` and `newgidmap` (Debian's
//! `uidmap`): only they may map ids other than one's own, and only from
//! outside the namespace. The order is synchronised: bake forks two mappers,
//! which wait on a pipe; bake unshares and writes one byte for each; each
//! mapper then becomes `newuidmap` or `newgidmap` on bake's PID (its
//! messages on a second pipe); bake waits for both before it goes on. (It
//! costs two execs of small setuid programs, a few milliseconds, per bake
//! command.)
//!
//! Files then carry the container's ids as seen from inside, and shifted ids
//! on the disk (container uid 100 is host uid `start + 99`): a layer written
//! from inside records container ids, so a rootless build makes the same
//! digests as a root build. The store is the user's to read only through
//! bake (`bake cache prune` removes what a plain `rm -r` cannot).
//!
//! When one of the programs fails, the map the other wrote is kept and the
//! missing one is the user's own id alone (see below).
//!
//! Without subordinate ranges (or without `newuidmap`), bake maps only the
//! user's own id to 0. Everything owned by root works; a chown to another id
//! fails, so a layer's files owned by others are kept as root's, and a step
//! that switches user (apt's `_apt`, a `user "app"` step) fails. [`enter`]
//! says so, and the CLI warns once.
//!
//! overlayfs in a user namespace (Linux 5.11 and later) keeps its metadata in
//! `user.overlay.*` xattrs (mount option `userxattr`): an opaque directory is
//! `user.overlay.opaque=y` there, a whiteout is still a character device 0:0
//! (which Linux lets a user namespace create). [`opaque_xattr`] names the
//! xattr for the namespace the process is in; a store made by root and one
//! made rootless are not interchangeable, and are kept apart by default
//! (see `home.rs`).

use std::ffi::CString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sched::CloneFlags;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::ForkResult;

/// The xattr overlayfs reads in the initial user namespace.
const TRUSTED_OPAQUE: &str = "trusted.overlay.opaque";
/// The xattr overlayfs reads with `userxattr` (inside a user namespace).
const USER_OPAQUE: &str = "user.overlay.opaque";

/// Set once [`enter`] has moved this process into a user namespace.
static ENTERED: AtomicBool = AtomicBool::new(false);

/// One line of a uid or gid map: `count` ids from `inside` are `outside` on
/// the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// A subordinate range of `/etc/subuid` or `/etc/subgid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubRange {
    pub start: u32,
    pub count: u32,
}

/// What [`enter`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entered {
    /// bake runs as root: nothing to do.
    Root,
    /// The user's id and subordinate ranges are mapped.
    Mapped { uids: Vec<IdRange>, gids: Vec<IdRange> },
    /// Only the user's own id is mapped (to 0); `reason` says why.
    SingleId { reason: String },
    /// No user namespace: steps cannot run; `reason` says why.
    Unavailable { reason: String },
}

impl Entered {
    /// The warning the CLI prints, if any.
    pub fn warning(&self) -> Option<String> {
        match self {
            Self::Root | Self::Mapped { .. } => None,
            Self::SingleId { reason } => Some(format!(
                "{reason}: only your own id is mapped into bake's user namespace, so files of a base image owned by \
                 other users become root's, and a `run` step that switches user or chowns to one fails \
                 (apt-get's `_apt`, a step with `user`); add a range with `usermod --add-subuids 100000-165535 \
                 --add-subgids 100000-165535 USER` and install newuidmap (Debian: `apt-get install uidmap`); \
                 `bake doctor` checks the rest"
            )),
            Self::Unavailable { reason } => Some(format!(
                "cannot make a user namespace ({reason}): `run` steps and `bake run` will fail; `bake doctor` says \
                 how to allow user namespaces"
            )),
        }
    }
}

/// Whether this process entered a user namespace through [`enter`]: bake
/// was started by a user that is not root.
pub fn entered() -> bool {
    ENTERED.load(Ordering::Relaxed)
}

/// Whether bake works for a user that is not root: not root, or moved into
/// its own user namespace by [`enter`].
pub fn rootless() -> bool {
    entered() || !nix::unistd::geteuid().is_root()
}

/// Whether this process is in a user namespace other than the initial one
/// (then overlayfs needs `userxattr`, and `trusted.*` xattrs are out of
/// reach). Read once from `/proc/self/uid_map`.
pub fn nested() -> bool {
    static NESTED: OnceLock<bool> = OnceLock::new();
    *NESTED.get_or_init(|| {
        std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|map| {
            let full: Vec<&str> = map.split_whitespace().collect();
            full != ["0", "0", "4294967295"]
        })
    })
}

/// Whether `gid` has a mapping in this process's user namespace.
pub(crate) fn gid_mapped(gid: u32) -> bool {
    let Ok(map) = std::fs::read_to_string("/proc/self/gid_map") else { return true };
    map.lines().any(|line| {
        let f: Vec<u64> = line.split_whitespace().filter_map(|n| n.parse().ok()).collect();
        matches!(f.as_slice(), [inside, _, count] if u64::from(gid) >= *inside && u64::from(gid) - inside < *count)
    })
}

/// Whether `setgroups` is denied here (a user namespace whose gid map an
/// unprivileged process wrote).
pub(crate) fn setgroups_denied() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny")
}

/// The xattr that marks an overlay directory opaque here.
pub fn opaque_xattr() -> &'static str {
    if nested() { USER_OPAQUE } else { TRUSTED_OPAQUE }
}

/// The overlay mount options that make the upper folder a plain diff (see
/// `helper.rs`). In a user namespace, `redirect_dir=off` would still follow
/// redirects (a trusted xattr), which `userxattr` forbids: `nofollow` is the
/// same for bake, whose lowers never hold redirects.
pub(crate) fn overlay_features() -> &'static str {
    if nested() {
        "userxattr,redirect_dir=nofollow,index=off,metacopy=off"
    } else {
        "redirect_dir=off,index=off,metacopy=off"
    }
}

/// Moves this process into a new user namespace as described in the module
/// docs, when it is not root. Must be called while the process has one
/// thread.
pub fn enter() -> Entered {
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    if uid == 0 {
        return Entered::Root;
    }
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name);
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    let subgid = std::fs::read_to_string("/etc/subgid").unwrap_or_default();
    let ranges = (sub_ranges(&subuid, name.as_deref(), uid), sub_ranges(&subgid, name.as_deref(), uid));
    let tools = (find_program("newuidmap"), find_program("newgidmap"));
    let plan = match (ranges, tools) {
        ((u, g), (Some(newuidmap), Some(newgidmap))) if !u.is_empty() && !g.is_empty() => {
            Some((map_of(uid, &u), map_of(gid, &g), newuidmap, newgidmap))
        }
        _ => None,
    };
    let why_single = || {
        let who = name.clone().unwrap_or_else(|| uid.to_string());
        if sub_ranges(&subuid, name.as_deref(), uid).is_empty() {
            format!("/etc/subuid has no range for {who}")
        } else if sub_ranges(&subgid, name.as_deref(), uid).is_empty() {
            format!("/etc/subgid has no range for {who}")
        } else {
            "newuidmap or newgidmap is not installed".to_owned()
        }
    };
    let Some((uids, gids, newuidmap, newgidmap)) = plan else {
        return match unshare_single(uid, gid) {
            Ok(()) => Entered::SingleId { reason: why_single() },
            Err(reason) => Entered::Unavailable { reason },
        };
    };
    match unshare_mapped(&uids, &gids, &newuidmap, &newgidmap) {
        Ok(()) => {
            ENTERED.store(true, Ordering::Relaxed);
            Entered::Mapped { uids, gids }
        }
        Err(Mapping::NoNamespace(reason)) => Entered::Unavailable { reason },
        // In the namespace, without a map: the single id, written by bake.
        Err(Mapping::NoMap(reason)) => match write_single(uid, gid) {
            Ok(()) => {
                ENTERED.store(true, Ordering::Relaxed);
                Entered::SingleId { reason }
            }
            Err(e) => Entered::Unavailable { reason: format!("{reason}; {e}") },
        },
    }
}

/// The full map: 0 is `own`, 1.. the subordinate ranges in order.
fn map_of(own: u32, ranges: &[SubRange]) -> Vec<IdRange> {
    let mut map = vec![IdRange { inside: 0, outside: own, count: 1 }];
    let mut next = 1u32;
    for r in ranges {
        map.push(IdRange { inside: next, outside: r.start, count: r.count });
        next = next.saturating_add(r.count);
    }
    map
}

/// The ranges of `text` (`/etc/subuid` form, `name:start:count` a line) for
/// the user `name` or uid `uid`.
pub fn sub_ranges(text: &str, name: Option<&str>, uid: u32) -> Vec<SubRange> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut f = line.trim().split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            let ours = Some(who) == name || who.parse::<u32>().ok() == Some(uid);
            let range = SubRange { start: start.trim().parse().ok()?, count: count.trim().parse().ok()? };
            (ours && range.count > 0).then_some(range)
        })
        .collect()
}

/// `program` in the directories of `PATH` (else the usual ones).
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned());
    path.split(':').chain(["/usr/bin", "/bin"]).map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

enum Mapping {
    /// unshare failed: still in the initial namespace.
    NoNamespace(String),
    /// In the new namespace, but newuidmap or newgidmap failed.
    NoMap(String),
}

fn unshare_single(uid: u32, gid: u32) -> Result<(), String> {
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| format!("unshare(CLONE_NEWUSER): {}", e.desc()))?;
    ENTERED.store(true, Ordering::Relaxed);
    write_single(uid, gid).map_err(|e| e.to_string())
}

/// Maps 0 to the user's own ids, as any user may (setgroups must then be
/// denied); a map that newuidmap or newgidmap already wrote is kept.
fn write_single(uid: u32, gid: u32) -> std::io::Result<()> {
    let unwritten = |path: &str| std::fs::read_to_string(path).map(|m| m.trim().is_empty());
    if unwritten("/proc/self/uid_map")? {
        std::fs::write("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
    }
    if unwritten("/proc/self/gid_map")? {
        std::fs::write("/proc/self/setgroups", "deny")?;
        std::fs::write("/proc/self/gid_map", format!("0 {gid} 1\n"))?;
    }
    Ok(())
}

fn unshare_mapped(uids: &[IdRange], gids: &[IdRange], newuidmap: &Path, newgidmap: &Path) -> Result<(), Mapping> {
    let pipes = std::io::pipe().and_then(|go| std::io::pipe().map(|done| (go, done)));
    let ((go_r, mut go_w), (mut done_r, done_w)) =
        pipes.map_err(|e| Mapping::NoNamespace(format!("cannot create a pipe: {e}")))?;
    let me = nix::unistd::getpid().as_raw().to_string();
    // Everything the mappers need, made before they are forked.
    let command = |program: &Path, map: &[IdRange]| -> Option<Vec<CString>> {
        let mut args = vec![program.as_os_str().to_str()?.to_owned(), me.clone()];
        for r in map {
            args.extend([r.inside.to_string(), r.outside.to_string(), r.count.to_string()]);
        }
        args.into_iter().map(|a| CString::new(a).ok()).collect()
    };
    let (Some(uid_command), Some(gid_command)) = (command(newuidmap, uids), command(newgidmap, gids)) else {
        return Err(Mapping::NoNamespace("the path of newuidmap or newgidmap is not UTF-8".to_owned()));
    };
    let mut mappers = Vec::with_capacity(2);
    for command in [&uid_command, &gid_command] {
        #[allow(unsafe_code)]
        // SAFETY: the caller is single-threaded (see `enter`), so the child
        // starts with consistent locks and heap; it only reads, dup2s and
        // execs.
        let forked = unsafe { nix::unistd::fork() };
        match forked {
            Ok(ForkResult::Child) => {
                let code = mapper(&go_r, &done_w, command);
                // The forked mapper, a process of its own: it cannot return.
                #[allow(clippy::exit)]
                std::process::exit(code);
            }
            Ok(ForkResult::Parent { child }) => mappers.push(child),
            Err(e) => {
                // Those already forked see end of file and exit.
                drop(go_w);
                for child in mappers {
                    let _ = waitpid(child, None);
                }
                return Err(Mapping::NoNamespace(format!("cannot fork: {}", e.desc())));
            }
        }
    }
    drop((go_r, done_w));
    let unshared = nix::sched::unshare(CloneFlags::CLONE_NEWUSER);
    if let Err(e) = unshared {
        drop(go_w);
        for child in mappers {
            let _ = waitpid(child, None);
        }
        return Err(Mapping::NoNamespace(format!("unshare(CLONE_NEWUSER): {}", e.desc())));
    }
    ENTERED.store(true, Ordering::Relaxed);
    // One byte for each mapper: bake is in the namespace, map it.
    let told = go_w.write_all(b"go");
    drop(go_w);
    let mut said = String::new();
    let _ = done_r.read_to_string(&mut said);
    let mapped = mappers
        .into_iter()
        .fold(told.is_ok(), |ok, child| matches!(waitpid(child, None), Ok(WaitStatus::Exited(_, 0))) && ok);
    if mapped {
        Ok(())
    } else {
        let said = said.trim();
        Err(Mapping::NoMap(if said.is_empty() { "newuidmap or newgidmap failed".to_owned() } else { said.to_owned() }))
    }
}

/// A mapper: waits until bake has unshared, then becomes newuidmap (or
/// newgidmap) with its messages going to `done`.
fn mapper(go: &std::io::PipeReader, done: &std::io::PipeWriter, command: &[CString]) -> i32 {
    let mut byte = [0u8; 1];
    if !matches!((&*go).read(&mut byte), Ok(1)) {
        return 1;
    }
    if nix::unistd::dup2_stderr(done).is_err() {
        return 1;
    }
    let Some(program) = command.first() else { return 1 };
    let Err(e) = nix::unistd::execv(program, command);
    let _ = write!(&*done, "cannot run {}: {}", program.to_string_lossy(), e.desc());
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_by_name_or_uid() {
        let text = "# comment\nalice:100000:65536\nbob:165536:65536\n1001:300000:10\nalice:500000:0\nbad line\n";
        assert_eq!(sub_ranges(text, Some("alice"), 1000), [SubRange { start: 100_000, count: 65536 }]);
        assert_eq!(sub_ranges(text, Some("carol"), 1001), [SubRange { start: 300_000, count: 10 }]);
        assert!(sub_ranges(text, None, 7).is_empty());
    }

    #[test]
    fn the_map_puts_the_user_at_zero_and_the_ranges_after() {
        let map = map_of(1000, &[SubRange { start: 100_000, count: 10 }, SubRange { start: 200_000, count: 5 }]);
        assert_eq!(
            map,
            [
                IdRange { inside: 0, outside: 1000, count: 1 },
                IdRange { inside: 1, outside: 100_000, count: 10 },
                IdRange { inside: 11, outside: 200_000, count: 5 },
            ]
        );
    }
}
