//! Writing layers: entries in layer order -> USTAR/PAX tar -> compressor.

use std::collections::HashSet;
use std::io::{self, BufWriter, Read, Write};

use super::compress::Encoder;
use super::{Entry, EntryKind, LayerError, LayerInfo, LayerOptions, check_path, cmp_paths, split_last};
use crate::oci::HashWriter;

const BLOCK: usize = 512;
const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;
/// The largest number a 12-byte octal field holds (sizes, mtimes).
const MAX_OCTAL_11: u64 = 0o77_777_777_777;
/// The largest number an 8-byte octal field holds (ids, device numbers).
const MAX_OCTAL_7: u64 = 0o7_777_777;
/// Tar bytes are gathered into chunks this big before they are hashed and
/// compressed.
const TAR_BUFFER: usize = 256 * 1024;

/// Writes a deterministic layer: see the [module docs](super).
///
/// ```
/// use bake_engine::layer::{Entry, EntryKind, LayerOptions, LayerWriter};
///
/// let mut layer = LayerWriter::new(Vec::new(), &LayerOptions::default());
/// layer.append(&Entry::new("etc", EntryKind::Dir), None)?;
/// let mut hosts: &[u8] = b"127.0.0.1 localhost\n";
/// layer.append(&Entry::new("etc/hosts", EntryKind::File { size: 20 }), Some(&mut hosts))?;
/// let (blob, info) = layer.finish()?;
/// assert_eq!(info.size, blob.len() as u64);
/// # Ok::<(), bake_engine::layer::LayerError>(())
/// ```
pub struct LayerWriter<W: Write> {
    tar: BufWriter<HashWriter<Encoder<W>>>,
    media_type: &'static str,
    /// Every mtime, validated.
    epoch: u64,
    /// Why the options cannot be used: reported by every call.
    invalid: Option<String>,
    /// An I/O or content error left a partial entry in the stream.
    broken: bool,
    /// The tar path of the last entry, for the order check.
    last: Option<String>,
    /// Files and hardlinks so far: what a hardlink may point to.
    linkable: HashSet<String>,
    copy_buf: Vec<u8>,
}

impl<W: Write> LayerWriter<W> {
    /// A writer that compresses with one thread per CPU. The output does not
    /// depend on the thread count.
    pub fn new(out: W, options: &LayerOptions) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self::with_threads(out, options, threads)
    }

    /// A writer that compresses with `threads` threads (at least one).
    pub fn with_threads(out: W, options: &LayerOptions, threads: usize) -> Self {
        let (level, mut invalid) = match options.effective_level() {
            Ok(level) => (level, None),
            Err(reason) => (None, Some(reason)),
        };
        let epoch = match u64::try_from(options.epoch) {
            Ok(e) if e <= MAX_OCTAL_11 => e,
            _ => {
                invalid.get_or_insert_with(|| {
                    format!("SOURCE_DATE_EPOCH {} is outside 0..={MAX_OCTAL_11}", options.epoch)
                });
                0
            }
        };
        let (encoder, failed) = Encoder::new(out, options.compression, level, threads);
        if let Some(reason) = failed {
            invalid.get_or_insert(reason);
        }
        Self {
            tar: BufWriter::with_capacity(TAR_BUFFER, HashWriter::new(encoder)),
            media_type: options.compression.media_type(),
            epoch,
            invalid,
            broken: false,
            last: None,
            linkable: HashSet::new(),
            copy_buf: Vec::new(),
        }
    }

    /// Appends an entry. `content` is a file's content, exactly `size` bytes
    /// (it may be `None` for an empty file); other kinds take none.
    ///
    /// An invalid or out-of-order entry is refused before anything is
    /// written, and the writer can go on. An error while writing or reading
    /// the content leaves a partial entry behind: the writer is then broken.
    pub fn append(&mut self, entry: &Entry, content: Option<&mut dyn Read>) -> Result<(), LayerError> {
        self.usable()?;
        let tar_path = entry.tar_path();
        self.check(entry, &tar_path, content.is_some())?;
        let mut headers = Vec::with_capacity(2 * BLOCK);
        self.encode_headers(entry, &tar_path, &mut headers)?;

        self.broken = true;
        self.tar.write_all(&headers).map_err(LayerError::write)?;
        if let EntryKind::File { size } = entry.kind {
            self.copy_content(&entry.path, size, content)?;
        }
        self.broken = false;

        if matches!(entry.kind, EntryKind::File { .. } | EntryKind::Hardlink { .. }) {
            self.linkable.insert(entry.path.clone());
        }
        self.last = Some(tar_path.into_owned());
        Ok(())
    }

    /// Ends the archive and the compressed stream: the output and what was
    /// written.
    pub fn finish(mut self) -> Result<(W, LayerInfo), LayerError> {
        self.usable()?;
        let write = LayerError::write;
        // The end of a tar archive: two zero blocks.
        self.tar.write_all(&[0; 2 * BLOCK]).map_err(write)?;
        let tar = self.tar.into_inner().map_err(|e| write(e.into_error()))?;
        let (encoder, diff_id, uncompressed_size) = tar.finish();
        let (out, digest, size) = encoder.finish().map_err(write)?.finish();
        Ok((out, LayerInfo { digest, diff_id, size, uncompressed_size, media_type: self.media_type.to_owned() }))
    }

    fn usable(&self) -> Result<(), LayerError> {
        if let Some(reason) = &self.invalid {
            return Err(LayerError::Options { reason: reason.clone() });
        }
        if self.broken {
            return Err(LayerError::Broken);
        }
        Ok(())
    }

    /// Everything that can be checked before writing.
    fn check(&self, entry: &Entry, tar_path: &str, has_content: bool) -> Result<(), LayerError> {
        let invalid = |reason: &str| LayerError::InvalidEntry { path: entry.path.clone(), reason: reason.to_owned() };
        match entry.kind {
            EntryKind::Opaque if entry.path.is_empty() => {}
            _ => check_path(&entry.path).map_err(invalid)?,
        }
        if entry.mode & !0o7777 != 0 {
            return Err(invalid(&format!("has mode {:o}, which is more than permission bits (7777)", entry.mode)));
        }
        match &entry.kind {
            EntryKind::File { .. } => {}
            _ if has_content => return Err(invalid("has content, but only files do")),
            EntryKind::Symlink { target } => {
                if target.is_empty() || target.contains('\0') {
                    return Err(invalid("is a symlink with an empty target or one with a NUL byte"));
                }
            }
            EntryKind::Hardlink { target } => {
                if !self.linkable.contains(target) {
                    return Err(invalid(&format!(
                        "is a hardlink to `{target}`, which is not an earlier file of this layer"
                    )));
                }
            }
            EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
                if u64::from(*major) > MAX_OCTAL_7 || u64::from(*minor) > MAX_OCTAL_7 {
                    return Err(invalid(&format!("has device number {major}:{minor}, too large for a tar header")));
                }
            }
            EntryKind::Dir | EntryKind::Fifo | EntryKind::Whiteout | EntryKind::Opaque => {}
        }
        for name in entry.xattrs.keys() {
            if name.is_empty() || name.contains(['\0', '=']) {
                return Err(invalid(&format!("has an xattr named `{name}`; names are non-empty, without `=` or NUL")));
            }
        }
        if let Some(last) = &self.last {
            match cmp_paths(last, tar_path) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return Err(LayerError::Duplicate { path: tar_path.to_owned() }),
                std::cmp::Ordering::Greater => {
                    return Err(LayerError::OutOfOrder { previous: last.clone(), path: tar_path.to_owned() });
                }
            }
        }
        Ok(())
    }

    /// The entry's PAX header (if it needs one) and USTAR header.
    fn encode_headers(&self, entry: &Entry, tar_path: &str, out: &mut Vec<u8>) -> Result<(), LayerError> {
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        let mut header = [0u8; BLOCK];

        let mut name = tar_path.as_bytes().to_vec();
        if entry.kind == EntryKind::Dir {
            name.push(b'/');
        }
        if name.len() <= NAME_LEN {
            header[..name.len()].copy_from_slice(&name);
        } else if let Some((prefix, rest)) = split_ustar_path(&name) {
            header[..rest.len()].copy_from_slice(rest);
            header[345..345 + prefix.len()].copy_from_slice(prefix);
        } else {
            records.push(("path".to_owned(), name.clone()));
        }

        let (typeflag, size) = match &entry.kind {
            EntryKind::File { size } => (b'0', *size),
            EntryKind::Hardlink { .. } => (b'1', 0),
            EntryKind::Symlink { .. } => (b'2', 0),
            EntryKind::CharDevice { .. } => (b'3', 0),
            EntryKind::BlockDevice { .. } => (b'4', 0),
            EntryKind::Dir => (b'5', 0),
            EntryKind::Fifo => (b'6', 0),
            // Whiteouts are empty regular files, as Docker and containerd write them.
            EntryKind::Whiteout | EntryKind::Opaque => (b'0', 0),
        };
        if let EntryKind::Symlink { target } | EntryKind::Hardlink { target } = &entry.kind {
            if target.len() <= NAME_LEN {
                header[157..157 + target.len()].copy_from_slice(target.as_bytes());
            } else {
                records.push(("linkpath".to_owned(), target.as_bytes().to_vec()));
            }
        }

        octal(&mut header[100..108], u64::from(entry.mode));
        for (range, id, key) in [(108..116, entry.uid, "uid"), (116..124, entry.gid, "gid")] {
            if u64::from(id) <= MAX_OCTAL_7 {
                octal(&mut header[range], u64::from(id));
            } else {
                octal(&mut header[range], 0);
                records.push((key.to_owned(), id.to_string().into_bytes()));
            }
        }
        if size <= MAX_OCTAL_11 {
            octal(&mut header[124..136], size);
        } else {
            octal(&mut header[124..136], 0);
            records.push(("size".to_owned(), size.to_string().into_bytes()));
        }
        octal(&mut header[136..148], self.epoch);
        header[156] = typeflag;
        if let EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } = entry.kind {
            octal(&mut header[329..337], u64::from(major));
            octal(&mut header[337..345], u64::from(minor));
        }
        for (name, value) in &entry.xattrs {
            records.push((format!("SCHILY.xattr.{name}"), value.clone()));
        }

        if !records.is_empty() {
            records.sort();
            let mut data = Vec::new();
            for (key, value) in &records {
                pax_record(&mut data, key, value);
            }
            let mut pax = [0u8; BLOCK];
            let pax_name = pax_header_name(tar_path);
            pax[..pax_name.len()].copy_from_slice(&pax_name);
            octal(&mut pax[100..108], 0o644);
            octal(&mut pax[108..116], 0);
            octal(&mut pax[116..124], 0);
            let len = u64::try_from(data.len()).map_err(|_| LayerError::InvalidEntry {
                path: entry.path.clone(),
                reason: "has too much metadata".to_owned(),
            })?;
            if len > MAX_OCTAL_11 {
                return Err(LayerError::InvalidEntry {
                    path: entry.path.clone(),
                    reason: "has too much metadata".to_owned(),
                });
            }
            octal(&mut pax[124..136], len);
            octal(&mut pax[136..148], self.epoch);
            pax[156] = b'x';
            finish_header(&mut pax);
            out.extend_from_slice(&pax);
            out.extend_from_slice(&data);
            out.resize(out.len().next_multiple_of(BLOCK), 0);
        }

        finish_header(&mut header);
        out.extend_from_slice(&header);
        Ok(())
    }

    /// Copies exactly `size` bytes of content, then pads to a block.
    fn copy_content(&mut self, path: &str, size: u64, content: Option<&mut dyn Read>) -> Result<(), LayerError> {
        let write = LayerError::write;
        let read = |source| LayerError::Content { path: path.to_owned(), source };
        let mut copied = 0u64;
        if let Some(content) = content {
            if self.copy_buf.is_empty() {
                // As big as the tar buffer, so content passes through it uncopied.
                self.copy_buf = vec![0; TAR_BUFFER];
            }
            while copied < size {
                let want = usize::try_from(size - copied).unwrap_or(usize::MAX).min(self.copy_buf.len());
                let n = match content.read(&mut self.copy_buf[..want]) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(read(e)),
                };
                self.tar.write_all(&self.copy_buf[..n]).map_err(write)?;
                copied += n as u64;
            }
            if copied == size {
                let mut probe = [0u8; 1];
                let extra = loop {
                    match content.read(&mut probe) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(read(e)),
                    }
                };
                if extra > 0 {
                    return Err(LayerError::ContentSize {
                        path: path.to_owned(),
                        expected: size,
                        found: "longer".to_owned(),
                    });
                }
            }
        }
        if copied != size {
            return Err(LayerError::ContentSize {
                path: path.to_owned(),
                expected: size,
                found: format!("{copied} bytes"),
            });
        }
        // Less than a block, so it fits any usize.
        let padding = usize::try_from(size.next_multiple_of(BLOCK as u64) - size).unwrap_or(0);
        self.tar.write_all(&[0; BLOCK][..padding]).map_err(write)
    }
}

/// Writes `value` as zero-padded octal digits and a NUL, filling `field`.
/// The caller has checked that it fits.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

/// Fills in the USTAR magic and the checksum.
fn finish_header(header: &mut [u8; BLOCK]) {
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].fill(b' ');
    let sum: u64 = header.iter().map(|b| u64::from(*b)).sum();
    // Six octal digits, NUL, space: the traditional form.
    let text = format!("{sum:06o}");
    header[148..154].copy_from_slice(&text.as_bytes()[text.len() - 6..]);
    header[154] = 0;
}

/// Splits a long name into USTAR's prefix and name fields, as Go's
/// archive/tar does, when it can.
fn split_ustar_path(name: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut end = name.len().min(PREFIX_LEN + 1);
    if end == name.len() && name.last() == Some(&b'/') {
        end -= 1;
    }
    let slash = name[..end].iter().rposition(|b| *b == b'/')?;
    let (prefix, rest) = (&name[..slash], &name[slash + 1..]);
    (slash > 0 && !rest.is_empty() && rest.len() <= NAME_LEN && prefix.len() <= PREFIX_LEN).then_some((prefix, rest))
}

/// `DIR/PaxHeaders.0/NAME`, cut to fit a name field, as Go's archive/tar
/// names extended headers (GNU tar puts its process id in the name).
fn pax_header_name(tar_path: &str) -> Vec<u8> {
    let (dir, name) = split_last(tar_path);
    let mut header_name = if dir.is_empty() { String::new() } else { format!("{dir}/") };
    header_name.push_str("PaxHeaders.0/");
    header_name.push_str(name);
    let mut bytes = header_name.into_bytes();
    bytes.truncate(NAME_LEN);
    bytes
}

/// Appends one PAX record: `LEN KEY=VALUE\n`, where LEN counts itself.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Compresses an uncompressed layer (a tar stream) with `options`'
/// compression: the same diffID, a new digest. The output does not depend on
/// the thread count.
pub fn compress_tar<W: Write>(
    mut tar: impl Read,
    out: W,
    options: &LayerOptions,
) -> Result<(W, LayerInfo), LayerError> {
    let level = options.effective_level().map_err(|reason| LayerError::Options { reason })?;
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let (encoder, failed) = Encoder::new(out, options.compression, level, threads);
    if let Some(reason) = failed {
        return Err(LayerError::Options { reason });
    }
    let write = LayerError::write;
    let mut hashing = HashWriter::new(encoder);
    std::io::copy(&mut tar, &mut hashing).map_err(write)?;
    let (encoder, diff_id, uncompressed_size) = hashing.finish();
    let (out, digest, size) = encoder.finish().map_err(write)?.finish();
    let media_type = options.compression.media_type().to_owned();
    Ok((out, LayerInfo { digest, diff_id, size, uncompressed_size, media_type }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        let mut out = Vec::new();
        pax_record(&mut out, "path", b"abc");
        assert_eq!(out, b"12 path=abc\n");
        let mut out = Vec::new();
        // 93 bytes without the length, 95 with "95", not 94.
        pax_record(&mut out, "k", &[b'x'; 89]);
        assert_eq!(out.len(), 95);
        assert!(out.starts_with(b"95 k="));
    }

    #[test]
    fn long_names_split_like_go() {
        let dir = "d".repeat(120);
        let name = format!("{dir}/file");
        assert_eq!(split_ustar_path(name.as_bytes()), Some((dir.as_bytes(), &b"file"[..])));
        let dirname = format!("{dir}/sub/");
        assert_eq!(split_ustar_path(dirname.as_bytes()), Some((dir.as_bytes(), &b"sub/"[..])));
        // No slash early enough, or a last component that is too long: PAX.
        assert_eq!(split_ustar_path("x".repeat(200).as_bytes()), None);
        assert_eq!(split_ustar_path(format!("a/{}", "y".repeat(101)).as_bytes()), None);
    }

    #[test]
    fn octal_fields() {
        let mut f = [0xffu8; 8];
        octal(&mut f, 0o755);
        assert_eq!(&f, b"0000755\0");
        let mut f = [0u8; 12];
        octal(&mut f, MAX_OCTAL_11);
        assert_eq!(&f, b"77777777777\0");
    }
}
