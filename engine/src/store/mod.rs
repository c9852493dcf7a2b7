//! The local content-addressed store: blobs by sha256, images by name, build
//! results by cache key, and the garbage collector that keeps it bounded.
//!
//! # Layout
//!
//! ```text
//! $BAKE_HOME/store/
//!   content-v2/sha256/ab/cd/ef01…   blobs, in cacache's content layout
//!   images-v1/<sha256 of name>.json  one file per image name: {"name", "image"}
//!   cache-v1/<key>.json              one file per cache entry; its mtime is its last use
//!   tmp/                             blobs and records being written
//!   lock                             the collector's lock (see below)
//! ```
//!
//! Blobs live where cacache keeps content, so an OCI digest *is* a cacache
//! integrity (`Integrity::from_hex(hex, Sha256)`) and cacache's hash-based
//! reads work on the store: [`Store::read_blob`] and [`Store::verify_blob`]
//! go through them. Everything else is bake's own, for the reasons below.
//!
//! # Writing a blob
//!
//! A [`BlobWriter`] streams into a temporary file in `tmp/`, hashing as it
//! goes (one sha256 pass; nothing is held in memory). `commit` compares the
//! digest with the expected one *before* anything becomes visible, then
//! renames the file into place. A mismatch, an error or a dropped writer
//! leaves nothing behind but a temporary file that is deleted at once (or,
//! after SIGKILL, by the next prune).
//!
//! cacache's own `SyncWriter` is not used for this: its `commit` renames the
//! content into place first and checks the expected integrity afterwards, so
//! a mismatched download would still be stored; it offers no hook to fsync
//! or lock its temporary file; and checking the digest ourselves on top of it
//! would hash every layer twice. Its content layout is kept, so both agree.
//!
//! Writing a blob that is already stored replaces the file with the fresh
//! copy: a write repairs a damaged blob. [`Store::put_blob`] skips the write
//! when an identical copy is there.
//!
//! # Records
//!
//! Image records and cache entries are small JSON files written to `tmp/`
//! and renamed into place, one file per name or key. They are not cacache
//! index entries: cacache appends to shared bucket files without a lock or
//! fsync, a bucket only grows (every update and every delete is another
//! line), and compacting a bucket safely would need a lock that every cacache
//! writer ignores. Recording each cache hit for LRU would append a line per
//! hit. With one file per record, an update is one atomic rename, a delete
//! is one unlink, a reader sees the old or the new record and never half of
//! one, nothing needs compacting, and a cache entry's last use is simply the
//! mtime of its file, set on every hit.
//!
//! # Two processes, one store
//!
//! Blobs and records are written by rename, so concurrent writers never see
//! each other's partial files, and two writers of the same blob or name
//! simply both succeed (the last rename wins; the contents are equal, or, for
//! a name, either record is a valid answer).
//!
//! The hard part is the collector deleting a blob that another process is
//! about to reference: a build checks that a layer is stored, skips pulling
//! it, and writes an image naming it a minute later. Two rules close that:
//!
//! - **Grace.** Committing a blob, or finding one with [`Store::has_blob`] /
//!   [`Store::blob_len`] or through a cache hit, sets its mtime to now. A
//!   prune keeps every blob younger than [`PruneOptions::grace`] *and
//!   everything reachable from it* (a young manifest keeps its config and
//!   layers). So a process has `grace` (10 minutes by default) from obtaining
//!   a blob to recording an image or cache entry that names it. One that
//!   overruns it gets an error, not a broken image: [`Store::set_image`]
//!   refuses a manifest whose config or layers are gone.
//! - **The lock.** `lock` is a `flock`ed file. Short operations that make a
//!   blob live (commit, the existence checks, writing a record, a cache hit)
//!   hold it shared for a few microseconds; [`Store::prune`] holds it
//!   exclusively from reading the roots to its last unlink. "Check, then
//!   touch" and "mark, then sweep" therefore never interleave. Streaming a
//!   blob does not hold the lock, so a prune never waits for a download.
//!
//! A [`BlobWriter`]'s temporary file is `flock`ed by the writer for as long
//! as it lives (it is created under the shared store lock, so a prune never
//! sees it unlocked). Records and [`Store::put_blob`]'s small blobs are
//! written whole under the shared store lock, so a prune never sees their
//! temporary files at all. A prune therefore deletes every temporary file it
//! can lock: its writer is gone. A process killed by SIGKILL drops its locks
//! with its file descriptors, so nothing stays locked.
//!
//! # SIGKILL and power loss
//!
//! Every visible file was complete when it was renamed into place, so a
//! killed process leaves a store that opens and reads cleanly; its leftovers
//! are unreferenced blobs (collected once older than `grace`) and unlocked
//! temporary files (collected by the next prune).
//!
//! cacache never fsyncs. The store does, where a crash of the machine could
//! otherwise publish a damaged blob:
//!
//! - A blob larger than [`SMALL_BLOB`] (1 MiB) is fsynced before the rename
//!   that publishes it: a visible layer is a complete layer. It costs little
//!   next to writing the data (0.17 s on top of ~1 s for 512 MB here).
//! - Smaller blobs (manifests, configs, tiny layers) are not: an fsync costs
//!   ~3 ms, which would dominate. They are cheap to check instead, so the
//!   store verifies them whenever it hands them out ([`Store::read_blob`],
//!   [`Store::open_blob`]) and before [`Store::set_image`] records an image
//!   that reaches them, which then fsyncs them. A small blob found damaged
//!   is removed, so the next pull or build writes it again.
//! - An image record is written with fsync, after the blobs it reaches and
//!   their folders, and its folder is fsynced after the rename.
//! - Cache entries are not fsynced: a torn entry reads as a miss.
//!
//! # Garbage collection
//!
//! [`Store::prune`] is mark and sweep under the exclusive lock:
//!
//! 1. List every blob (size, mtime), every image and every cache entry.
//!    Cache entries that are unreadable or name a missing blob are dropped.
//! 2. Roots are image manifests, blobs younger than `grace`, and the blobs
//!    each cache entry lists. A root that is a manifest keeps its config and
//!    layers; an index keeps its manifests, recursively. Manifests are read
//!    as `serde_json::Value` (OCI or Docker v2 alike): `config.digest`,
//!    `layers[].digest`, `manifests[].digest`.
//! 3. With `all_cache`, every cache entry goes. With `max_size`, entries are
//!    evicted least recently used first, with a reference count per blob, so
//!    evicting an entry frees exactly the blobs no other root keeps, until
//!    the blobs left fit in `max_size` (or no entry is left). Evicted entries
//!    whose blobs all stay anyway are then kept: dropping them would free
//!    nothing (so when images and young blobs alone exceed `max_size`, the
//!    entries they cover survive).
//! 4. Evicted entries are deleted first, then every unmarked blob (young
//!    ones are marked), then the temporary files no live writer holds. The
//!    fan-out folders stay, as cacache leaves them: there are at most 65,536,
//!    and on ext4 an rmdir costs a hundred unlinks.
//!
//! A prune killed half way has deleted a subset of the garbage; entries go
//! before their blobs, so it never leaves a live entry pointing at nothing.

mod blob;
mod gc;
impl StoreError {
    /// Whose the error is: the disk's, mostly; a name or key the user typed
    /// is theirs.
    pub fn tier(&self) -> crate::Tier {
        match self {
            Self::InvalidKey { .. } | Self::InvalidName => crate::Tier::Input,
            Self::Encode(_) => crate::Tier::Bug,
            Self::Io { .. }
            | Self::DiskFull { .. }
            | Self::MissingBlob { .. }
            | Self::CorruptBlob { .. }
            | Self::DigestMismatch { .. }
            | Self::UnsupportedDigest { .. }
            | Self::TooLarge { .. }
            | Self::CorruptRecord { .. } => crate::Tier::Environment,
        }
    }
}

#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use miette::Diagnostic;

pub use blob::BlobWriter;
pub use gc::{PruneOptions, PruneReport, Usage};

use crate::oci::Digest;

/// Blobs up to this size are not fsynced when written and are verified
/// whenever the store hands them out (see the module docs).
pub const SMALL_BLOB: u64 = 1 << 20;

/// [`Store::read_blob`] refuses blobs larger than this: it is meant for
/// manifests and configs, and a layer must be streamed with
/// [`Store::open_blob`].
pub const READ_BLOB_MAX: u64 = 64 << 20;

/// The grace period a prune uses unless told otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_mins(10);

/// Errors from the local store.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum StoreError {
    #[error("cannot use the store at {}", path.display())]
    #[diagnostic(
        code(bake::store::io),
        help("check that the folder is writable and its disk is not full; BAKE_HOME moves it")
    )]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("the disk holding {} is full", path.display())]
    #[diagnostic(code(bake::store::disk_full), help("{}", crate::home::DISK_FULL_HELP))]
    DiskFull {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("blob {digest} is not in the local store")]
    #[diagnostic(code(bake::store::missing_blob))]
    MissingBlob { digest: Digest },

    #[error("blob {digest} in the local store is damaged")]
    #[diagnostic(
        code(bake::store::corrupt_blob),
        help("bake removed the damaged copy; pulling or building again writes it anew")
    )]
    CorruptBlob { digest: Digest },

    #[error("content does not match its digest: expected {expected}, got {actual}")]
    #[diagnostic(code(bake::store::digest_mismatch))]
    DigestMismatch { expected: Digest, actual: Digest },

    #[error("{digest} is not a sha256 digest")]
    #[diagnostic(code(bake::store::unsupported_digest), help("the local store keeps sha256 content only"))]
    UnsupportedDigest { digest: Digest },

    #[error("blob {digest} is {size} bytes, too large to read into memory")]
    #[diagnostic(code(bake::store::too_large), help("this is a bug in bake: large blobs are streamed"))]
    TooLarge { digest: Digest, size: u64 },

    #[error("`{key}` is not a cache key (64 lowercase hex digits)")]
    #[diagnostic(code(bake::store::invalid_key))]
    InvalidKey { key: String },

    #[error("an image name cannot be empty")]
    #[diagnostic(code(bake::store::invalid_name))]
    InvalidName,

    #[error("the image record {} is unreadable", path.display())]
    #[diagnostic(code(bake::store::corrupt_record), help("delete the file; the image has to be pulled or built again"))]
    CorruptRecord {
        path: PathBuf,
        #[source]
        source: Option<serde_json::Error>,
    },

    #[error("cannot encode a store record")]
    #[diagnostic(code(bake::store::encode))]
    Encode(#[source] serde_json::Error),
}

/// Where an image is: its manifest (or index) in the store, and sizes for
/// `bake images`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageRecord {
    /// The image manifest or index.
    pub manifest: Digest,
    pub media_type: String,
    /// Manifest, config and layers, compressed, in bytes.
    pub size: u64,
    pub uncompressed_size: u64,
    /// RFC 3339.
    pub created: String,
}

/// A build node's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CacheEntry {
    /// The executor's own data.
    pub value: serde_json::Value,
    /// Blobs this entry keeps alive (a manifest keeps what it references).
    pub blobs: Vec<Digest>,
}

/// The on-disk form of an image record: the name beside the record, since
/// the file is named by the name's hash.
#[derive(serde::Serialize, serde::Deserialize)]
struct NamedImage {
    name: String,
    image: ImageRecord,
}

/// A handle on a local store. Cheap to clone; every clone and every process
/// may use the store at once.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Paths>,
}

#[derive(Debug)]
struct Paths {
    dir: PathBuf,
    /// `content-v2/sha256`
    content: PathBuf,
    tmp: PathBuf,
    images: PathBuf,
    cache: PathBuf,
    lock: PathBuf,
}

impl Store {
    /// Opens the store at `dir` (normally [`crate::home::Home::store_dir`]),
    /// creating it if missing.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let dir = dir.to_path_buf();
        let paths = Paths {
            content: dir.join("content-v2").join("sha256"),
            tmp: dir.join("tmp"),
            images: dir.join("images-v1"),
            cache: dir.join("cache-v1"),
            lock: dir.join("lock"),
            dir,
        };
        for d in [&paths.content, &paths.tmp, &paths.images, &paths.cache] {
            fs::create_dir_all(d).map_err(io_err(d))?;
        }
        fs::OpenOptions::new().append(true).create(true).open(&paths.lock).map_err(io_err(&paths.lock))?;
        Ok(Self { inner: Arc::new(paths) })
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    // ---- images ----------------------------------------------------------

    /// Records `image` under `name`, replacing any previous record. The
    /// manifest must be stored; it and the small blobs it reaches are
    /// verified and made durable first.
    pub fn set_image(&self, name: &str, image: &ImageRecord) -> Result<(), StoreError> {
        if name.is_empty() {
            return Err(StoreError::InvalidName);
        }
        let path = self.image_path(name);
        // The same record again (an unchanged rebuild): it was made durable
        // when it was first written.
        if read_image(&path)?.is_some_and(|doc| doc.image == *image) && self.stored_len(&image.manifest).is_some() {
            return Ok(());
        }
        let doc = NamedImage { name: name.to_owned(), image: image.clone() };
        let bytes = serde_json::to_vec_pretty(&doc).map_err(StoreError::Encode)?;
        let _lock = self.lock_shared()?;
        if self.stored_len(&image.manifest).is_none() {
            return Err(StoreError::MissingBlob { digest: image.manifest.clone() });
        }
        self.make_durable(&image.manifest)?;
        self.write_record(&path, &bytes, Durability::Sync, None)
    }

    /// The image recorded under `name`.
    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        let path = self.image_path(name);
        Ok(read_image(&path)?.map(|doc| doc.image))
    }

    /// Every image, sorted by name.
    pub fn images(&self) -> Result<Vec<(String, ImageRecord)>, StoreError> {
        let mut out = Vec::new();
        for path in json_files(&self.inner.images)? {
            if let Some(doc) = read_image(&path)? {
                out.push((doc.name, doc.image));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Forgets the image `name`; its blobs go at the next prune unless
    /// something else keeps them. Returns whether it existed.
    pub fn remove_image(&self, name: &str) -> Result<bool, StoreError> {
        let path = self.image_path(name);
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.inner.images)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    fn image_path(&self, name: &str) -> PathBuf {
        let hash = crate::oci::digest_of(name.as_bytes());
        self.inner.images.join(format!("{}.json", hash.digest()))
    }

    // ---- cache entries ---------------------------------------------------

    /// Records a build node's result under its cache key, replacing any
    /// previous entry. The entry counts as just used.
    pub fn put_cache(&self, key: &str, entry: &CacheEntry) -> Result<(), StoreError> {
        let path = self.cache_path(key)?;
        let bytes = serde_json::to_vec(entry).map_err(StoreError::Encode)?;
        let _lock = self.lock_shared()?;
        self.write_record(&path, &bytes, Durability::Lazy, Some(SystemTime::now()))
    }

    /// The entry under `key`. A hit records its use (for LRU eviction) and
    /// refreshes its blobs' grace period; an entry that is unreadable or
    /// whose blobs are not all stored is a miss.
    pub fn cache(&self, key: &str) -> Result<Option<CacheEntry>, StoreError> {
        let path = self.cache_path(key)?;
        let _lock = self.lock_shared()?;
        let Some(entry) = read_cache_entry(&path)? else {
            return Ok(None);
        };
        let mut blobs = Vec::with_capacity(entry.blobs.len());
        for digest in &entry.blobs {
            match self.blob_path(digest) {
                Ok(p) if p.exists() => blobs.push(p),
                _ => return Ok(None),
            }
        }
        let now = SystemTime::now();
        touch(&path, now);
        for p in &blobs {
            touch(p, now);
        }
        Ok(Some(entry))
    }

    fn cache_path(&self, key: &str) -> Result<PathBuf, StoreError> {
        if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(StoreError::InvalidKey { key: key.to_owned() });
        }
        Ok(self.inner.cache.join(format!("{key}.json")))
    }

    // ---- shared plumbing -------------------------------------------------

    /// Writes a record through a temporary file and a rename. `Sync` makes
    /// it durable before returning; `mtime` stamps it exactly (the kernel's
    /// file clock is coarser than LRU order needs).
    fn write_record(
        &self,
        path: &Path,
        bytes: &[u8],
        durability: Durability,
        mtime: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        let tmp = &self.inner.tmp;
        let mut file = tempfile::Builder::new().prefix("rec-").tempfile_in(tmp).map_err(io_err(tmp))?;
        file.write_all(bytes).map_err(io_err(file.path()))?;
        if let Some(t) = mtime {
            file.as_file().set_modified(t).map_err(io_err(file.path()))?;
        }
        if durability == Durability::Sync {
            file.as_file().sync_all().map_err(io_err(file.path()))?;
        }
        file.persist(path).map_err(|e| StoreError::Io { path: path.to_path_buf(), source: e.error })?;
        if durability == Durability::Sync
            && let Some(parent) = path.parent()
        {
            sync_dir(parent)?;
        }
        Ok(())
    }

    /// Holds the collector's lock shared until dropped.
    fn lock_shared(&self) -> Result<File, StoreError> {
        let path = &self.inner.lock;
        let file = File::open(path).map_err(io_err(path))?;
        file.lock_shared().map_err(io_err(path))?;
        Ok(file)
    }

    /// Holds the collector's lock exclusively until dropped.
    fn lock_exclusive(&self) -> Result<File, StoreError> {
        let path = &self.inner.lock;
        let file = File::open(path).map_err(io_err(path))?;
        file.lock().map_err(io_err(path))?;
        Ok(file)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// fsync the file and its folder.
    Sync,
    /// Rename only: a crash may lose or tear it, and readers cope.
    Lazy,
}

/// Reads an image record: `None` if absent, an error if unreadable.
fn read_image(path: &Path) -> Result<Option<NamedImage>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::Io { path: path.to_path_buf(), source: e }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::CorruptRecord { path: path.to_path_buf(), source: Some(e) })
}

/// Reads a cache entry: `None` if absent or unreadable (a torn entry is a
/// miss; the next prune removes it).
fn read_cache_entry(path: &Path) -> Result<Option<CacheEntry>, StoreError> {
    match fs::read(path) {
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io { path: path.to_path_buf(), source: e }),
    }
}

/// The `*.json` files of a folder, skipping temporary or foreign files.
fn json_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(out)
}

/// Sets a file's mtime, best effort: it only extends a blob's grace period
/// or records a cache hit, and fails only on a store shared between users.
fn touch(path: &Path, when: SystemTime) {
    if let Ok(f) = File::open(path) {
        let _ = f.set_modified(when);
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

impl StoreError {
    /// The [`StoreError::DiskFull`] that a failed write into a [`BlobWriter`]
    /// means, or the error itself when it is not a full disk.
    pub fn disk_full(source: io::Error) -> Result<Self, io::Error> {
        match crate::home::disk_full_path(&source, None) {
            Some(path) => Ok(Self::DiskFull { path, source: crate::home::no_space(source) }),
            None => Err(source),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| match crate::home::disk_full_path(&source, Some(path)) {
        Some(path) => StoreError::DiskFull { path, source: crate::home::no_space(source) },
        None => StoreError::Io { path: path.to_path_buf(), source },
    }
}
