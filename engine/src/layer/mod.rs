//! Layers: deterministic tarballs in, safe extraction out.
//!
//! A layer is a tar stream of file-system changes, usually compressed. bake
//! writes layers for the images it builds and reads the layers of the images
//! it pulls. The two directions have different enemies: writing must be
//! *reproducible* (the same files give the same digest on every machine, in
//! every run), reading must be *safe* (a pulled layer is untrusted input that
//! is extracted as root).
//!
//! # Writing
//!
//! [`LayerWriter`] takes [`Entry`]s, already in layer order, and streams
//! them as tar into a compressor and on into any `Write`. Nothing about the
//! machine or the moment enters the bytes:
//!
//! - **Order.** Entries must come sorted by path, where `/` sorts before
//!   every other byte (equivalently: paths are compared component by
//!   component). So a directory's entries follow it directly, before a
//!   sibling such as `a-b` that plain byte order would put between `a` and
//!   `a/c`. This is the depth-first order of Go's `filepath.Walk`, the one
//!   containerd's and BuildKit's diffs produce, and [`cmp_paths`] implements
//!   it. Whiteouts sort by the name they are written under (`.wh.NAME`). The
//!   writer refuses out-of-order, duplicate and malformed paths rather than
//!   sorting them itself, so that it can stream: [`sort_entries`] helps
//!   callers that hold their entries in memory.
//! - **Headers.** USTAR headers, with a PAX extended header only when a path
//!   or link target does not fit, a number overflows, or the entry has
//!   xattrs (`SCHILY.xattr.NAME`, as Go's archive/tar and GNU tar write them;
//!   records sorted by key, header named `DIR/PaxHeaders.0/NAME` as Go names
//!   it). Every mtime is the [`LayerOptions::epoch`] (`SOURCE_DATE_EPOCH`,
//!   default 0); there is no atime or ctime, and owners are numeric with empty
//!   user and group names. Symlinks are written as links, never followed, and
//!   hardlinks as tar hardlinks to an earlier entry.
//! - **Compression.** gzip is compressed in parallel, pigz-style, with gzp:
//!   the stream is cut into fixed 128 KiB blocks that are deflated
//!   independently and concatenated into a single gzip member with no mtime
//!   and no file name. The blocks are cut by position, not by thread, so the
//!   output is the same for any thread count (about twice the speed of
//!   single-threaded zlib-rs on two cores, for a 1% larger blob). zstd is
//!   always run in multi-threaded mode (`nbWorkers >= 1`), whose output does
//!   not depend on the number of workers, unlike single-threaded mode.
//!   Neither compressor is ever flushed mid-stream, as a flush changes the
//!   bytes.
//! - **One pass.** The tar stream is hashed (the `diff_id`) on its way into
//!   the compressor and the compressed stream (the blob `digest`) on its way
//!   out, so [`LayerWriter::finish`] returns both without reading anything
//!   twice.
//!
//! # Reading
//!
//! [`entries`] decompresses a blob (gzip with any number of members, zstd with
//! any number of frames), hashes the tar stream into its `diff_id` and parses it with
//! a small strict reader of bake's own that reads tar as Go's archive/tar does
//! (the `tar` crate's reader cannot read binary xattr values that contain a
//! newline, such as some file capabilities: see `archive.rs`). It yields
//! normalised [`Entry`]s: `./` prefixes dropped, OCI whiteouts
//! (`.wh.NAME`, `.wh..wh..opq`) turned into [`EntryKind::Whiteout`] and
//! [`EntryKind::Opaque`], aufs metadata (`.wh..wh.*`) and the root entry
//! skipped. A path that is absolute or contains `..` is an error, whatever
//! the caller means to do with it.
//!
//! What a layer may produce is bounded while it streams ([`Limits`]): bytes
//! of the decompressed tar stream (so a gzip or zstd bomb stops at the
//! limit, and a header whose declared size would pass it fails before its
//! content is read), the number of members, path length, and the size of
//! extension headers. The caller names the layer and the limit in the error.
//!
//! # Extraction
//!
//! [`unpack`] writes a layer into a fresh folder that becomes an overlayfs
//! lower layer, so whiteouts take overlayfs's own form: a character device
//! 0:0 for `.wh.NAME`, the xattr `trusted.overlay.opaque=y` for an opaque
//! directory. Both need root.
//!
//! The threat is the tar itself. Every file-system call is relative to a
//! directory file descriptor, and every directory on an entry's way is opened
//! with `O_NOFOLLOW`, starting from the destination. When a component is a
//! symlink, extraction follows it *itself*, lexically inside the destination:
//! a relative target is resolved against the link's own folder, and a target
//! that is absolute or climbs above the root is refused, as are entry paths
//! and hardlink targets that are absolute or contain `..`. The kernel never
//! follows a link the layer made, so nothing can be written outside the
//! destination, however entries are combined. (Symlink *targets* are stored
//! as written: they are resolved inside the container at run time.) An entry
//! that lands on an existing name replaces it; a file never opens an existing
//! one.
//!
//! Modes, numeric owners, mtimes and xattrs are applied (owner first, as a
//! chown clears setuid bits and file capabilities). Directories get their
//! modes and mtimes last, when nothing more is written into them. Not being
//! able to apply something the *layer* cannot need is counted in
//! [`UnpackStats`], not fatal: device nodes when not root, owners when not
//! root, xattrs the file system or namespace refuses. `trusted.overlay.*` and
//! `user.overlay.*` xattrs in a layer are dropped (and counted): only bake's
//! own whiteouts may steer overlayfs.
//!
//! After an error the destination is in an unspecified state; the caller
//! removes it. The `diff_id` is checked at the end, as only then is it known.

mod archive;
mod compress;
mod read;
mod unpack;
mod write;

impl LayerError {
    /// Whose the error is. Writing: a path the user's files cannot be
    /// stored under is theirs, entries out of order are bake's. Reading: a
    /// layer is bytes from a registry or the store, the environment's.
    pub fn tier(&self) -> crate::Tier {
        match self {
            Self::Options { .. } | Self::InvalidEntry { .. } => crate::Tier::Input,
            Self::OutOfOrder { .. } | Self::Duplicate { .. } | Self::Broken => crate::Tier::Bug,
            Self::ContentSize { .. }
            | Self::Content { .. }
            | Self::Write { .. }
            | Self::DiskFull { .. }
            | Self::Read { .. }
            | Self::Malformed { .. }
            | Self::Unsafe { .. }
            | Self::TooLarge { .. }
            | Self::TooManyEntries { .. }
            | Self::DiffId { .. }
            | Self::NeedsRoot { .. }
            | Self::Extract { .. }
            | Self::Dest { .. } => crate::Tier::Environment,
        }
    }
}

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::PathBuf;

use miette::Diagnostic;

use crate::oci::{Compression, Digest};

pub use read::entries;
pub(crate) use read::entries_within;
pub use unpack::{UnpackOptions, UnpackStats, unpack};
pub use write::{LayerWriter, compress_tar};

/// The prefix of a whiteout's name: `.wh.NAME` deletes `NAME`.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The name that makes its directory opaque.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The prefix of aufs metadata entries, which are skipped.
pub const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
/// The xattr that marks an overlayfs directory opaque (in the initial user
/// namespace; [`crate::sandbox::opaque_xattr`] names the one in use).
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// The longest path or link target an entry may have: Linux's `PATH_MAX`.
pub const MAX_PATH: usize = 4096;

/// Bounds on what reading one layer may produce, checked while streaming.
///
/// A layer is untrusted input that is decompressed and extracted on the
/// host, so its size is bounded by what is read, never by what the blob or
/// its headers claim: a small gzip or zstd blob can expand a thousandfold,
/// and a tar header can declare any size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the uncompressed tar stream. A member whose declared size
    /// would pass it fails before its content is read.
    pub max_bytes: u64,
    /// Tar members (extension headers apart).
    pub max_entries: u64,
}

impl Limits {
    /// 16 GiB: the largest layers of real images (CUDA, toolchains, ML
    /// frameworks) unpack to a few GiB; four times the biggest seen leaves
    /// room, while a bomb still stops long before a disk fills.
    pub const MAX_LAYER_BYTES: u64 = 16 << 30;
    /// 2 Mi entries: a full TeX Live or a large `node_modules` layer holds a
    /// few hundred thousand. Extraction keeps one small record per folder
    /// until the layer ends, so this also bounds its memory.
    pub const MAX_ENTRIES: u64 = 2 << 20;
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_bytes: Self::MAX_LAYER_BYTES, max_entries: Self::MAX_ENTRIES }
    }
}

/// How to write a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerOptions {
    pub compression: Compression,
    /// Compression level; `None` is the codec's default ([`Self::GZIP_LEVEL`],
    /// [`Self::ZSTD_LEVEL`]).
    pub level: Option<i32>,
    /// `SOURCE_DATE_EPOCH`: every mtime in the layer is set to it. Between 0
    /// and 8¹¹ - 1 seconds (the year 2242), the range of a tar header.
    pub epoch: i64,
}

impl LayerOptions {
    pub const GZIP_LEVEL: i32 = 6;
    pub const ZSTD_LEVEL: i32 = 3;

    /// The level the codec uses, or why it cannot be used.
    pub fn effective_level(&self) -> Result<Option<i32>, String> {
        match self.compression {
            Compression::None => Ok(None),
            Compression::Gzip => match self.level.unwrap_or(Self::GZIP_LEVEL) {
                level @ 0..=9 => Ok(Some(level)),
                level => Err(format!("gzip level {level} is not between 0 and 9")),
            },
            Compression::Zstd => {
                let level = self.level.unwrap_or(Self::ZSTD_LEVEL);
                let range = zstd::compression_level_range();
                if range.contains(&level) {
                    Ok(Some(level))
                } else {
                    Err(format!("zstd level {level} is not between {} and {}", range.start(), range.end()))
                }
            }
        }
    }
}

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the layer root, `/`-separated: no leading or trailing `/`,
    /// no empty, `.` or `..` components, no component starting with `.wh.`.
    /// For [`EntryKind::Whiteout`], the deleted path; for
    /// [`EntryKind::Opaque`], the directory (empty for the root).
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits, setuid, setgid and sticky included (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Extended attributes, such as `security.capability`.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File {
        size: u64,
    },
    Dir,
    /// A symbolic link, stored as written and never followed.
    Symlink {
        target: String,
    },
    /// A hard link to `target`, the path of an earlier file in the layer.
    Hardlink {
        target: String,
    },
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    /// Deletes `path` from the layers below; written as `.wh.NAME`.
    Whiteout,
    /// Hides what the layers below have in the directory `path`; written as
    /// `path/.wh..wh..opq`.
    Opaque,
}

impl Entry {
    /// An entry owned by root, with the usual mode for its kind (0644 files,
    /// 0755 folders, 0777 symlinks) and no xattrs.
    pub fn new(path: impl Into<String>, kind: EntryKind) -> Self {
        let mode = match kind {
            EntryKind::Dir => 0o755,
            EntryKind::Symlink { .. } => 0o777,
            _ => 0o644,
        };
        Self { path: path.into(), kind, mode, uid: 0, gid: 0, xattrs: BTreeMap::new() }
    }

    /// The path the entry is written under in the tar (without a directory's
    /// trailing `/`): `.wh.`-prefixed for a whiteout, `DIR/.wh..wh..opq` for
    /// an opaque directory. Layers are sorted by it.
    pub fn tar_path(&self) -> Cow<'_, str> {
        match self.kind {
            EntryKind::Whiteout => {
                let (parent, name) = split_last(&self.path);
                Cow::Owned(join(parent, &format!("{WHITEOUT_PREFIX}{name}")))
            }
            EntryKind::Opaque => Cow::Owned(join(&self.path, OPAQUE_MARKER)),
            _ => Cow::Borrowed(&self.path),
        }
    }
}

/// Compares layer paths in layer order: byte-wise, with `/` before every
/// other byte, so that a directory's entries come right after it.
pub fn cmp_paths(a: &str, b: &str) -> Ordering {
    let key = |b: u8| if b == b'/' { 0 } else { b };
    a.bytes().map(key).cmp(b.bytes().map(key))
}

/// Sorts entries into layer order (by [`Entry::tar_path`], with
/// [`cmp_paths`]).
pub fn sort_entries(entries: &mut [Entry]) {
    sort_entries_by(entries, |e| e);
}

/// Sorts items that carry an entry (say, with where to read its content)
/// into layer order.
pub fn sort_entries_by<T>(items: &mut [T], entry: impl Fn(&T) -> &Entry) {
    items.sort_by(|a, b| cmp_paths(&entry(a).tar_path(), &entry(b).tar_path()));
}

/// What the writer wrote, and the digests to reference it by.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerInfo {
    /// sha256 of the compressed blob.
    pub digest: Digest,
    /// sha256 of the uncompressed tar: the image config's `diff_ids` entry.
    pub diff_id: Digest,
    /// Bytes of the compressed blob.
    pub size: u64,
    /// Bytes of the uncompressed tar.
    pub uncompressed_size: u64,
    pub media_type: String,
}

/// Errors writing, reading and extracting layers.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum LayerError {
    #[error("invalid layer options: {reason}")]
    #[diagnostic(code(bake::layer::options))]
    Options { reason: String },

    #[error("layer entry `{path}`: {reason}")]
    #[diagnostic(code(bake::layer::invalid_entry))]
    InvalidEntry { path: String, reason: String },

    #[error("layer entry `{path}` comes after `{previous}`, out of layer order")]
    #[diagnostic(
        code(bake::layer::order),
        help("entries are appended sorted by path, `/` sorting first (see `layer::sort_entries`)")
    )]
    OutOfOrder { previous: String, path: String },

    #[error("layer entry `{path}` is appended twice")]
    #[diagnostic(code(bake::layer::duplicate))]
    Duplicate { path: String },

    #[error("layer entry `{path}` declares {expected} bytes, but its content is {found}")]
    #[diagnostic(code(bake::layer::content_size), help("the file changed while it was being packed?"))]
    ContentSize { path: String, expected: u64, found: String },

    #[error("cannot read the content of layer entry `{path}`")]
    #[diagnostic(code(bake::layer::content))]
    Content {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write the layer")]
    #[diagnostic(code(bake::layer::write))]
    Write {
        #[source]
        source: std::io::Error,
    },

    #[error("the disk holding {} is full", path.display())]
    #[diagnostic(code(bake::layer::disk_full), help("{}", crate::home::DISK_FULL_HELP))]
    DiskFull {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the layer writer failed earlier; its output is incomplete")]
    #[diagnostic(code(bake::layer::broken))]
    Broken,

    #[error("cannot read layer {layer}")]
    #[diagnostic(
        code(bake::layer::read),
        help("the blob is truncated, corrupt, or not compressed as its media type says")
    )]
    Read {
        layer: String,
        #[source]
        source: std::io::Error,
    },

    #[error("layer {layer}: entry `{entry}` {reason}")]
    #[diagnostic(code(bake::layer::malformed))]
    Malformed { layer: String, entry: String, reason: String },

    #[error("layer {layer}: entry `{entry}` {reason}; refusing to extract it")]
    #[diagnostic(
        code(bake::layer::unsafe_path),
        help("a layer may only write inside its own root: no `..`, no absolute paths, no symlinks that lead out")
    )]
    Unsafe { layer: String, entry: String, reason: String },

    #[error("layer {layer} unpacks to more than {}, the limit for one layer", crate::config::format_size(*limit))]
    #[diagnostic(
        code(bake::layer::too_large),
        help(
            "a small blob that expands this much is a decompression bomb; for a genuine layer, raise the limit \
             with BAKE_MAX_LAYER_SIZE (say BAKE_MAX_LAYER_SIZE=64GiB) or `store max-layer-size=\"64GiB\"` in \
             bake's config file"
        )
    )]
    TooLarge { layer: String, limit: u64 },

    #[error("layer {layer} has more than {limit} entries")]
    #[diagnostic(
        code(bake::layer::too_many_entries),
        help("no real image has layers this large; the layer is corrupt or hostile")
    )]
    TooManyEntries { layer: String, limit: u64 },

    #[error("layer {layer} has diff_id {actual}, but the image says {expected}")]
    #[diagnostic(
        code(bake::layer::diff_id),
        help("the blob does not match the image's config: it is corrupt or was tampered with")
    )]
    DiffId { layer: String, expected: Digest, actual: Digest },

    #[error("layer {layer}: cannot create the overlay whiteout for `{entry}`")]
    #[diagnostic(
        code(bake::layer::needs_root),
        help(
            "whiteouts become overlayfs character devices 0:0 and `trusted.overlay.opaque` xattrs (in a user \
             namespace, `user.overlay.opaque`), which need root (CAP_MKNOD and CAP_SYS_ADMIN, or a user \
             namespace) and a file system with trusted (or user) xattrs"
        )
    )]
    NeedsRoot {
        layer: String,
        entry: String,
        #[source]
        source: std::io::Error,
    },

    #[error("layer {layer}: cannot extract `{entry}` into {}", dest.display())]
    #[diagnostic(code(bake::layer::extract))]
    Extract {
        layer: String,
        entry: String,
        dest: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot open {} to extract layer {layer} into it", dest.display())]
    #[diagnostic(code(bake::layer::dest))]
    Dest {
        layer: String,
        dest: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LayerError {
    /// A failed write of the layer's output.
    fn write(source: std::io::Error) -> Self {
        match crate::home::disk_full_path(&source, None) {
            Some(path) => Self::DiskFull { path, source: crate::home::no_space(source) },
            None => Self::Write { source },
        }
    }
}

/// Checks a path as the writer requires it (see [`Entry::path`]).
fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("has an empty path");
    }
    if path.starts_with('/') {
        return Err("has an absolute path (layer paths are relative to the root)");
    }
    if path.ends_with('/') {
        return Err("ends with `/`");
    }
    if path.contains('\0') {
        return Err("contains a NUL byte");
    }
    for component in path.split('/') {
        match component {
            "" => return Err("has an empty path component (`//`)"),
            "." | ".." => return Err("has a `.` or `..` component"),
            c if c.starts_with(WHITEOUT_PREFIX) => return Err("uses the whiteout prefix `.wh.` in a name"),
            _ => {}
        }
    }
    Ok(())
}

/// `("a/b", "c")` for `a/b/c`, `("", "c")` for `c`.
fn split_last(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// `dir/name`, or `name` at the root.
fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() { name.to_owned() } else { format!("{dir}/{name}") }
}
