//! The persistent file index: for each context path, the stat data a digest
//! was computed under. A file whose stat data still matches is not re-read.
//!
//! Format (little-endian): magic `BAKEIDX2`, entry count, then per entry the
//! path length and bytes, size, mtime and ctime in nanoseconds, inode, mode
//! and the blake3 digest of the content; a blake3 checksum of everything
//! before it closes the file. A file that is short, corrupt or of another
//! version reads as empty: the index is only ever a speed-up.
//!
//! Entries are sorted by path, so opening a context merges its fresh walk with
//! the index in one pass.

use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 8] = b"BAKEIDX2";
/// Bytes of an entry besides its path.
const FIXED: usize = 4 + 8 + 8 + 8 + 8 + 4 + 32;

/// The stat data that decides whether a file must be re-read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub(crate) size: u64,
    pub(crate) mtime_ns: i64,
    pub(crate) ctime_ns: i64,
    pub(crate) ino: u64,
    pub(crate) mode: u32,
}

/// One remembered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) path: String,
    pub(crate) stat: Stat,
    pub(crate) digest: [u8; 32],
}

/// Reads an index; anything unreadable is an empty index.
pub(crate) fn load(path: &Path) -> Vec<Record> {
    std::fs::read(path).ok().and_then(|bytes| decode(&bytes)).unwrap_or_default()
}

fn decode(bytes: &[u8]) -> Option<Vec<Record>> {
    let body_len = bytes.len().checked_sub(32)?;
    let (body, sum) = bytes.split_at(body_len);
    if blake3::hash(body).as_bytes() != sum || body.get(..8)? != MAGIC {
        return None;
    }
    let mut r = Reader { bytes: &body[8..] };
    let count = usize::try_from(r.u64()?).ok()?;
    let mut records = Vec::with_capacity(count.min(body.len() / FIXED));
    for _ in 0..count {
        let len = r.u32()? as usize;
        let path = std::str::from_utf8(r.take(len)?).ok()?.to_owned();
        let stat = Stat { size: r.u64()?, mtime_ns: r.i64()?, ctime_ns: r.i64()?, ino: r.u64()?, mode: r.u32()? };
        let digest = r.take(32)?.try_into().ok()?;
        records.push(Record { path, stat, digest });
    }
    Some(records)
}

/// Writes an index atomically: a temporary file in the same folder, renamed.
pub(crate) fn save(path: &Path, records: &[Record]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut body = Vec::with_capacity(16 + records.iter().map(|r| FIXED + r.path.len()).sum::<usize>() + 32);
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&(records.len() as u64).to_le_bytes());
    for rec in records {
        let len = u32::try_from(rec.path.len()).map_err(|_| std::io::Error::other("path too long"))?;
        body.extend_from_slice(&len.to_le_bytes());
        body.extend_from_slice(rec.path.as_bytes());
        body.extend_from_slice(&rec.stat.size.to_le_bytes());
        body.extend_from_slice(&rec.stat.mtime_ns.to_le_bytes());
        body.extend_from_slice(&rec.stat.ctime_ns.to_le_bytes());
        body.extend_from_slice(&rec.stat.ino.to_le_bytes());
        body.extend_from_slice(&rec.stat.mode.to_le_bytes());
        body.extend_from_slice(&rec.digest);
    }
    let sum = blake3::hash(&body);
    body.extend_from_slice(sum.as_bytes());
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&body)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str, n: u8) -> Record {
        Record {
            path: path.to_owned(),
            stat: Stat { size: u64::from(n), mtime_ns: -1, ctime_ns: 7, ino: 42, mode: 0o100_644 },
            digest: [n; 32],
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/ctx.idx");
        let records = vec![record("a", 1), record("dir/b é", 2)];
        save(&path, &records).expect("save");
        assert_eq!(load(&path), records);
    }

    #[test]
    fn corrupt_or_truncated_reads_as_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ctx.idx");
        save(&path, &[record("a", 1)]).expect("save");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[12] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        assert!(load(&path).is_empty());
        std::fs::write(&path, &bytes[..20]).expect("write");
        assert!(load(&path).is_empty());
        std::fs::write(&path, b"").expect("write");
        assert!(load(&path).is_empty());
        assert!(load(&dir.path().join("missing")).is_empty());
    }
}
