//! Scratch folders, and telling a live owner's from a dead one's.
//!
//! Every scratch folder bake makes under its home carries its creator in its
//! name: `PREFIX<pid>.<start>-<random>`, where `start` is the process's start
//! time in clock ticks since boot (field 22 of `/proc/PID/stat`). A PID is
//! reused once its process is gone; a PID together with its start time is
//! not. So [`prune`] can tell, from the name alone and without any lock, a
//! folder whose process still runs (kept, however old) from one whose
//! process was killed (removed, however young). The name exists from the
//! moment the folder does, so there is no window in which a live folder
//! looks unowned.
//!
//! The folders: a `run` step's `tmp/run-*` (its upper, work folder and the
//! sandbox's `.sandbox-*` files), `bake run`'s `tmp/container-*`, the overlay
//! probe's `tmp/.sandbox-probe-*`, and a layer being unpacked,
//! `snapshots/.unpack-*`. A build killed with SIGKILL leaves them all behind;
//! `bake cache prune` removes them.
//!
//! The owner is looked up in this PID namespace: a bake in a container that
//! shares the home but not the host's PIDs would look dead. Do not share a
//! home across PID namespaces while pruning.

use std::io;
use std::path::Path;
use std::sync::OnceLock;

/// The name prefix of a scratch folder of kind `kind` (`run-`) owned by
/// this process: `run-<pid>.<start>-`, for `tempfile`'s `prefix`.
pub fn prefix(kind: &str) -> String {
    static OWNER: OnceLock<String> = OnceLock::new();
    let owner = OWNER.get_or_init(|| {
        let pid = std::process::id();
        // Without /proc, a start time of 0 marks the folder as this PID's; a
        // later prune then keeps it while any process has that PID.
        format!("{pid}.{}", start_time(pid).unwrap_or(0))
    });
    format!("{kind}{owner}-")
}

/// The start time of process `pid`, in clock ticks since boot; `None` if
/// there is no such process (or no /proc).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ...`: comm may hold spaces and parentheses, so count
    // fields after the last `)`. starttime is field 22, the 20th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the owner named in `name` (a folder made with [`prefix`] of one
/// of `kinds`) is alive; `None` when the name does not carry an owner (a
/// folder from an older bake, or not a scratch folder).
pub fn owner_alive(name: &str, kinds: &[&str]) -> Option<bool> {
    let rest = kinds.iter().find_map(|k| name.strip_prefix(k))?;
    let (owner, _) = rest.split_once('-')?;
    let (pid, start) = owner.split_once('.')?;
    let (pid, start): (u32, u64) = (pid.parse().ok()?, start.parse().ok()?);
    Some(match start_time(pid) {
        None => std::fs::symlink_metadata(format!("/proc/{pid}")).is_ok(),
        // A start time of 0 was written without /proc: the PID alone decides.
        Some(now) => start == 0 || now == start,
    })
}

/// Removes the folders in `dir` made with [`prefix`] of one of `kinds` whose
/// owner is dead; returns the bytes freed. Names without an owner are left.
pub fn prune(dir: &Path, kinds: &[&str]) -> io::Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut freed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if owner_alive(&name, kinds) == Some(false) {
            freed += remove_all(&entry.path())?;
        }
    }
    Ok(freed)
}

/// Removes a file or a folder tree, making read-only folders (mode 0555 in
/// a layer) writable first; returns the bytes it held. Already gone is fine.
pub(crate) fn remove_all(path: &Path) -> io::Result<u64> {
    let size = du(path);
    make_writable(path);
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(size),
    }
}

/// Bytes of the files below `path`.
pub(crate) fn du(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path).map_or(0, |rd| rd.flatten().map(|e| du(&e.path())).sum())
}

fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.is_dir()
    {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
        if let Ok(rd) = std::fs::read_dir(path) {
            for e in rd.flatten() {
                make_writable(&e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_live_owner_keeps_its_folder_and_a_dead_one_does_not() {
        let mine = format!("{}x", prefix("run-"));
        assert_eq!(owner_alive(&mine, &["run-"]), Some(true));
        // The same PID with another start time: a reused PID, so dead.
        let pid = std::process::id();
        let reused = format!("run-{pid}.{}-x", start_time(pid).expect("own stat") + 1);
        assert_eq!(owner_alive(&reused, &["run-"]), Some(false));
        // PIDs stop below 2^22 on Linux.
        assert_eq!(owner_alive("run-4194305.1-x", &["run-"]), Some(false));
        assert_eq!(owner_alive("run-abc", &["run-"]), None);
        assert_eq!(owner_alive(&mine, &["container-"]), None);

        let dir = tempfile::tempdir().expect("tempdir");
        for name in [mine.as_str(), "run-4194305.1-x", "run-old"] {
            std::fs::create_dir_all(dir.path().join(name).join("upper/ro")).expect("mkdir");
        }
        let ro = dir.path().join("run-4194305.1-x/upper/ro");
        std::fs::write(ro.join("f"), "12345").expect("write");
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        assert_eq!(prune(dir.path(), &["run-"]).expect("prune"), 5);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [mine, "run-old".to_owned()]);
    }
}
