//! The copy backend, for machines where overlayfs cannot be mounted (bake in
//! a container whose own root is an overlay, a filesystem without trusted
//! xattrs): the lowers are copied into a private root filesystem, the step
//! runs in it, and afterwards the difference is written into the upper folder
//! in overlay form, so the layer code downstream cannot tell the backends
//! apart.
//!
//! - **Copy, never hardlink.** A step may change a file in place, which would
//!   change the snapshot through a hardlink. (`std::fs::copy` may still
//!   reflink on filesystems that can: a reflink is copy-on-write, so safe.)
//! - **Baseline.** Right before the step runs, every entry of the copy is
//!   recorded: type, mode, owner, size, mtime (ns), xattrs, link target, and
//!   identity (inode number plus birth time).
//! - **Diff.** Walking the copy afterwards: a new entry is written to the
//!   upper; a changed one too (metadata, size or mtime differ, or the inode is
//!   another one); an entry of the lowers that is gone becomes a whiteout
//!   (character device 0:0); a folder whose identity changed was removed and
//!   made again, so it is written whole and marked opaque
//!   (`trusted.overlay.opaque=y`) - just what overlayfs does for
//!   `rm -rf d && mkdir d` (and for a folder made where a file was). Every folder on the way to a written entry is in
//!   the upper with its current metadata, as overlayfs's copy-up leaves it.
//! - **Sandbox artefacts** (mountpoints the image did not have) are in the
//!   baseline but not marked as coming from the lowers: unchanged, they are
//!   left out; deleted, they need no whiteout.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::snapshot::MergedView;

use super::rootfs::set_times;

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() { name.to_owned() } else { format!("{rel}/{name}") }
}

fn xattrs(path: &Path) -> Vec<(OsString, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else { return Vec::new() };
    let mut out: Vec<(OsString, Vec<u8>)> = names
        .filter(|n| {
            let n = n.to_string_lossy();
            !n.starts_with("trusted.overlay.") && !n.starts_with("user.overlay.")
        })
        .filter_map(|n| xattr::get(path, &n).ok().flatten().map(|v| (n, v)))
        .collect();
    out.sort();
    out
}

/// Owner, mode, xattrs and times of `meta` onto `path` (times last, and not
/// for folders: their children would change them again; see `fix_dirs`).
fn apply(path: &Path, meta: &Metadata, attrs: &[(OsString, Vec<u8>)]) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))?;
    if meta.file_type().is_symlink() {
        return set_times(path, meta);
    }
    // After chown, which clears set-id bits.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    for (name, value) in attrs {
        xattr::set(path, name, value)?;
    }
    if !meta.is_dir() {
        set_times(path, meta)?;
    }
    Ok(())
}

/// Creates a non-folder entry at `dst` like `src` (content copied).
fn create_like(src: &Path, meta: &Metadata, dst: &Path) -> std::io::Result<()> {
    use nix::sys::stat::{Mode, SFlag, mknod};
    let ft = meta.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)
    } else if ft.is_file() {
        std::fs::copy(src, dst).map(drop)
    } else {
        let kind = if ft.is_char_device() {
            SFlag::S_IFCHR
        } else if ft.is_block_device() {
            SFlag::S_IFBLK
        } else if ft.is_fifo() {
            SFlag::S_IFIFO
        } else {
            SFlag::S_IFSOCK
        };
        mknod(dst, kind, Mode::from_bits_truncate(meta.mode() & 0o7777), meta.rdev())
            .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
    }
}

fn fix_dirs(dirs: &mut [(PathBuf, Metadata)]) -> std::io::Result<()> {
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, meta) in dirs.iter() {
        set_times(path, meta)?;
    }
    Ok(())
}

/// Copies the merged view into the empty folder `rootfs`; returns the paths
/// it copied (relative, `""` is the root).
pub(crate) fn materialize(view: &MergedView, rootfs: &Path) -> std::io::Result<HashSet<String>> {
    let other = std::io::Error::other;
    let mut copied = HashSet::from([String::new()]);
    let mut dirs = Vec::new();
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    if let Some(root) = view.find("/", false).map_err(other)?
        && !view.lowers().is_empty()
    {
        apply(rootfs, &root.meta, &xattrs(&root.real))?;
        dirs.push((rootfs.to_path_buf(), root.meta.clone()));
        let mut all = Vec::new();
        view.walk(&root, &mut all).map_err(other)?;
        for (rel, found) in all {
            let dst = rootfs.join(&rel);
            let meta = &found.meta;
            if meta.is_dir() {
                std::fs::create_dir(&dst)?;
                apply(&dst, meta, &xattrs(&found.real))?;
                dirs.push((dst, meta.clone()));
            } else if meta.is_file() && meta.nlink() > 1 && links.contains_key(&(meta.dev(), meta.ino())) {
                std::fs::hard_link(&links[&(meta.dev(), meta.ino())], &dst)?;
            } else {
                create_like(&found.real, meta, &dst)?;
                let attrs = if meta.file_type().is_symlink() { Vec::new() } else { xattrs(&found.real) };
                apply(&dst, meta, &attrs)?;
                if meta.is_file() && meta.nlink() > 1 {
                    links.insert((meta.dev(), meta.ino()), dst);
                }
            }
            copied.insert(rel);
        }
    } else {
        std::fs::set_permissions(rootfs, std::fs::Permissions::from_mode(0o755))?;
    }
    fix_dirs(&mut dirs)?;
    Ok(copied)
}

/// One entry of the copy as it was before the step.
#[derive(Debug, PartialEq)]
struct Snap {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    rdev: u64,
    ino: u64,
    born: Option<SystemTime>,
    link: Option<PathBuf>,
    attrs: Vec<(OsString, Vec<u8>)>,
}

impl Snap {
    fn of(path: &Path, meta: &Metadata) -> Self {
        let symlink = meta.file_type().is_symlink();
        Self {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: if meta.is_dir() { 0 } else { meta.size() },
            mtime: (meta.mtime(), meta.mtime_nsec()),
            rdev: meta.rdev(),
            ino: meta.ino(),
            born: meta.created().ok(),
            link: if symlink { std::fs::read_link(path).ok() } else { None },
            attrs: if symlink { Vec::new() } else { xattrs(path) },
        }
    }

    fn is_dir(&self) -> bool {
        self.mode & libc_s_ifmt() == 0o040_000
    }

    fn same_inode(&self, other: &Self) -> bool {
        self.ino == other.ino && self.born == other.born && (self.mode & libc_s_ifmt()) == (other.mode & libc_s_ifmt())
    }
}

const fn libc_s_ifmt() -> u32 {
    0o170_000
}

/// The copy right before the step ran.
pub(crate) struct Baseline {
    entries: HashMap<String, (Snap, bool)>,
    children: HashMap<String, BTreeSet<String>>,
}

/// Records every entry of `rootfs`; `from_lowers` tells which came from the
/// image (the others are sandbox mountpoints).
pub(crate) fn baseline(rootfs: &Path, from_lowers: &HashSet<String>) -> std::io::Result<Baseline> {
    let mut base = Baseline { entries: HashMap::new(), children: HashMap::new() };
    let meta = std::fs::symlink_metadata(rootfs)?;
    base.entries.insert(String::new(), (Snap::of(rootfs, &meta), true));
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let mut names = BTreeSet::new();
        for entry in std::fs::read_dir(rootfs.join(&rel))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = join(&rel, &name);
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                stack.push(child.clone());
            }
            let from_lower = from_lowers.contains(&child);
            base.entries.insert(child, (Snap::of(&path, &meta), from_lower));
            names.insert(name);
        }
        base.children.insert(rel, names);
    }
    Ok(base)
}

/// Writes what the step changed in `rootfs` into `upper`, in overlay form.
pub(crate) fn diff(rootfs: &Path, base: &Baseline, upper: &Path) -> std::io::Result<()> {
    let mut d = Differ { rootfs, upper, base, made: HashSet::new(), dirs: Vec::new(), links: HashMap::new() };
    d.dir("")?;
    // The upper's root is the container's `/`, as with overlayfs.
    let meta = std::fs::symlink_metadata(rootfs)?;
    apply(upper, &meta, &xattrs(rootfs))?;
    d.dirs.push((upper.to_path_buf(), meta));
    fix_dirs(&mut d.dirs)
}

struct Differ<'a> {
    rootfs: &'a Path,
    upper: &'a Path,
    base: &'a Baseline,
    /// Folders already in the upper.
    made: HashSet<String>,
    dirs: Vec<(PathBuf, Metadata)>,
    /// Inode of the copy -> its first path in the upper (hardlinks).
    links: HashMap<u64, PathBuf>,
}

impl Differ<'_> {
    /// Puts folder `rel` (and the folders above it) in the upper with their
    /// current metadata.
    fn ensure_dir(&mut self, rel: &str) -> std::io::Result<()> {
        if rel.is_empty() || self.made.contains(rel) {
            return Ok(());
        }
        if let Some((parent, _)) = rel.rsplit_once('/') {
            self.ensure_dir(parent)?;
        }
        let src = self.rootfs.join(rel);
        let meta = std::fs::symlink_metadata(&src)?;
        let dst = self.upper.join(rel);
        std::fs::create_dir(&dst)?;
        apply(&dst, &meta, &xattrs(&src))?;
        self.dirs.push((dst, meta));
        self.made.insert(rel.to_owned());
        Ok(())
    }

    fn parent_of(rel: &str) -> &str {
        rel.rsplit_once('/').map_or("", |(p, _)| p)
    }

    /// Writes `rel` and everything below it as new; `opaque` for a folder
    /// that replaced one of the lowers.
    fn add(&mut self, rel: &str, opaque: bool) -> std::io::Result<()> {
        let src = self.rootfs.join(rel);
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.is_dir() {
            self.ensure_dir(rel)?;
            if opaque {
                xattr::set(self.upper.join(rel), super::userns::opaque_xattr(), b"y")?;
            }
            let mut names: Vec<OsString> =
                std::fs::read_dir(&src)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
            names.sort();
            for name in names {
                self.add(&join(rel, &name.to_string_lossy()), false)?;
            }
            return Ok(());
        }
        self.ensure_dir(Self::parent_of(rel))?;
        let dst = self.upper.join(rel);
        if meta.is_file() && meta.nlink() > 1 {
            if let Some(first) = self.links.get(&meta.ino()) {
                return std::fs::hard_link(first, &dst);
            }
            self.links.insert(meta.ino(), dst.clone());
        }
        create_like(&src, &meta, &dst)?;
        let attrs = if meta.file_type().is_symlink() { Vec::new() } else { xattrs(&src) };
        apply(&dst, &meta, &attrs)
    }

    fn whiteout(&mut self, rel: &str) -> std::io::Result<()> {
        use nix::sys::stat::{Mode, SFlag, mknod};
        self.ensure_dir(Self::parent_of(rel))?;
        mknod(&self.upper.join(rel), SFlag::S_IFCHR, Mode::empty(), 0)
            .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
    }

    /// Compares folder `rel`, the same folder as before the step; returns
    /// whether it is in the upper afterwards.
    fn dir(&mut self, rel: &str) -> std::io::Result<bool> {
        let empty = BTreeSet::new();
        let before = self.base.children.get(rel).unwrap_or(&empty);
        let mut names: BTreeSet<String> = before.clone();
        for entry in std::fs::read_dir(self.rootfs.join(rel))? {
            names.insert(entry?.file_name().to_string_lossy().into_owned());
        }
        for name in names {
            let child = join(rel, &name);
            let then = self.base.entries.get(&child);
            let path = self.rootfs.join(&child);
            let now = match std::fs::symlink_metadata(&path) {
                Ok(meta) => Some(Snap::of(&path, &meta)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            match (then, now) {
                (None, None) => {}
                (Some((_, from_lower)), None) => {
                    if *from_lower {
                        self.whiteout(&child)?;
                    }
                }
                (None, Some(_)) => self.add(&child, false)?,
                (Some((then, from_lower)), Some(now)) => {
                    if !then.same_inode(&now) {
                        // Removed and made again. A folder hides whatever
                        // the lowers had there, opaque as overlayfs makes it
                        // (mkdir over a whiteout).
                        self.add(&child, now.is_dir() && *from_lower)?;
                    } else if now.is_dir() {
                        let inside = self.dir(&child)?;
                        if !inside && *then != now {
                            self.ensure_dir(&child)?;
                        }
                    } else if *then != now {
                        self.add(&child, false)?;
                    }
                }
            }
        }
        Ok(self.made.contains(rel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_faithful_and_an_untouched_copy_has_no_diff() {
        let t = tempfile::tempdir().expect("tempdir");
        let l0 = t.path().join("l0");
        std::fs::create_dir_all(l0.join("etc/sub")).expect("mkdir");
        std::fs::write(l0.join("etc/a"), "a").expect("write");
        std::fs::hard_link(l0.join("etc/a"), l0.join("etc/a2")).expect("link");
        std::os::unix::fs::symlink("a", l0.join("etc/l")).expect("link");
        std::fs::set_permissions(l0.join("etc/sub"), std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let view = MergedView::new(vec![l0.clone()]);
        let rootfs = t.path().join("rootfs");
        std::fs::create_dir(&rootfs).expect("mkdir");
        let copied = materialize(&view, &rootfs).expect("copy");
        assert!(copied.contains("etc/sub") && copied.contains("etc/l"));
        let sub = std::fs::metadata(rootfs.join("etc/sub")).expect("stat");
        assert_eq!(sub.mode() & 0o777, 0o700);
        assert_eq!(sub.mtime_nsec(), std::fs::metadata(l0.join("etc/sub")).expect("stat").mtime_nsec());
        assert_eq!(
            std::fs::metadata(rootfs.join("etc/a")).expect("stat").ino(),
            std::fs::metadata(rootfs.join("etc/a2")).expect("stat").ino()
        );
        let base = baseline(&rootfs, &copied).expect("baseline");
        let upper = t.path().join("upper");
        std::fs::create_dir(&upper).expect("mkdir");
        diff(&rootfs, &base, &upper).expect("diff");
        assert_eq!(std::fs::read_dir(&upper).expect("read").count(), 0);
    }
}
