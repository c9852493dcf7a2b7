//! Where bake keeps its state: `BAKE_HOME`; else, for root,
//! `$XDG_CACHE_HOME/bake`, else `~/.cache/bake`; for any other user (bake
//! rootless, see `sandbox/userns.rs`), `$XDG_DATA_HOME/bake`, else
//! `~/.local/share/bake`.
//!
//! A rootless store is not a cache a user may delete with `rm -r`: its files
//! belong to the user's subordinate ids, it records overlay whiteouts with
//! `user.overlay.*` xattrs where root's has `trusted.overlay.*`, and only
//! bake (in its user namespace) can prune it; so it lives with the user's
//! data, apart from root's.
//!
//! ```text
//! $BAKE_HOME/
//!   index/      context file indexes, one per context folder (see `context`)
//!   store/      the content-addressed store: blobs, images, cache entries (see `store`)
//!   snapshots/  layers unpacked once per diffID (see `snapshot`)
//!   tmp/        running `run` steps' scratch folders (upper, work), on the
//!               snapshots' filesystem so an upper can become a snapshot
//!   cache-mounts/  `cache` folders of `run` steps, one per cache id
//! ```
//!
//! bake's configuration file (registry mirrors, insecure registries, store
//! size cap) is `BAKE_CONFIG`, else `$XDG_CONFIG_HOME/bake/config.kdl`, else
//! `~/.config/bake/config.kdl`.
//!
//! # Permissions
//!
//! The home holds what pulled images carry, as root extracted it: device
//! nodes, setuid programs, files owned by other users. None of that may be
//! usable by another local user through the home, so [`Home::prepare`]
//! makes each of the folders above private (mode 0700) when it creates it,
//! and tightens one that an older bake, or a umask, left open. A folder
//! that only the owner can traverse makes everything below it unreachable
//! to others, whatever its own mode: a block device node that a layer
//! declares `0666` in a snapshot is still reachable by root alone. The home
//! folder itself is created 0700 too, but an existing one is left as it is:
//! `BAKE_HOME` may name a folder that is not bake's alone.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use miette::Diagnostic;

/// The environment variable that moves bake's local state.
pub const BAKE_HOME: &str = "BAKE_HOME";
/// The environment variable that names bake's configuration file.
pub const BAKE_CONFIG: &str = "BAKE_CONFIG";

/// A write that failed because the disk is full (ENOSPC), with the file or
/// folder being written: the kernel's "No space left on device" names
/// neither, and a build touches several disks (the store, the project, an
/// output folder).
#[derive(Debug, thiserror::Error)]
#[error("the disk holding {} is full", path.display())]
pub struct DiskFull {
    pub path: PathBuf,
}

/// `e`, naming `path` if it says the disk is full.
pub fn name_disk_full(e: std::io::Error, path: &Path) -> std::io::Error {
    if e.raw_os_error() == Some(nix::libc::ENOSPC) {
        std::io::Error::new(std::io::ErrorKind::StorageFull, DiskFull { path: path.to_path_buf() })
    } else {
        e
    }
}

/// The path a disk-full error names (see [`name_disk_full`]); for an ENOSPC
/// that names none, `fallback`.
pub fn disk_full_path(e: &std::io::Error, fallback: Option<&Path>) -> Option<PathBuf> {
    if let Some(full) = e.get_ref().and_then(|inner| inner.downcast_ref::<DiskFull>()) {
        return Some(full.path.clone());
    }
    (e.raw_os_error() == Some(nix::libc::ENOSPC)).then(|| fallback.map(Path::to_path_buf)).flatten()
}

/// The kernel's own error for a full disk, in place of a [`DiskFull`] that
/// the message already says: "No space left on device (os error 28)".
pub fn no_space(e: std::io::Error) -> std::io::Error {
    if e.get_ref().and_then(|inner| inner.downcast_ref::<DiskFull>()).is_some() {
        std::io::Error::from_raw_os_error(nix::libc::ENOSPC)
    } else {
        e
    }
}

/// The help of every disk-full error.
pub const DISK_FULL_HELP: &str = "free space on that disk (`bake cache prune` frees what bake's store no longer \
                                  needs), or move bake's state to a bigger disk with BAKE_HOME";

/// The mode of bake's private folders: their owner alone may enter them.
const PRIVATE: u32 = 0o700;

/// Why the home cannot be used.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("cannot prepare bake's folder {}", path.display())]
#[diagnostic(
    code(bake::home::prepare),
    help(
        "bake keeps its state in BAKE_HOME (else, for root, $XDG_CACHE_HOME/bake or ~/.cache/bake; for other users, $XDG_DATA_HOME/bake or ~/.local/share/bake): it must be a folder you own"
    )
)]
pub struct HomeError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// bake's state folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// A home at an explicit folder.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The home named by the environment, as described in the module docs.
    /// Returns `None` when neither `BAKE_HOME`, the XDG folder nor `HOME` is
    /// set.
    pub fn from_env() -> Option<Self> {
        Self::from_vars(crate::sandbox::rootless(), |name| std::env::var_os(name).filter(|v| !v.is_empty()))
    }

    fn from_vars(rootless: bool, var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<Self> {
        if let Some(home) = var(BAKE_HOME) {
            return Some(Self::new(home));
        }
        if rootless {
            if let Some(data) = var("XDG_DATA_HOME") {
                return Some(Self::new(PathBuf::from(data).join("bake")));
            }
            return var("HOME").map(|home| Self::new(PathBuf::from(home).join(".local/share/bake")));
        }
        if let Some(cache) = var("XDG_CACHE_HOME") {
            return Some(Self::new(PathBuf::from(cache).join("bake")));
        }
        var("HOME").map(|home| Self::new(PathBuf::from(home).join(".cache").join("bake")))
    }

    /// The home folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Folder of the context file indexes.
    pub fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    /// The content-addressed store.
    pub fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }

    /// Unpacked layers.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// Scratch folders of running steps, on the snapshots' filesystem.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// `cache` folders of `run` steps.
    pub fn cache_mounts_dir(&self) -> PathBuf {
        self.root.join("cache-mounts")
    }

    /// Creates the home and its folders, private (see the module docs), and
    /// tightens the folders of an existing home that others could enter.
    pub fn prepare(&self) -> Result<(), HomeError> {
        let error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| HomeError { path, source }
        };
        if !self.root.is_dir() {
            std::fs::DirBuilder::new().recursive(true).mode(PRIVATE).create(&self.root).map_err(error(&self.root))?;
        }
        for dir in [self.index_dir(), self.store_dir(), self.snapshots_dir(), self.tmp_dir(), self.cache_mounts_dir()] {
            make_private(&dir).map_err(error(&dir))?;
        }
        Ok(())
    }
}

impl Home {
    /// Removes the scratch folders in `tmp/` that killed processes left
    /// (see [`crate::scratch`]); returns the bytes freed. Unpacks cut short
    /// are the snapshots' to prune.
    pub fn prune_scratch(&self) -> Result<u64, HomeError> {
        let tmp = self.tmp_dir();
        let kinds = [crate::exec::RUN_SCRATCH, crate::sandbox::CONTAINER_SCRATCH, crate::sandbox::PROBE_SCRATCH];
        crate::scratch::prune(&tmp, &kinds).map_err(|source| HomeError { path: tmp, source })
    }
}

/// Creates `dir` with mode 0700, or takes group and other permissions away
/// from an existing one.
fn make_private(dir: &Path) -> std::io::Result<()> {
    match std::fs::DirBuilder::new().mode(PRIVATE).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
            // Group and other permissions off; the owner's and special bits kept.
            let private = mode & 0o7700;
            if private == mode {
                return Ok(());
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(private))
        }
        Err(e) => Err(e),
    }
}

/// The configuration file named by the environment (it may not exist).
pub fn config_path() -> Option<PathBuf> {
    config_path_from(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
}

fn config_path_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    if let Some(path) = var(BAKE_CONFIG) {
        return Some(PathBuf::from(path));
    }
    if let Some(config) = var("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(config).join("bake/config.kdl"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".config/bake/config.kdl"))
}

impl HomeError {
    /// Whose the error is: bake's folder cannot be made, the machine's.
    pub fn tier(&self) -> crate::Tier {
        crate::Tier::Environment
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn home_of(rootless: bool, vars: &[(&str, &str)]) -> Option<PathBuf> {
        let vars: Vec<(String, OsString)> = vars.iter().map(|(k, v)| ((*k).to_owned(), OsString::from(v))).collect();
        Home::from_vars(rootless, |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())).map(|h| h.root)
    }

    fn home(vars: &[(&str, &str)]) -> Option<PathBuf> {
        home_of(false, vars)
    }

    #[test]
    fn precedence() {
        assert_eq!(home(&[("BAKE_HOME", "/b"), ("HOME", "/h")]), Some("/b".into()));
        assert_eq!(home(&[("XDG_CACHE_HOME", "/x"), ("XDG_DATA_HOME", "/d"), ("HOME", "/h")]), Some("/x/bake".into()));
        assert_eq!(home(&[("HOME", "/h")]), Some("/h/.cache/bake".into()));
        assert_eq!(home(&[]), None);
    }

    #[test]
    fn rootless_precedence() {
        let home = |vars: &[(&str, &str)]| home_of(true, vars);
        assert_eq!(home(&[("BAKE_HOME", "/b"), ("XDG_DATA_HOME", "/d"), ("HOME", "/h")]), Some("/b".into()));
        assert_eq!(home(&[("XDG_CACHE_HOME", "/x"), ("XDG_DATA_HOME", "/d"), ("HOME", "/h")]), Some("/d/bake".into()));
        assert_eq!(home(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]), Some("/h/.local/share/bake".into()));
        assert_eq!(home(&[]), None);
    }

    #[test]
    fn config_precedence() {
        let path = |vars: &[(&str, &str)]| {
            config_path_from(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v)))
        };
        assert_eq!(path(&[("BAKE_CONFIG", "/c.kdl"), ("HOME", "/h")]), Some("/c.kdl".into()));
        assert_eq!(path(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")]), Some("/x/bake/config.kdl".into()));
        assert_eq!(path(&[("HOME", "/h")]), Some("/h/.config/bake/config.kdl".into()));
    }
}
