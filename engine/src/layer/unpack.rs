//! Extracting a layer into a folder, every call relative to a directory file
//! descriptor and no link followed by the kernel: see the
//! [module docs](super#extraction).

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstatat, futimens, makedev, mkdirat, mknodat,
    utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use xattr::FileExt;

use super::read::{Item, read_layer};
use super::{Entry, EntryKind, LayerError, Limits, split_last};
use crate::oci::{Compression, Digest};

/// Symlinks followed while resolving one path, as the kernel's limit.
const MAX_LINKS: usize = 40;

/// What [`unpack`] extracts.
#[derive(Debug, Clone, Copy)]
pub struct UnpackOptions<'a> {
    /// The layer's name or digest, for messages.
    pub name: &'a str,
    pub compression: Compression,
    /// The `diff_id` the image's config lists for this layer.
    pub expected_diff_id: Option<&'a Digest>,
    /// How large the layer may be.
    pub limits: Limits,
}

/// What [`unpack`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// sha256 of the uncompressed tar, computed while extracting.
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    /// Entries applied, whiteouts included.
    pub entries: u64,
    pub files: u64,
    pub file_bytes: u64,
    /// Whiteouts and opaque directories.
    pub whiteouts: u64,
    /// Device nodes not created: not root, or no CAP_MKNOD.
    pub devices_skipped: u64,
    /// Entries whose owner could not be set: not root, or an id outside the
    /// user namespace.
    pub owners_skipped: u64,
    /// Xattrs not set: refused by the file system or namespace, or overlayfs
    /// xattrs (which only bake's own whiteouts may set).
    pub xattrs_skipped: u64,
}

/// Extracts a layer blob into `dest`, a fresh folder, and returns the tar
/// stream's `diff_id`, which must be `options.expected_diff_id` if given.
///
/// Whiteouts become overlayfs whiteouts (see the [module docs](super)), so
/// `dest` can serve as an overlayfs lower layer. On error `dest` is left in
/// an unspecified state: remove it.
pub fn unpack(blob: impl Read, dest: &Path, options: &UnpackOptions<'_>) -> Result<UnpackStats, LayerError> {
    let layer = options.name;
    let root = nix::fcntl::open(dest, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| LayerError::Dest { layer: layer.to_owned(), dest: dest.to_path_buf(), source: e.into() })?;
    let mut unpacker = Unpacker::new(root);
    let (diff_id, uncompressed_size) =
        read_layer(layer, blob, options.compression, &options.limits, |item, content| {
            unpacker.apply(&item, content).map_err(|f| f.into_error(layer, &item.raw_path, dest))
        })?;
    unpacker.finish_dirs().map_err(|(path, f)| f.into_error(layer, &path, dest))?;
    if let Some(expected) = options.expected_diff_id
        && *expected != diff_id
    {
        return Err(LayerError::DiffId { layer: layer.to_owned(), expected: expected.clone(), actual: diff_id });
    }
    let c = unpacker.counts;
    Ok(UnpackStats {
        diff_id,
        uncompressed_size,
        entries: c.entries,
        files: c.files,
        file_bytes: c.file_bytes,
        whiteouts: c.whiteouts,
        devices_skipped: c.devices_skipped,
        owners_skipped: c.owners_skipped,
        xattrs_skipped: c.xattrs_skipped,
    })
}

/// Why an entry could not be applied, before the layer and entry are named.
enum Failure {
    Unsafe(String),
    Malformed(String),
    NeedsRoot(io::Error),
    /// Reading the blob failed (truncated or corrupt).
    Read(io::Error),
    Io(io::Error),
}

impl From<Errno> for Failure {
    fn from(e: Errno) -> Self {
        Self::Io(e.into())
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl Failure {
    fn into_error(self, layer: &str, entry: &str, dest: &Path) -> LayerError {
        let (layer, entry) = (layer.to_owned(), entry.to_owned());
        match self {
            Self::Unsafe(reason) => LayerError::Unsafe { layer, entry, reason },
            Self::Malformed(reason) => LayerError::Malformed { layer, entry, reason },
            Self::NeedsRoot(source) => LayerError::NeedsRoot { layer, entry, source },
            Self::Read(source) => LayerError::Read { layer, source },
            Self::Io(source) => match crate::home::disk_full_path(&source, Some(dest)) {
                Some(path) => LayerError::DiskFull { path, source: crate::home::no_space(source) },
                None => LayerError::Extract { layer, entry, dest: dest.to_path_buf(), source },
            },
        }
    }
}

#[derive(Default)]
struct Counts {
    entries: u64,
    files: u64,
    file_bytes: u64,
    whiteouts: u64,
    devices_skipped: u64,
    owners_skipped: u64,
    xattrs_skipped: u64,
}

/// A directory whose mode and mtime are set at the end.
struct DirMeta {
    path: String,
    mode: u32,
    mtime: i64,
}

/// Where to set xattrs: an open file, or a name that must not be opened
/// (symlinks, devices), reached through its parent's descriptor.
enum Target<'a> {
    File(&'a File),
    Name(BorrowedFd<'a>, &'a str),
}

struct Unpacker {
    root: OwnedFd,
    is_root: bool,
    euid: u32,
    egid: u32,
    /// The last parent directory resolved: consecutive entries mostly share
    /// one. Dropped whenever extraction removes anything.
    parent: Option<(String, Rc<OwnedFd>)>,
    dirs: Vec<DirMeta>,
    counts: Counts,
    buf: Vec<u8>,
}

impl Unpacker {
    fn new(root: OwnedFd) -> Self {
        let euid = nix::unistd::geteuid();
        Self {
            root,
            is_root: euid.is_root(),
            euid: euid.as_raw(),
            egid: nix::unistd::getegid().as_raw(),
            parent: None,
            dirs: Vec::new(),
            counts: Counts::default(),
            buf: Vec::new(),
        }
    }

    fn apply(&mut self, item: &Item, content: &mut dyn Read) -> Result<(), Failure> {
        let entry = &item.entry;
        self.counts.entries += 1;
        if entry.kind == EntryKind::Opaque {
            let dir = File::from(self.resolve_dir(&entry.path, true)?);
            dir.set_xattr(crate::sandbox::opaque_xattr(), b"y").map_err(Failure::NeedsRoot)?;
            self.counts.whiteouts += 1;
            return Ok(());
        }

        let (parent_path, name) = split_last(&entry.path);
        let parent = self.parent(parent_path)?;
        let parent = parent.as_fd();
        let mtime = TimeSpec::new(item.mtime, 0);
        let mode = Mode::from_bits_truncate(entry.mode);
        match &entry.kind {
            EntryKind::File { size } => {
                self.clear(parent, name, false)?;
                let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let mut file = File::from(openat(parent, name, flags, Mode::from_bits_truncate(0o600))?);
                let written = self.copy(content, &mut file)?;
                if written != *size {
                    let message = format!("the content ends after {written} of {size} bytes");
                    return Err(Failure::Read(io::Error::new(io::ErrorKind::UnexpectedEof, message)));
                }
                self.counts.files += 1;
                self.counts.file_bytes += written;
                // Owner first: a chown clears setuid bits and capabilities.
                self.chown(entry, |uid, gid| fchown(&file, uid, gid))?;
                fchmod(&file, mode)?;
                self.xattrs(&Target::File(&file), &entry.xattrs)?;
                futimens(&file, &mtime, &mtime)?;
            }
            EntryKind::Dir => {
                if !self.clear(parent, name, true)? {
                    mkdirat(parent, name, Mode::from_bits_truncate(0o700))?;
                }
                let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let dir = File::from(openat(parent, name, flags, Mode::empty())?);
                self.chown(entry, |uid, gid| fchown(&dir, uid, gid))?;
                self.xattrs(&Target::File(&dir), &entry.xattrs)?;
                // Mode and mtime once nothing more is written into it.
                self.dirs.push(DirMeta { path: entry.path.clone(), mode: entry.mode, mtime: item.mtime });
            }
            EntryKind::Symlink { target } => {
                self.clear(parent, name, false)?;
                symlinkat(target.as_str(), parent, name)?;
                self.chown(entry, |uid, gid| fchownat(parent, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW))?;
                self.xattrs(&Target::Name(parent, name), &entry.xattrs)?;
                utimensat(parent, name, &mtime, &mtime, UtimensatFlags::NoFollowSymlink)?;
            }
            EntryKind::Hardlink { target } => {
                let missing = || Failure::Malformed(format!("is a hardlink to `{target}`, which is not in the layer"));
                let (target_parent, target_name) = split_last(target);
                let target_dir = match self.resolve_dir(target_parent, false) {
                    Err(Failure::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
                    other => other?,
                };
                self.clear(parent, name, false)?;
                // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink.
                match linkat(&target_dir, target_name, parent, name, AtFlags::empty()) {
                    Err(Errno::ENOENT) => return Err(missing()),
                    Err(Errno::EPERM) => {
                        return Err(Failure::Malformed(format!("is a hardlink to `{target}`, a directory")));
                    }
                    other => other?,
                }
            }
            EntryKind::CharDevice { .. } | EntryKind::BlockDevice { .. } | EntryKind::Fifo => {
                let (kind, dev) = match entry.kind {
                    EntryKind::CharDevice { major, minor } => {
                        (SFlag::S_IFCHR, makedev(u64::from(major), u64::from(minor)))
                    }
                    EntryKind::BlockDevice { major, minor } => {
                        (SFlag::S_IFBLK, makedev(u64::from(major), u64::from(minor)))
                    }
                    _ => (SFlag::S_IFIFO, 0),
                };
                let device = kind != SFlag::S_IFIFO;
                if device && !self.is_root {
                    self.counts.devices_skipped += 1;
                    return Ok(());
                }
                self.clear(parent, name, false)?;
                match mknodat(parent, name, kind, Mode::from_bits_truncate(0o600), dev) {
                    Err(Errno::EPERM) if device => {
                        self.counts.devices_skipped += 1;
                        return Ok(());
                    }
                    other => other?,
                }
                self.chown(entry, |uid, gid| fchownat(parent, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW))?;
                // The node was just made here, so it is not a symlink: following
                // is safe, and avoids glibc's /proc-based AT_SYMLINK_NOFOLLOW.
                fchmodat(parent, name, mode, FchmodatFlags::FollowSymlink)?;
                self.xattrs(&Target::Name(parent, name), &entry.xattrs)?;
                utimensat(parent, name, &mtime, &mtime, UtimensatFlags::NoFollowSymlink)?;
            }
            EntryKind::Whiteout => {
                self.clear(parent, name, false)?;
                mknodat(parent, name, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                    .map_err(|e| Failure::NeedsRoot(e.into()))?;
                self.counts.whiteouts += 1;
            }
            EntryKind::Opaque => unreachable!("opaque directories are handled above"),
        }
        Ok(())
    }

    /// Sets the mode and mtime of the layer's directories, deepest first.
    fn finish_dirs(&mut self) -> Result<(), (String, Failure)> {
        let dirs = std::mem::take(&mut self.dirs);
        for dir in dirs.iter().rev() {
            let fail = |f: Failure| (dir.path.clone(), f);
            let (parent_path, name) = split_last(&dir.path);
            let parent = self.resolve_dir(parent_path, false).map_err(fail)?;
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let fd = match openat(&parent, name, flags, Mode::empty()) {
                Ok(fd) => fd,
                // Replaced by a later entry of the layer: not a directory any more.
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => continue,
                Err(e) => return Err(fail(e.into())),
            };
            fchmod(&fd, Mode::from_bits_truncate(dir.mode)).map_err(|e| fail(e.into()))?;
            let mtime = TimeSpec::new(dir.mtime, 0);
            futimens(&fd, &mtime, &mtime).map_err(|e| fail(e.into()))?;
        }
        Ok(())
    }

    fn copy(&mut self, content: &mut dyn Read, file: &mut File) -> Result<u64, Failure> {
        if self.buf.is_empty() {
            self.buf = vec![0; 256 * 1024];
        }
        let mut total = 0u64;
        loop {
            let n = match content.read(&mut self.buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Read(e)),
            };
            file.write_all(&self.buf[..n])?;
            total += n as u64;
        }
    }

    /// Makes room for a new `name` in `parent`: removes what is there, but
    /// keeps a directory if `keep_dir` (and then returns true).
    fn clear(&mut self, parent: BorrowedFd<'_>, name: &str, keep_dir: bool) -> Result<bool, Failure> {
        let stat = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let is_dir = stat.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits();
        if is_dir && keep_dir {
            return Ok(true);
        }
        // The cached parent may be what is removed, or below it.
        self.parent = None;
        if is_dir {
            match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
                Err(Errno::ENOTEMPTY | Errno::EEXIST) => {
                    return Err(Failure::Malformed("replaces a directory that is not empty".to_owned()));
                }
                other => other?,
            }
        } else {
            unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)?;
        }
        Ok(false)
    }

    fn chown(
        &mut self,
        entry: &Entry,
        chown: impl FnOnce(Option<Uid>, Option<Gid>) -> nix::Result<()>,
    ) -> Result<(), Failure> {
        if !self.is_root {
            if (entry.uid, entry.gid) != (self.euid, self.egid) {
                self.counts.owners_skipped += 1;
            }
            return Ok(());
        }
        match chown(Some(Uid::from_raw(entry.uid)), Some(Gid::from_raw(entry.gid))) {
            Ok(()) => Ok(()),
            // An id with no mapping in this user namespace.
            Err(Errno::EPERM | Errno::EINVAL) => {
                self.counts.owners_skipped += 1;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn xattrs(&mut self, target: &Target<'_>, xattrs: &BTreeMap<String, Vec<u8>>) -> Result<(), Failure> {
        for (name, value) in xattrs {
            if name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.") {
                self.counts.xattrs_skipped += 1;
                continue;
            }
            let result = match target {
                Target::File(file) => file.set_xattr(name, value),
                // lsetxattr through the parent's descriptor: /proc/self/fd/N is
                // the parent itself, and the last component is not followed.
                Target::Name(parent, child) => {
                    xattr::set(format!("/proc/self/fd/{}/{child}", parent.as_raw_fd()), name, value)
                }
            };
            match result {
                Ok(()) => {}
                Err(e) if skippable(&e, matches!(target, Target::Name(..))) => self.counts.xattrs_skipped += 1,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The parent directory `path`, created as needed; cached for the next
    /// entry.
    fn parent(&mut self, path: &str) -> Result<Rc<OwnedFd>, Failure> {
        if let Some((cached, fd)) = &self.parent
            && cached == path
        {
            return Ok(Rc::clone(fd));
        }
        let fd = Rc::new(self.resolve_dir(path, true)?);
        self.parent = Some((path.to_owned(), Rc::clone(&fd)));
        Ok(fd)
    }

    /// Opens the directory `path` below the root, creating missing ones (mode
    /// 0755) if `create`. Each component is opened with `O_NOFOLLOW`; a
    /// symlink is followed here, lexically inside the root, and refused if its
    /// target is absolute or climbs above the root.
    fn resolve_dir(&self, path: &str, create: bool) -> Result<OwnedFd, Failure> {
        let mut pending: VecDeque<String> = path.split('/').filter(|c| !c.is_empty()).map(str::to_owned).collect();
        // The directories walked so far, by name, below the root.
        let mut stack: Vec<(String, OwnedFd)> = Vec::new();
        let mut links = 0;
        // The last symlink followed, which any `..` comes from.
        let mut via: Option<(String, String)> = None;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let walked = |stack: &[(String, OwnedFd)], name: &str| {
            let mut path: Vec<&str> = stack.iter().map(|(n, _)| n.as_str()).collect();
            path.push(name);
            path.join("/")
        };
        while let Some(component) = pending.pop_front() {
            match component.as_str() {
                "" | "." => continue,
                ".." => {
                    if stack.pop().is_none() {
                        let (link, target) = via.clone().unwrap_or_default();
                        return Err(Failure::Unsafe(format!(
                            "goes through `{link}`, a symlink to `{target}`, which leads out of the layer"
                        )));
                    }
                    continue;
                }
                _ => {}
            }
            let current = stack.last().map_or(self.root.as_fd(), |(_, fd)| fd.as_fd());
            match openat(current, component.as_str(), flags, Mode::empty()) {
                Ok(fd) => stack.push((component, fd)),
                Err(Errno::ENOENT) if create => {
                    let created = match mkdirat(current, component.as_str(), Mode::from_bits_truncate(0o755)) {
                        Ok(()) => true,
                        Err(Errno::EEXIST) => false,
                        Err(e) => return Err(e.into()),
                    };
                    let fd = openat(current, component.as_str(), flags, Mode::empty())?;
                    if created {
                        // Whatever the umask: the mode Docker gives implied folders.
                        fchmod(&fd, Mode::from_bits_truncate(0o755))?;
                    }
                    stack.push((component, fd));
                }
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let stat = fstatat(current, component.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
                    let link = walked(&stack, &component);
                    if stat.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFLNK.bits() {
                        return Err(Failure::Malformed(format!("is below `{link}`, which is not a directory")));
                    }
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(Failure::Malformed("has too many levels of symlinks in its path".to_owned()));
                    }
                    let target = readlinkat(current, component.as_str())?;
                    let Some(target) = target.to_str() else {
                        return Err(Failure::Malformed(format!("is below `{link}`, a symlink to a non-UTF-8 name")));
                    };
                    if target.starts_with('/') {
                        return Err(Failure::Unsafe(format!(
                            "goes through `{link}`, a symlink to the absolute path `{target}`"
                        )));
                    }
                    for part in target.split('/').rev() {
                        pending.push_front(part.to_owned());
                    }
                    via = Some((link, target.to_owned()));
                }
                Err(e) => return Err(e.into()),
            }
        }
        match stack.pop() {
            Some((_, fd)) => Ok(fd),
            None => Ok(self.root.try_clone()?),
        }
    }
}

/// Xattr errors that mean "not here", not "broken": the namespace or file
/// system refuses it, or (through /proc) there is no /proc.
fn skippable(e: &io::Error, through_proc: bool) -> bool {
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EOPNOTSUPP | Errno::EPERM | Errno::EACCES | Errno::EINVAL | Errno::ERANGE | Errno::E2BIG) => true,
        Some(Errno::ENOENT) => through_proc,
        _ => false,
    }
}
