//! A strict, streaming tar reader: USTAR, GNU and v7 headers, PAX extended
//! headers and GNU long names.
//!
//! The `tar` crate's reader splits PAX records at newlines, so a binary
//! xattr value (a file capability is one) containing `\n` breaks it, and a
//! record it cannot parse silently drops the `size` record beside it. Layers
//! are untrusted input, so bake reads them with this one, which follows Go's
//! archive/tar (what Docker, containerd and BuildKit use): PAX records are
//! length-prefixed and may hold any byte, and entry types without content
//! (links, directories, devices, FIFOs) have none, whatever their size field
//! says, so two readers cannot disagree on where the next header is.

use std::io::{self, Read};

const BLOCK: u64 = 512;
/// The largest PAX header or GNU long name accepted, as Go's limit.
const MAX_SPECIAL: u64 = 1 << 20;

/// One member of an archive, extension headers applied.
#[derive(Debug, Default)]
pub(super) struct Member {
    pub(super) name: Vec<u8>,
    pub(super) link: Vec<u8>,
    /// The type flag, `\0` (old regular file) resolved.
    pub(super) typeflag: u8,
    pub(super) mode: u32,
    pub(super) uid: u64,
    pub(super) gid: u64,
    /// Content bytes: zero for types without content.
    pub(super) size: u64,
    pub(super) mtime: i64,
    /// Absent in v7 headers.
    pub(super) device: Option<(u32, u32)>,
    /// `SCHILY.xattr.NAME` records: name and value.
    pub(super) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A GNU sparse file (which layers never contain).
    pub(super) sparse: bool,
}

/// PAX records that apply to the next member.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i64>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: bool,
}

/// Reads members one by one; between two calls to [`Reader::next`], reading
/// `Reader` itself yields the current member's content.
pub(super) struct Reader<R> {
    inner: R,
    /// Unread content of the current member, then its padding.
    remaining: u64,
    padding: u64,
    done: bool,
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the tar stream ends in the middle of a member")
}

impl<R: Read> Reader<R> {
    pub(super) fn new(inner: R) -> Self {
        Self { inner, remaining: 0, padding: 0, done: false }
    }

    pub(super) fn into_inner(self) -> R {
        self.inner
    }

    /// The next member, or `None` at the end of the archive (a zero block, or
    /// the end of the stream at a block boundary).
    pub(super) fn next(&mut self) -> io::Result<Option<Member>> {
        if self.done {
            return Ok(None);
        }
        self.skip(self.remaining + self.padding)?;
        self.remaining = 0;
        self.padding = 0;

        let mut pax: Option<Pax> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let Some(block) = self.block()? else {
                self.done = true;
                if pax.is_some() || long_name.is_some() || long_link.is_some() {
                    return Err(invalid("an extended header describes no member"));
                }
                return Ok(None);
            };
            let header = Header(&block);
            header.check()?;
            let size = header
                .number(124..136, "size")
                .and_then(|n| u64::try_from(n).map_err(|_| invalid(format!("negative size {n}"))))?;
            match header.typeflag() {
                b'x' => parse_pax(&self.special(size)?, pax.get_or_insert_with(Pax::default))?,
                b'g' => {
                    // Global records would apply to every member; layers do not
                    // use them, and Go's reader does not apply them either.
                    self.special(size)?;
                }
                b'L' => long_name = Some(until_nul(&self.special(size)?).to_vec()),
                b'K' => long_link = Some(until_nul(&self.special(size)?).to_vec()),
                _ => {
                    let member = header.member(size, pax.take().unwrap_or_default(), long_name, long_link)?;
                    self.remaining = member.size;
                    self.padding = padding(member.size);
                    return Ok(Some(member));
                }
            }
        }
    }

    /// The next 512-byte block; `None` for a zero block or the end of the
    /// stream.
    fn block(&mut self) -> io::Result<Option<[u8; 512]>> {
        let mut block = [0u8; 512];
        let mut filled = 0;
        while filled < block.len() {
            match self.inner.read(&mut block[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => return Err(truncated()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(block.iter().any(|b| *b != 0).then_some(block))
    }

    /// The content of an extension header, padding skipped.
    fn special(&mut self, size: u64) -> io::Result<Vec<u8>> {
        if size > MAX_SPECIAL {
            return Err(invalid(format!("an extended header of {size} bytes is too large")));
        }
        let mut data = Vec::new();
        (&mut self.inner).take(size).read_to_end(&mut data)?;
        if data.len() as u64 != size {
            return Err(truncated());
        }
        self.skip(padding(size))?;
        Ok(data)
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        if n > 0 && io::copy(&mut (&mut self.inner).take(n), &mut io::sink())? != n {
            return Err(truncated());
        }
        Ok(())
    }
}

impl<R: Read> Read for Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(truncated());
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    bytes.iter().position(|b| *b == 0).map_or(bytes, |end| &bytes[..end])
}

struct Header<'a>(&'a [u8; 512]);

impl Header<'_> {
    fn typeflag(&self) -> u8 {
        self.0[156]
    }

    /// The stored checksum matches the unsigned (or, as old writers made it,
    /// signed) sum of the header with the checksum field as spaces.
    fn check(&self) -> io::Result<()> {
        let stored = self.number(148..156, "checksum")?;
        let (mut unsigned, mut signed) = (0i64, 0i64);
        for (i, b) in self.0.iter().enumerate() {
            let b = if (148..156).contains(&i) { b' ' } else { *b };
            unsigned += i64::from(b);
            signed += i64::from(b.cast_signed());
        }
        if stored != unsigned && stored != signed {
            return Err(invalid("a tar header's checksum does not match: this is not a tar stream, or it is corrupt"));
        }
        Ok(())
    }

    /// A numeric field: octal text, or GNU's base-256 (high bit set).
    fn number(&self, range: std::ops::Range<usize>, what: &str) -> io::Result<i64> {
        let field = &self.0[range];
        let bad = || invalid(format!("a tar header has an invalid {what} field"));
        if field[0] & 0x80 != 0 {
            let invert = if field[0] & 0x40 != 0 { 0xff } else { 0 };
            let mut x: u64 = 0;
            for (i, byte) in field.iter().enumerate() {
                let mut c = byte ^ invert;
                if i == 0 {
                    c &= 0x7f;
                }
                if x >> 56 != 0 {
                    return Err(bad());
                }
                x = (x << 8) | u64::from(c);
            }
            let x = i64::try_from(x).map_err(|_| bad())?;
            return Ok(if invert == 0 { x } else { !x });
        }
        let text = std::str::from_utf8(field).map_err(|_| bad())?.trim_matches([' ', '\0']);
        if text.is_empty() {
            return Ok(0);
        }
        i64::from_str_radix(text, 8).map_err(|_| bad())
    }

    fn member(
        &self,
        header_size: u64,
        pax: Pax,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> io::Result<Member> {
        let magic = &self.0[257..265];
        let ustar = magic == b"ustar\x0000";
        let gnu = magic == b"ustar  \0";
        let mut name = until_nul(&self.0[..100]).to_vec();
        if ustar {
            let prefix = until_nul(&self.0[345..500]);
            if !prefix.is_empty() {
                name = [prefix, b"/", &name].concat();
            }
        }
        let name = pax.path.or(long_name).unwrap_or(name);
        let link = pax.linkpath.or(long_link).unwrap_or_else(|| until_nul(&self.0[157..257]).to_vec());

        let id = |range, what| -> io::Result<u64> {
            let n = self.number(range, what)?;
            u64::try_from(n).map_err(|_| invalid(format!("a tar header has a negative {what}")))
        };
        let mode = u32::try_from(self.number(100..108, "mode")? & 0o7777).unwrap_or(0);
        let uid = match pax.uid {
            Some(uid) => uid,
            None => id(108..116, "uid")?,
        };
        let gid = match pax.gid {
            Some(gid) => gid,
            None => id(116..124, "gid")?,
        };
        let mtime = match pax.mtime {
            Some(mtime) => mtime,
            None => self.number(136..148, "mtime")?,
        };
        let device = if ustar || gnu {
            let number = |range, what| u32::try_from(id(range, what)?).map_err(|_| invalid("device number too large"));
            Some((number(329..337, "device major")?, number(337..345, "device minor")?))
        } else {
            None
        };
        let mut typeflag = self.typeflag();
        if typeflag == 0 {
            // Old archives mark directories with a trailing slash.
            typeflag = if name.ends_with(b"/") { b'5' } else { b'0' };
        }
        let size = match typeflag {
            // Types without content have none, whatever the header says (as Go).
            b'1'..=b'6' => 0,
            _ => pax.size.unwrap_or(header_size),
        };
        let sparse = pax.sparse || typeflag == b'S';
        Ok(Member { name, link, typeflag, mode, uid, gid, size, mtime, device, xattrs: pax.xattrs, sparse })
    }
}

/// Parses `LEN KEY=VALUE\n` records, where LEN counts the whole record and
/// VALUE may hold any byte.
fn parse_pax(mut data: &[u8], pax: &mut Pax) -> io::Result<()> {
    let bad = || invalid("a PAX extended header is malformed");
    while !data.is_empty() {
        let space = data.iter().position(|b| *b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..space]).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        if len <= space + 1 || len > data.len() {
            return Err(bad());
        }
        let record = data[space + 1..len].strip_suffix(b"\n").ok_or_else(bad)?;
        data = &data[len..];
        let equals = record.iter().position(|b| *b == b'=').ok_or_else(bad)?;
        let (key, value) = (&record[..equals], &record[equals + 1..]);
        let decimal =
            || -> io::Result<u64> { std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()).ok_or_else(bad) };
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.linkpath = Some(value.to_vec()),
            b"size" => pax.size = Some(decimal()?),
            b"uid" => pax.uid = Some(decimal()?),
            b"gid" => pax.gid = Some(decimal()?),
            b"mtime" => {
                // Seconds with an optional fraction: keep the seconds.
                let text = std::str::from_utf8(value).map_err(|_| bad())?;
                let seconds = text.split('.').next().unwrap_or_default();
                pax.mtime = Some(seconds.parse().map_err(|_| bad())?);
            }
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    pax.xattrs.retain(|(n, _)| n != name);
                    pax.xattrs.push((name.to_vec(), value.to_vec()));
                } else if key.starts_with(b"GNU.sparse.") {
                    pax.sparse = true;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_values_may_hold_newlines_and_any_byte() {
        let mut pax = Pax::default();
        let mut data = b"29 SCHILY.xattr.user.x=a\nb\0c\n".to_vec();
        data.extend_from_slice(b"11 size=42\n");
        parse_pax(&data, &mut pax).expect("parse");
        assert_eq!(pax.xattrs, [(b"user.x".to_vec(), b"a\nb\0c".to_vec())]);
        assert_eq!(pax.size, Some(42));
        for bad in [&b"99 path=x\n"[..], b"5 a=b\n", b"x path=y\n", b"11 pathxyz\n", b"11 size=ab\n"] {
            assert!(parse_pax(bad, &mut Pax::default()).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    fn header(name: &str, typeflag: u8, size: u64) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[156] = typeflag;
        h[257..265].copy_from_slice(b"ustar\x0000");
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    #[test]
    fn types_without_content_have_none_whatever_their_size_says() {
        // A symlink claiming 512 bytes of content, then a file: as Go reads
        // it, the "content" is the file's header.
        let mut tar = header("link", b'2', 512).to_vec();
        tar.extend_from_slice(&header("file", b'0', 3));
        tar.extend_from_slice(b"abc");
        tar.resize(tar.len().next_multiple_of(512) + 1024, 0);
        let mut reader = Reader::new(&tar[..]);
        let link = reader.next().expect("link").expect("a member");
        assert_eq!((link.name.as_slice(), link.size), (&b"link"[..], 0));
        let file = reader.next().expect("file").expect("a member");
        assert_eq!((file.name.as_slice(), file.size), (&b"file"[..], 3));
        let mut content = String::new();
        reader.read_to_string(&mut content).expect("content");
        assert_eq!(content, "abc");
        assert!(reader.next().expect("end").is_none());
    }

    #[test]
    fn corrupt_and_truncated_archives_are_errors() {
        let mut h = header("file", b'0', 3);
        h[0] = b'g';
        assert!(Reader::new(&h[..]).next().is_err(), "bad checksum");
        let h = header("file", b'0', 3000);
        let mut reader = Reader::new(&h[..]);
        reader.next().expect("header").expect("member");
        assert_eq!(reader.read(&mut [0; 10]).expect_err("truncated").kind(), io::ErrorKind::UnexpectedEof);
        let pax = header("pax", b'x', 0);
        assert!(Reader::new(&pax[..]).next().is_err(), "a PAX header describing nothing");
    }

    #[test]
    fn numbers_in_octal_and_base_256() {
        let mut block = [0u8; 512];
        block[100..108].copy_from_slice(b" 000755\0");
        block[124] = 0x80;
        block[135] = 1;
        block[136..148].copy_from_slice(&[0xff; 12]);
        let h = Header(&block);
        assert_eq!(h.number(100..108, "mode").expect("octal"), 0o755);
        assert_eq!(h.number(124..136, "size").expect("base-256"), 1);
        assert_eq!(h.number(136..148, "mtime").expect("negative"), -1);
        block[108..116].copy_from_slice(b"00009\0\0\0");
        assert!(Header(&block).number(108..116, "uid").is_err());
    }
}
