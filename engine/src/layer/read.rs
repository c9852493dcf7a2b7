//! Reading layers: blob -> decompressor -> diff_id hash -> tar -> entries.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{self, BufReader, Read};
use std::rc::Rc;

use super::archive::{Member, Reader};
use super::{
    Entry, EntryKind, LayerError, Limits, MAX_PATH, OPAQUE_MARKER, WHITEOUT_META_PREFIX, WHITEOUT_PREFIX, join,
    split_last,
};
use crate::oci::{Compression, Digest, HashReader};

/// How [`entries`] names the layer in its errors.
const UNNAMED: &str = "(stream)";
/// How much of an overlong path a message shows.
const SHOWN_PATH: usize = 120;

/// Reads a layer blob, calling `visit` with each entry and its content (empty
/// but for files), in the blob's order; returns the `diff_id`.
///
/// Paths are normalised (`./` dropped), whiteouts come as
/// [`EntryKind::Whiteout`] and [`EntryKind::Opaque`], and the root entry and
/// aufs metadata are skipped. An absolute path, or one with `..`, is an
/// error. Entries carry no mtime (bake writes them all alike).
pub fn entries(
    blob: impl Read,
    compression: Compression,
    visit: impl FnMut(Entry, &mut dyn Read) -> Result<(), LayerError>,
) -> Result<Digest, LayerError> {
    entries_within(blob, compression, &Limits::default(), visit)
}

/// [`entries`] within `limits` (the fuzz targets keep a bomb small).
pub(crate) fn entries_within(
    blob: impl Read,
    compression: Compression,
    limits: &Limits,
    mut visit: impl FnMut(Entry, &mut dyn Read) -> Result<(), LayerError>,
) -> Result<Digest, LayerError> {
    read_layer(UNNAMED, blob, compression, limits, |item, content| visit(item.entry, content))
        .map(|(diff_id, _)| diff_id)
}

/// An entry as read, with what [`Entry`] leaves out.
pub(super) struct Item {
    pub(super) entry: Entry,
    /// The entry's path as written in the tar, for messages.
    pub(super) raw_path: String,
    /// Seconds since the epoch.
    pub(super) mtime: i64,
}

enum Decoder<R: Read> {
    Plain(R),
    Gzip(Box<flate2::read::MultiGzDecoder<R>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(r) => r.read(buf),
            Self::Gzip(r) => r.read(buf),
            Self::Zstd(r) => r.read(buf),
        }
    }
}

/// Counts the bytes of the tar stream as they are decompressed, and refuses
/// to produce more than `max`: a bomb ends after `max` bytes, whatever it
/// would expand to.
struct Capped<R> {
    inner: R,
    count: Rc<Cell<u64>>,
    max: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.max.saturating_sub(self.count.get());
        // One byte past the cap tells "exactly at the cap" from "over it".
        let want = usize::try_from(left.saturating_add(1)).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        let count = self.count.get() + n as u64;
        self.count.set(count);
        if count > self.max {
            self.exceeded.set(true);
            return Err(io::Error::other("the layer exceeds its size limit"));
        }
        Ok(n)
    }
}

/// Reads `blob` (named `layer` in errors) within `limits`: the `diff_id` and
/// the length of the tar stream.
pub(super) fn read_layer<R: Read>(
    layer: &str,
    blob: R,
    compression: Compression,
    limits: &Limits,
    mut visit: impl FnMut(Item, &mut dyn Read) -> Result<(), LayerError>,
) -> Result<(Digest, u64), LayerError> {
    let exceeded = Rc::new(Cell::new(false));
    let too_large = || LayerError::TooLarge { layer: layer.to_owned(), limit: limits.max_bytes };
    let read = |source| if exceeded.get() { too_large() } else { LayerError::Read { layer: layer.to_owned(), source } };
    let decoder = match compression {
        Compression::None => Decoder::Plain(blob),
        Compression::Gzip => Decoder::Gzip(Box::new(flate2::read::MultiGzDecoder::new(blob))),
        Compression::Zstd => Decoder::Zstd(zstd::stream::read::Decoder::new(blob).map_err(read)?),
    };
    let count = Rc::new(Cell::new(0u64));
    let capped =
        Capped { inner: decoder, count: Rc::clone(&count), max: limits.max_bytes, exceeded: Rc::clone(&exceeded) };
    let mut tar_stream = HashReader::new(capped);
    {
        let mut archive = Reader::new(BufReader::with_capacity(128 * 1024, &mut tar_stream));
        let mut members = 0u64;
        while let Some(member) = archive.next().map_err(read)? {
            members += 1;
            if members > limits.max_entries {
                return Err(LayerError::TooManyEntries { layer: layer.to_owned(), limit: limits.max_entries });
            }
            // A declared size past the cap fails now, before any of it is written.
            if count.get().saturating_add(member.size) > limits.max_bytes {
                return Err(too_large());
            }
            if let Some(item) = parse(layer, member)? {
                visit(item, &mut archive)?;
            }
        }
        // The diff_id covers the whole stream, padding after the end included.
        io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(read)?;
    }
    Ok(tar_stream.finish())
}

/// Turns a tar member into an [`Item`]; `None` for what layers skip.
fn parse(layer: &str, member: Member) -> Result<Option<Item>, LayerError> {
    let mut raw_path = String::from_utf8_lossy(&member.name).into_owned();
    if raw_path.len() > MAX_PATH {
        // Named in messages: the start says enough.
        let end = raw_path.floor_char_boundary(SHOWN_PATH);
        raw_path = format!("{}…", &raw_path[..end]);
    }
    let malformed = |reason: String| LayerError::Malformed { layer: layer.to_owned(), entry: raw_path.clone(), reason };
    let unsafe_path = |reason: String| LayerError::Unsafe { layer: layer.to_owned(), entry: raw_path.clone(), reason };

    if std::str::from_utf8(&member.name).is_err() {
        return Err(malformed("has a name that is not UTF-8".to_owned()));
    }
    // A PAX `path` may hold any byte; no file can be named with a NUL.
    if member.name.contains(&0) {
        return Err(malformed("has a name with a NUL byte".to_owned()));
    }
    if member.name.len() > MAX_PATH || member.link.len() > MAX_PATH {
        let len = member.name.len().max(member.link.len());
        return Err(malformed(format!("has a path or link target of {len} bytes, longer than Linux's {MAX_PATH}")));
    }
    let path = normalize(&raw_path).map_err(|reason| unsafe_path(reason.to_owned()))?;
    if path.is_empty() {
        // The root itself: its metadata belongs to whoever owns the destination.
        return Ok(None);
    }
    let id = |n: u64, what: &str| u32::try_from(n).map_err(|_| malformed(format!("has {what} {n}, too large")));
    let uid = id(member.uid, "uid")?;
    let gid = id(member.gid, "gid")?;
    let device = || match member.device {
        Some((major, minor)) => Ok((major, minor)),
        None => Err(malformed("is a device without device numbers".to_owned())),
    };
    let link = || match std::str::from_utf8(&member.link) {
        Ok("") => Err(malformed("is a link without a target".to_owned())),
        Ok(target) if target.contains('\0') => Err(malformed("links to a name with a NUL byte".to_owned())),
        Ok(target) => Ok(target.to_owned()),
        Err(_) => Err(malformed("links to a name that is not UTF-8".to_owned())),
    };

    let (parent, name) = split_last(&path);
    let aufs_meta = |c: &str| c.starts_with(WHITEOUT_META_PREFIX);
    if parent.split('/').any(aufs_meta) {
        return Ok(None);
    }
    if parent.split('/').any(|c| c.starts_with(WHITEOUT_PREFIX)) {
        return Err(malformed("is inside a whiteout".to_owned()));
    }
    let (path, kind) = if name == OPAQUE_MARKER {
        (parent.to_owned(), EntryKind::Opaque)
    } else if aufs_meta(name) {
        return Ok(None);
    } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
        if matches!(hidden, "" | "." | "..") {
            return Err(unsafe_path(format!("is a whiteout for `{hidden}`")));
        }
        (join(parent, hidden), EntryKind::Whiteout)
    } else {
        if member.sparse {
            return Err(malformed("is a GNU sparse file, which layers do not use".to_owned()));
        }
        let kind = match member.typeflag {
            b'0' | b'7' => EntryKind::File { size: member.size },
            b'1' => {
                let target = link()?;
                let target = normalize(&target)
                    .map_err(|reason| unsafe_path(format!("is a hardlink to `{target}`, which {reason}")))?;
                if target.is_empty() {
                    return Err(unsafe_path("is a hardlink to the layer root".to_owned()));
                }
                EntryKind::Hardlink { target }
            }
            b'2' => EntryKind::Symlink { target: link()? },
            b'3' => {
                let (major, minor) = device()?;
                EntryKind::CharDevice { major, minor }
            }
            b'4' => {
                let (major, minor) = device()?;
                EntryKind::BlockDevice { major, minor }
            }
            b'5' => EntryKind::Dir,
            b'6' => EntryKind::Fifo,
            other => {
                return Err(malformed(format!("has the unsupported tar entry type `{}`", other.escape_ascii())));
            }
        };
        (path, kind)
    };

    let mut xattrs = BTreeMap::new();
    for (name, value) in member.xattrs {
        match String::from_utf8(name) {
            Ok(name) if !name.is_empty() && !name.contains('\0') => {
                xattrs.insert(name, value);
            }
            _ => return Err(malformed("has an xattr with an empty, non-UTF-8 or NUL-holding name".to_owned())),
        }
    }
    let entry = Entry { path, kind, mode: member.mode, uid, gid, xattrs };
    Ok(Some(Item { entry, raw_path, mtime: member.mtime }))
}

/// A tar path as a layer path: `./` and empty components dropped, no
/// trailing `/`. Absolute paths and `..` are refused (the reason reads after
/// "entry `...`").
pub(super) fn normalize(raw: &str) -> Result<String, &'static str> {
    if raw.starts_with('/') {
        return Err("is an absolute path");
    }
    let mut parts = Vec::new();
    for component in raw.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err("goes up with `..`"),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}
