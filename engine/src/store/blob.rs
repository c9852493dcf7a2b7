//! Blobs: content-addressed files in cacache's content layout, written
//! through [`BlobWriter`] (see the module docs of [`super`]).

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cacache::{Algorithm, Integrity};
use oci_spec::image::DigestAlgorithm;
use tempfile::TempPath;

use super::{READ_BLOB_MAX, SMALL_BLOB, Store, StoreError, io_err, touch};
use crate::oci::{Digest, HashReader, HashWriter, digest_of};

/// How much a [`BlobWriter`] buffers before writing to its file.
const WRITE_BUFFER: usize = 256 << 10;
/// Read size when streaming a blob through a hash.
const READ_CHUNK: usize = 1 << 20;

impl Store {
    /// Whether the blob is stored. A `true` answer also protects the blob
    /// from the collector for its grace period, so the caller may go on to
    /// reference it (see the module docs).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_len(digest).is_some()
    }

    /// Whether the blob is stored, for maintenance: unlike
    /// [`Store::has_blob`] it does not refresh the grace period, so asking
    /// does not keep a blob alive.
    pub fn contains_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_ok_and(|path| path.is_file())
    }

    /// The blob's size, if stored; like [`Store::has_blob`], it refreshes the
    /// blob's grace period.
    pub fn blob_len(&self, digest: &Digest) -> Option<u64> {
        let path = self.blob_path(digest).ok()?;
        // Without the lock (an unwritable store), still answer; the check
        // and the touch are then merely not atomic with a prune.
        let _lock = self.lock_shared().ok();
        let meta = fs::metadata(&path).ok()?;
        touch(&path, SystemTime::now());
        Some(meta.len())
    }

    /// Reads a small blob (a manifest or config) into memory, verified
    /// against its digest. Blobs over [`READ_BLOB_MAX`] are refused.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest)?;
        let size = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob { digest: digest.clone() });
            }
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        if size > READ_BLOB_MAX {
            return Err(StoreError::TooLarge { digest: digest.clone(), size });
        }
        cacache::read_hash_sync(self.dir(), &integrity(digest)).map_err(|e| self.cacache_error(digest, &path, e))
    }

    /// Opens a blob for streaming. Blobs up to [`SMALL_BLOB`] are verified
    /// first (they are not fsynced when written); larger ones are not: use
    /// [`Store::verify_blob`] or hash while reading if it matters.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, StoreError> {
        let path = self.blob_path(digest)?;
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob { digest: digest.clone() });
            }
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len <= SMALL_BLOB {
            let mut reader = HashReader::new(&mut file);
            io::copy(&mut reader, &mut io::sink()).map_err(io_err(&path))?;
            if reader.finish().0 != *digest {
                discard(&path);
                return Err(StoreError::CorruptBlob { digest: digest.clone() });
            }
            file.rewind().map_err(io_err(&path))?;
        }
        Ok(file)
    }

    /// Reads a whole blob (of any size) through its hash and returns its
    /// length. A damaged blob is removed and reported.
    pub fn verify_blob(&self, digest: &Digest) -> Result<u64, StoreError> {
        let path = self.blob_path(digest)?;
        let mut reader = cacache::SyncReader::open_hash(self.dir(), integrity(digest))
            .map_err(|e| self.cacache_error(digest, &path, e))?;
        let mut buf = vec![0u8; READ_CHUNK];
        let mut len = 0u64;
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => len += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StoreError::Io { path, source: e }),
            }
        }
        reader.check().map_err(|e| self.cacache_error(digest, &path, e))?;
        Ok(len)
    }

    /// Stores a small blob from memory. An identical stored copy is kept
    /// (and its grace period refreshed) rather than written again.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = digest_of(bytes);
        let path = self.blob_path(&digest)?;
        let len = bytes.len() as u64;
        if len > SMALL_BLOB {
            // Not under the lock: the fsync could hold up a prune.
            if fs::metadata(&path).is_ok_and(|m| m.len() == len) && self.has_blob(&digest) {
                return Ok(digest);
            }
            let mut writer = self.blob_writer()?;
            writer.write_all(bytes).map_err(io_err(&self.inner.tmp))?;
            return writer.commit(Some(&digest)).map(|(d, _)| d);
        }
        // A small blob is written whole under the shared lock, like a
        // record: a prune cannot see its temporary file, so it needs no
        // lock of its own.
        let _lock = self.lock_shared()?;
        let now = SystemTime::now();
        if fs::metadata(&path).is_ok_and(|m| m.len() == len) && fs::read(&path).is_ok_and(|stored| stored == bytes) {
            touch(&path, now);
            return Ok(digest);
        }
        let tmp = &self.inner.tmp;
        let mut file = tempfile::Builder::new()
            .prefix("blob-")
            .permissions(fs::Permissions::from_mode(0o444))
            .tempfile_in(tmp)
            .map_err(io_err(tmp))?;
        file.write_all(bytes).map_err(io_err(file.path()))?;
        file.as_file().set_modified(now).map_err(io_err(file.path()))?;
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        file.persist(&path).map_err(|e| StoreError::Io { path: path.clone(), source: e.error })?;
        Ok(digest)
    }

    /// A writer that streams a blob into the store.
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        let tmp = &self.inner.tmp;
        let named = {
            // Created and locked under the store lock, so a prune never
            // sees this file unlocked while its writer lives.
            let _lock = self.lock_shared()?;
            let named = tempfile::Builder::new()
                .prefix("blob-")
                .permissions(fs::Permissions::from_mode(0o444))
                .tempfile_in(tmp)
                .map_err(io_err(tmp))?;
            named.as_file().lock().map_err(io_err(named.path()))?;
            named
        };
        let (file, temp) = named.into_parts();
        Ok(BlobWriter { store: self.clone(), out: HashWriter::new(BufWriter::with_capacity(WRITE_BUFFER, file)), temp })
    }

    /// Where a blob lives: cacache's content path for its sha256 integrity.
    pub(super) fn blob_path(&self, digest: &Digest) -> Result<PathBuf, StoreError> {
        if *digest.algorithm() != DigestAlgorithm::Sha256 {
            return Err(StoreError::UnsupportedDigest { digest: digest.clone() });
        }
        // oci-spec guarantees 64 lowercase hex digits for sha256.
        let hex = digest.digest();
        Ok(self.inner.content.join(&hex[..2]).join(&hex[2..4]).join(&hex[4..]))
    }

    /// The blob's size without refreshing its grace period.
    pub(super) fn stored_len(&self, digest: &Digest) -> Option<u64> {
        let path = self.blob_path(digest).ok()?;
        fs::metadata(path).ok().filter(fs::Metadata::is_file).map(|m| m.len())
    }

    fn cacache_error(&self, digest: &Digest, path: &Path, e: cacache::Error) -> StoreError {
        match e {
            cacache::Error::IoError(e, _) if e.kind() == io::ErrorKind::NotFound => {
                StoreError::MissingBlob { digest: digest.clone() }
            }
            cacache::Error::IoError(e, _) => StoreError::Io { path: path.to_path_buf(), source: e },
            cacache::Error::IntegrityError(_) | cacache::Error::SizeMismatch(..) => {
                discard(path);
                StoreError::CorruptBlob { digest: digest.clone() }
            }
            other => StoreError::Io { path: self.dir().to_path_buf(), source: io::Error::other(other.to_string()) },
        }
    }
}

/// The cacache integrity of a sha256 digest.
fn integrity(digest: &Digest) -> Integrity {
    Integrity::from_hex(digest.digest(), Algorithm::Sha256)
        .unwrap_or_else(|_| unreachable!("blob_path checked the digest is sha256 hex"))
}

/// Removes a damaged blob, best effort, so that the next write replaces it.
pub(super) fn discard(path: &Path) {
    let _ = fs::remove_file(path);
}

/// Streams a blob into the store, hashing it on the way. Nothing is visible
/// until [`BlobWriter::commit`]; dropping the writer deletes what it wrote.
pub struct BlobWriter {
    store: Store,
    out: HashWriter<BufWriter<File>>,
    /// Deletes the temporary file on drop unless it was persisted.
    temp: TempPath,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("store", &self.store.dir())
            .field("temp", &self.temp)
            .field("len", &self.out.len())
            .finish()
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Publishes the blob and returns its digest and length. With
    /// `expected`, a different digest is [`StoreError::DigestMismatch`] and
    /// nothing is stored.
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64), StoreError> {
        let Self { store, out, temp } = self;
        let (buffered, digest, len) = out.finish();
        let file =
            buffered.into_inner().map_err(|e| StoreError::Io { path: temp.to_path_buf(), source: e.into_error() })?;
        if let Some(expected) = expected
            && *expected != digest
        {
            return Err(StoreError::DigestMismatch { expected: expected.clone(), actual: digest });
        }
        if len > SMALL_BLOB {
            file.sync_data().map_err(io_err(&temp))?;
        }
        // The grace period starts now, not at the last write.
        file.set_modified(SystemTime::now()).map_err(io_err(&temp))?;
        let dest = store.blob_path(&digest)?;
        let _lock = store.lock_shared()?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        temp.persist(&dest).map_err(|e| StoreError::Io { path: dest.clone(), source: e.error })?;
        drop(file);
        Ok((digest, len))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf).map_err(|e| crate::home::name_disk_full(e, &self.store.inner.tmp))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush().map_err(|e| crate::home::name_disk_full(e, &self.store.inner.tmp))
    }
}
